"""Workspaces and what belongs to them: API keys, spend caps, BYO provider keys,
auto-recharge settings, dashboard sessions.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Text
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
    # The Responses API's `store` on the house's provider keys: passed on (True) or forced
    # off (gateway/dialects/responses/tenancy.py; BOOKBAG_RESPONSES_STORE turns it on for all).
    responses_store: bool = False
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


class DashboardSession(SQLModel, table=True):
    """A signed-in dashboard browser: the SHA-256 of its cookie token, never the token or key."""

    __tablename__ = "dashboard_sessions"

    token_hash: str = Field(primary_key=True, max_length=64)
    key_id: str = Field(max_length=40)
    workspace_id: str = Field(max_length=40)
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    expires_ms: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))


class ByoKeyRow(SQLModel, table=True):
    """A workspace's own provider key, Fernet-encrypted with BOOKBAG_SECRET_KEY (`accounts/byo.py`)."""

    __tablename__ = "byo_keys"

    workspace_id: str = Field(primary_key=True, foreign_key="workspaces.id", max_length=40)
    provider: str = Field(primary_key=True, max_length=40)
    ciphertext: str = Field(sa_column=Column(Text, nullable=False))
    fingerprint: str = Field(max_length=40)  # the only thing ever shown
    actor: str | None = Field(default=None, max_length=100)
    updated_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class AutoRecharge(SQLModel, table=True):
    """Auto-recharge settings (`accounts/recharge.py`): below `threshold`, grant `amount`, at most
    `monthly_cap` times per billing period."""

    __tablename__ = "auto_recharge"

    workspace_id: str = Field(primary_key=True, foreign_key="workspaces.id", max_length=40)
    enabled: bool = True
    threshold: int
    amount: int
    monthly_cap: int
    updated_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
