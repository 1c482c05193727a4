"""The SQL schema (SQLModel tables): workspaces, keys, balances, holds, the ledger,
and the workspace settings (BYO keys, auto-recharge, webhook endpoints and outbox).

The ORM defines the schema and serves the operator API; the per-request
reserve and settle use prepared statements on the same tables.
Times are integer epoch milliseconds (UTC); periods are ISO dates.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Column, Index, LargeBinary, Text, UniqueConstraint
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
    # A downgrade waits for the next period: from `pending_from` (a period start) the
    # workspace is on `pending_plan` (`metering.base.plan_at` is the one reader).
    pending_plan: str | None = Field(default=None, max_length=40)
    pending_custom_allotment: int | None = None
    pending_from: str | None = Field(default=None, max_length=10)
    low_fractions: str | None = Field(default=None, max_length=100)  # credits.low, e.g. "0.2,0.1"
    # Spend controls: credits.threshold alerts, e.g. "credits:500,used:80" (gateway/accounts/alerts.py)
    alert_thresholds: str | None = Field(default=None, max_length=600)


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
    # Spend controls: the key stops working at this instant (401 key_expired).
    expires_ms: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class SpendCap(SQLModel, table=True):
    """Spend controls: a credit cap per billing period on a key (`key:<id>`) or agent."""

    __tablename__ = "spend_caps"

    workspace_id: str = Field(primary_key=True, foreign_key="workspaces.id", max_length=40)
    subject: str = Field(primary_key=True, max_length=140)
    credits: int = Field(sa_column=Column(BigInteger, nullable=False))


class CapUsage(SQLModel, table=True):
    """Spend controls (`sql` meter): credits charged or held per cap subject and period."""

    __tablename__ = "cap_usage"

    workspace_id: str = Field(primary_key=True, max_length=40)
    subject: str = Field(primary_key=True, max_length=140)
    period_start: str = Field(primary_key=True, max_length=10)
    used: int = Field(sa_column=Column(BigInteger, nullable=False))


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
    caps: str | None = Field(default=None, max_length=400)  # cap subjects, comma-separated


class LedgerRow(SQLModel, table=True):
    """One immutable ledger entry. Corrections are new entries, never edits."""

    __tablename__ = "ledger"
    __table_args__ = (
        UniqueConstraint("request_id", name="uq_ledger_request_id"),
        # Keyset pages of the export walk (created_ms, seq) within a workspace.
        Index("ix_ledger_ws_time", "workspace_id", "created_ms", "seq"),
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


def _sum(*, zero: bool = False) -> Any:
    return Field(default=0, sa_type=BigInteger, nullable=False,
                 sa_column_kwargs={"server_default": "0"} if zero else {})


class UsageSums(SQLModel):
    """Reply sums of a rollup row, and the same over the hour's first 15, 30 and 45 minutes:
    where a local midnight falls inside the hour (zones at :15/:30/:45 from UTC), they
    split the hour between its two days."""

    credits: int = _sum()
    replies: int = _sum()
    entries: int = _sum()
    credits_15: int = _sum(zero=True)
    replies_15: int = _sum(zero=True)
    entries_15: int = _sum(zero=True)
    credits_30: int = _sum(zero=True)
    replies_30: int = _sum(zero=True)
    entries_30: int = _sum(zero=True)
    credits_45: int = _sum(zero=True)
    replies_45: int = _sum(zero=True)
    entries_45: int = _sum(zero=True)


class UsageRollup(UsageSums, table=True):
    """Reply credits per workspace, hour (UTC) and attribution, written with each reply entry.

    `database.apply_entry` upserts it in the ledger entry's own transaction, so
    it always equals the ledger's reply entries (`ledger/usage.py` reads it).
    Empty strings stand for "none" so the key has no NULLs (NULLs never conflict).
    """

    __tablename__ = "usage_rollup"
    __table_args__ = {"sqlite_with_rowid": False}  # the key is the (clustered) index

    workspace_id: str = Field(primary_key=True, max_length=40)
    # The start of the hour, epoch ms (UTC).
    bucket_ms: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    agent_id: str = Field(primary_key=True, max_length=128)
    model: str = Field(primary_key=True, max_length=128)
    billing_mode: str = Field(primary_key=True, max_length=16)


class UsageConversations(UsageSums, table=True):
    """The same sums per workspace, hour, conversation, agent, model and billing mode:
    every grouping and filter that involves the conversation.

    Conversations are many but short, so an hour holds a few rows per conversation
    (one per model and billing mode it used).
    """

    __tablename__ = "usage_conversations"
    __table_args__ = {"sqlite_with_rowid": False}

    workspace_id: str = Field(primary_key=True, max_length=40)
    bucket_ms: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    conversation_id: str = Field(primary_key=True, max_length=128)
    agent_id: str = Field(primary_key=True, max_length=128)
    model: str = Field(primary_key=True, max_length=128)
    billing_mode: str = Field(primary_key=True, max_length=16)


class DashboardSession(SQLModel, table=True):
    """A signed-in dashboard browser: the SHA-256 of its cookie token, never the token or key."""

    __tablename__ = "dashboard_sessions"

    token_hash: str = Field(primary_key=True, max_length=64)
    key_id: str = Field(max_length=40)
    workspace_id: str = Field(max_length=40)
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    expires_ms: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))


class ByoKeyRow(SQLModel, table=True):
    """A workspace's own provider key, Fernet-encrypted with BOOKBAG_SECRET_KEY (`byo.py`)."""

    __tablename__ = "byo_keys"

    workspace_id: str = Field(primary_key=True, foreign_key="workspaces.id", max_length=40)
    provider: str = Field(primary_key=True, max_length=40)
    ciphertext: str = Field(sa_column=Column(Text, nullable=False))
    fingerprint: str = Field(max_length=40)  # the only thing ever shown
    actor: str | None = Field(default=None, max_length=100)
    updated_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class AutoRecharge(SQLModel, table=True):
    """Auto-recharge settings (`recharge.py`): below `threshold`, grant `amount`, at most
    `monthly_cap` times per billing period."""

    __tablename__ = "auto_recharge"

    workspace_id: str = Field(primary_key=True, foreign_key="workspaces.id", max_length=40)
    enabled: bool = True
    threshold: int
    amount: int
    monthly_cap: int
    updated_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class WebhookEndpoint(SQLModel, table=True):
    """Where a workspace's events go; the signing secret is encrypted like BYO keys."""

    __tablename__ = "webhook_endpoints"

    id: str = Field(primary_key=True, max_length=40)
    workspace_id: str = Field(foreign_key="workspaces.id", index=True, max_length=40)
    url: str = Field(max_length=2000)
    secret_ciphertext: str = Field(sa_column=Column(Text, nullable=False))
    events: str = Field(default="*", max_length=200)  # "*" or a comma-separated list of types
    enabled: bool = True
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class WebhookEvent(SQLModel, table=True):
    """The outbox: one row per event; the id is derived from what happened, so an event
    emitted twice (two processes, a retry) is stored, and delivered, under one id."""

    __tablename__ = "webhook_events"
    __table_args__ = (Index("ix_webhook_events_ws_time", "workspace_id", "created_ms"),)

    id: str = Field(primary_key=True, max_length=40)
    workspace_id: str = Field(max_length=40)
    type: str = Field(max_length=40)
    payload: str = Field(sa_column=Column(Text, nullable=False))  # the exact body sent
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class WebhookDelivery(SQLModel, table=True):
    """One event to one endpoint: retried with backoff until delivered or out of attempts."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_ms"),)

    event_id: str = Field(primary_key=True, foreign_key="webhook_events.id", max_length=40)
    endpoint_id: str = Field(primary_key=True, max_length=40)
    status: str = Field(default="pending", max_length=16)  # pending | delivered | failed
    attempts: int = 0
    next_attempt_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    last_status: int | None = None
    last_error: str | None = Field(default=None, max_length=300)
    delivered_ms: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class IdempotencyRow(SQLModel, table=True):
    """One `Idempotency-Key` of a workspace: in flight (held by `request_id` until
    `lease_ms`), or done with the response to replay. Purged after `expires_ms`."""

    __tablename__ = "idempotency"

    workspace_id: str = Field(primary_key=True, max_length=40)
    key: str = Field(primary_key=True, max_length=255)
    body_hash: str = Field(max_length=64)  # SHA-256 hex of the body's canonical JSON
    request_id: str = Field(max_length=64)  # the holder; the ledger entry's request id
    state: str = Field(max_length=16)  # in_flight | done
    kind: str | None = Field(default=None, max_length=8)  # json | sse, once a response is stored
    status: int | None = None
    headers: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    body: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    lease_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    expires_ms: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))


LEDGER_COLUMNS = (
    "request_id", "workspace_id", "kind", "billing_mode", "credits", "allotment_delta",
    "topup_delta", "period_start", "key_id", "agent_id", "conversation_id", "model", "provider",
    "replies", "prompt_tokens", "completion_tokens", "latency_ms", "reason", "ref", "actor",
    "created_ms",
)

metadata = SQLModel.metadata
