"""The ledger (immutable entries) and the hourly rollups written in each reply entry's
transaction, which the usage reads sum (`ledger/usage.py`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel


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
    api: str | None = Field(default=None, max_length=16)  # chat | responses | messages
    # Responses: the id returned to the workspace (`previous_response_id` must be its own).
    response_id: str | None = Field(default=None, max_length=128, index=True)
    # Fallbacks: the model the request named (canonical); `model` is the one that answered.
    # NULL on rows written before migration 0010: read as `model`.
    requested_model: str | None = Field(default=None, max_length=128)


LEDGER_COLUMNS = (
    "request_id", "workspace_id", "kind", "billing_mode", "credits", "allotment_delta",
    "topup_delta", "period_start", "key_id", "agent_id", "conversation_id", "model", "provider",
    "replies", "prompt_tokens", "completion_tokens", "latency_ms", "reason", "ref", "actor",
    "created_ms", "api", "response_id", "requested_model",
)


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

    `storage.database.apply_entry` upserts it in the ledger entry's own transaction, so
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
