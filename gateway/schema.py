"""The SQL schema (SQLModel tables): workspaces, keys, balances, holds, the ledger.

The ORM defines the schema and serves the operator API; the per-request
reserve and settle use prepared statements on the same tables.
Times are integer epoch milliseconds (UTC); periods are ISO dates.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel


class Workspace(SQLModel, table=True):
    __tablename__ = "workspaces"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    plan: str = Field(max_length=40)
    custom_allotment: int | None = None  # Enterprise: the plan credits set per workspace
    anchor_date: str = Field(max_length=10)  # billing periods renew monthly from this date
    suspended: bool = False
    byo_enabled: bool = False
    rate_limit: str | None = Field(default=None, max_length=40)
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=40)
    workspace_id: str = Field(foreign_key="workspaces.id", index=True, max_length=40)
    key_hash: str = Field(unique=True, max_length=64)  # SHA-256 hex of the whole key
    prefix: str = Field(max_length=16)  # first characters, to recognise a key in listings
    agent_id: str | None = Field(default=None, max_length=128)
    scopes: str = Field(default="inference,read", max_length=100)
    rate_limit: str | None = Field(default=None, max_length=40)
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    revoked_ms: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class BalanceRow(SQLModel, table=True):
    """The balance projection of the ledger, per workspace.

    `allotment_remaining` and `topups_remaining` are what can still be reserved.
    With the `sql` meter, holds rows record what reservations took from them,
    so remaining + the current period's holds = the ledger's balance.
    """

    __tablename__ = "balances"

    workspace_id: str = Field(primary_key=True, foreign_key="workspaces.id", max_length=40)
    period_start: str = Field(max_length=10)
    allotment: int
    allotment_remaining: int
    topups_remaining: int


class HoldRow(SQLModel, table=True):
    """A reservation in flight (only the `sql` meter stores these)."""

    __tablename__ = "holds"

    request_id: str = Field(primary_key=True, max_length=64)
    workspace_id: str = Field(index=True, max_length=40)
    credits: int
    from_allotment: int
    from_topups: int
    period_start: str = Field(max_length=10)
    expires_ms: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))


class LedgerRow(SQLModel, table=True):
    """One immutable ledger entry. Corrections are new entries, never edits."""

    __tablename__ = "ledger"
    __table_args__ = (
        UniqueConstraint("request_id", name="uq_ledger_request_id"),
        Index("ix_ledger_ws_time", "workspace_id", "created_ms"),
    )

    seq: int | None = Field(default=None, primary_key=True)
    request_id: str = Field(max_length=128)
    workspace_id: str = Field(max_length=40)
    kind: str = Field(max_length=16)  # reply | allotment | topup | adjustment
    billing_mode: str | None = Field(default=None, max_length=16)
    credits: int = 0
    allotment_delta: int = 0
    topup_delta: int = 0
    period_start: str | None = Field(default=None, max_length=10)
    key_id: str | None = Field(default=None, max_length=40)
    agent_id: str | None = Field(default=None, max_length=128)
    conversation_id: str | None = Field(default=None, max_length=128)
    model: str | None = Field(default=None, max_length=128)
    provider: str | None = Field(default=None, max_length=40)
    replies: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: int | None = None
    reason: str | None = Field(default=None, max_length=64)
    ref: str | None = Field(default=None, max_length=200)
    actor: str | None = Field(default=None, max_length=100)
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class Lease(SQLModel, table=True):
    """A named role one process holds, renewed by heartbeat (the embedded meter's ownership)."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=64)
    owner: str = Field(max_length=128)
    expires_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


LEDGER_COLUMNS = (
    "request_id", "workspace_id", "kind", "billing_mode", "credits", "allotment_delta",
    "topup_delta", "period_start", "key_id", "agent_id", "conversation_id", "model", "provider",
    "replies", "prompt_tokens", "completion_tokens", "latency_ms", "reason", "ref", "actor",
    "created_ms",
)

metadata = SQLModel.metadata
