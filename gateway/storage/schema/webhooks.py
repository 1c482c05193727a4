"""Webhook endpoints, the event outbox, and each event's delivery to each endpoint.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Text
from sqlmodel import Field, SQLModel


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
