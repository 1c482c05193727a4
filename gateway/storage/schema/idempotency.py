"""`Idempotency-Key` records on SQL: in flight, or done with the response to replay.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, LargeBinary, Text
from sqlmodel import Field, SQLModel


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
