"""What the meter stores: the balance projection, holds in flight, cap usage, and the
lease that makes one process the embedded meter's owner.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column
from sqlmodel import Field, SQLModel


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


class CapUsage(SQLModel, table=True):
    """Spend controls (`sql` meter): credits charged or held per cap subject and period."""

    __tablename__ = "cap_usage"

    workspace_id: str = Field(primary_key=True, max_length=40)
    subject: str = Field(primary_key=True, max_length=140)
    period_start: str = Field(primary_key=True, max_length=10)
    used: int = Field(sa_column=Column(BigInteger, nullable=False))


class Lease(SQLModel, table=True):
    """A named role one process holds, renewed by heartbeat (the embedded meter's ownership)."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=64)
    owner: str = Field(max_length=128)
    expires_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
