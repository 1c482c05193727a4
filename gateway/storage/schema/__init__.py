"""The SQL schema (SQLModel tables), one module per concern: workspaces and their settings
(`accounts`), balances and holds (`metering`), the ledger and its rollups (`ledger`),
webhooks (`webhooks`), idempotency records (`idempotency`).

The ORM defines the schema and serves the operator API; the per-request
reserve and settle use prepared statements on the same tables.
Times are integer epoch milliseconds (UTC); periods are ISO dates.
"""

from __future__ import annotations

from sqlmodel import SQLModel

from gateway.storage.schema.accounts import (
    ApiKey,
    AutoRecharge,
    ByoKeyRow,
    DashboardSession,
    SpendCap,
    Workspace,
)
from gateway.storage.schema.idempotency import IdempotencyRow
from gateway.storage.schema.ledger import (
    LEDGER_COLUMNS,
    LedgerRow,
    UsageConversations,
    UsageRollup,
    UsageSums,
)
from gateway.storage.schema.metering import BalanceRow, CapUsage, HoldRow, Lease
from gateway.storage.schema.webhooks import WebhookDelivery, WebhookEndpoint, WebhookEvent

__all__ = [
    "LEDGER_COLUMNS", "ApiKey", "AutoRecharge", "BalanceRow", "ByoKeyRow", "CapUsage",
    "DashboardSession", "HoldRow", "IdempotencyRow", "Lease", "LedgerRow", "SpendCap",
    "UsageConversations", "UsageRollup", "UsageSums", "WebhookDelivery", "WebhookEndpoint",
    "WebhookEvent", "Workspace", "metadata",
]

# Every table above is registered on it: migrations and `create_schema` see them all.
metadata = SQLModel.metadata
