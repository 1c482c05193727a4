"""Webhooks: a workspace's endpoints, the events the gateway emits, and their signature.

Events (`TYPES`): `credits.low` (the balance fell below a fraction of the
allotment; once per period and fraction), `credits.exhausted` (nothing left;
once per period), `credits.recharged` (an auto-recharge was granted; once per
recharge), `period.renewed` (a new period's allotment was granted).

An event's id is derived from what happened (`event_id`), so however many
processes notice it, and however often, it is stored once in the outbox
(`webhook_events`) with one delivery row per subscribed endpoint; the
dispatcher (`webhook_delivery.py`) sends it at least once, always with that id.

Every delivery is signed: `Bookbag-Signature: t=<unix seconds>,v1=<hex>` where
hex = HMAC-SHA256(endpoint secret, f"{t}.{body}"). `docs/operators.md` has the
receiver's recipe (and `verify` below is that recipe).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from gateway.accounts.keyring import Keyring, KeyringError, fingerprint, rotate_column
from gateway.accounts.operator_input import InputError, string_list
from gateway.accounts.workspaces import AccountError, UnknownAccount
from gateway.clock import Clock, now_ms
from gateway.storage.database import transaction
from gateway.storage.schema import WebhookDelivery, WebhookEndpoint, WebhookEvent, Workspace
from gateway.webhooks.targets import PrivateTarget, check_url

CREDITS_LOW = "credits.low"
CREDITS_EXHAUSTED = "credits.exhausted"
CREDITS_RECHARGED = "credits.recharged"
PERIOD_RENEWED = "period.renewed"
CREDITS_THRESHOLD = "credits.threshold"  # spend controls: a workspace's own alert thresholds
TYPES = (CREDITS_LOW, CREDITS_EXHAUSTED, CREDITS_RECHARGED, PERIOD_RENEWED, CREDITS_THRESHOLD)
SIGNATURE_HEADER = "Bookbag-Signature"
TOLERANCE = 300  # seconds a receiver should accept between `t` and its own clock


def event_id(type_: str, workspace_id: str, discriminator: str) -> str:
    """The one id of an event: the same happening always gets the same id."""
    digest = hashlib.sha256(f"{type_}\n{workspace_id}\n{discriminator}".encode()).hexdigest()
    return "evt_" + digest[:32]


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, now: float | None = None,
           tolerance: int = TOLERANCE) -> bool:
    """The receiver's check: a v1 signature matches and `t` is within the tolerance."""
    parts = [p.split("=", 1) for p in header.split(",") if "=" in p]
    stamps = [v for k, v in parts if k.strip() == "t"]
    signatures = [v for k, v in parts if k.strip() == "v1"]
    if len(stamps) != 1 or not stamps[0].isdigit() or not signatures:
        return False
    t = int(stamps[0])
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, s.strip()) for s in signatures)


@dataclass(frozen=True, slots=True)
class CreatedEndpoint:
    id: str
    workspace_id: str
    url: str
    events: str
    secret: str  # shown once; the receiver verifies signatures with it


def _check_url(url: str, *, allow_private: bool = False) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port out of range)
    except ValueError:
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2000:
        raise AccountError(f"a webhook URL must be an http(s) URL, got {url[:100]!r}")
    if not allow_private:
        try:
            check_url(url)  # webhook_targets: public addresses only
        except PrivateTarget as exc:
            raise AccountError(str(exc)) from None
    return url


def _check_events(events: list[str] | None) -> str:
    if events is not None:
        string_list(events, "events", (*TYPES, "*"))
    if not events or events == ["*"]:
        return "*"
    if "*" in events:
        raise InputError("events", "must be [\"*\"] alone or a list of event types")
    unknown = sorted(set(events) - set(TYPES))
    if unknown:
        raise AccountError(f"unknown event type {unknown[0]!r}; types: {', '.join(TYPES)}")
    return ",".join(sorted(set(events)))


def describe(row: WebhookEndpoint, keyring: Keyring) -> dict[str, Any]:
    try:
        secret_fp = fingerprint(keyring.decrypt(row.secret_ciphertext))
    except KeyringError:
        secret_fp = "unreadable (check BOOKBAG_SECRET_KEY)"
    return {"id": row.id, "workspace_id": row.workspace_id, "url": row.url,
            "events": row.events.split(","), "enabled": row.enabled,
            "secret_fingerprint": secret_fp, "created_ms": row.created_ms}


class Webhooks:
    """Endpoint administration (synchronous SQL) and the outbox writer."""

    def __init__(self, engine: Engine, keyring: Keyring, clock: Clock, *,
                 allow_private: bool = False) -> None:
        self._engine = engine
        self.keyring = keyring
        self._clock = clock
        self._allow_private = allow_private  # BOOKBAG_WEBHOOK_ALLOW_PRIVATE

    # --- endpoints ------------------------------------------------------------

    def create(self, workspace_id: str, url: str, events: list[str] | None = None) -> CreatedEndpoint:
        subscribed = _check_events(events)
        secret = "whsec_" + secrets.token_urlsafe(32)
        try:
            ciphertext = self.keyring.encrypt(secret)
        except KeyringError as exc:
            raise AccountError(str(exc)) from None
        checked = _check_url(url, allow_private=self._allow_private)
        row = WebhookEndpoint(id="wh_" + uuid.uuid4().hex[:16], workspace_id=workspace_id,
                              url=checked, secret_ciphertext=ciphertext, events=subscribed,
                              created_ms=now_ms(self._clock))
        with Session(self._engine, expire_on_commit=False) as session:
            if session.get(Workspace, workspace_id) is None:
                raise UnknownAccount(f"no workspace {workspace_id!r}")
            session.add(row)
            session.commit()
        return CreatedEndpoint(row.id, workspace_id, row.url, subscribed, secret)

    def endpoints(self, workspace_id: str | None = None) -> list[dict[str, Any]]:
        with Session(self._engine) as session:
            stmt = select(WebhookEndpoint).order_by(col(WebhookEndpoint.created_ms))
            if workspace_id is not None:
                stmt = stmt.where(WebhookEndpoint.workspace_id == workspace_id)
            return [describe(row, self.keyring) for row in session.exec(stmt)]

    def endpoint(self, endpoint_id: str) -> dict[str, Any]:
        with Session(self._engine) as session:
            row = session.get(WebhookEndpoint, endpoint_id)
            if row is None:
                raise UnknownAccount(f"no webhook endpoint {endpoint_id!r}")
            return describe(row, self.keyring)

    def update(self, endpoint_id: str, *, url: str | None = None, events: list[str] | None = None,
               enabled: bool | None = None) -> dict[str, Any]:
        with Session(self._engine) as session:
            row = session.get(WebhookEndpoint, endpoint_id)
            if row is None:
                raise UnknownAccount(f"no webhook endpoint {endpoint_id!r}")
            if url is not None:
                row.url = _check_url(url, allow_private=self._allow_private)
            if events is not None:
                row.events = _check_events(events)
            if enabled is not None:
                row.enabled = enabled
            session.add(row)
            session.commit()
            return describe(row, self.keyring)

    def delete(self, endpoint_id: str) -> bool:
        """Remove an endpoint and the deliveries still due to it."""
        with transaction(self._engine) as (cur, sql):
            cur.execute(sql("DELETE FROM webhook_deliveries WHERE endpoint_id = ? AND "
                            "status = 'pending'"), (endpoint_id,))
            cur.execute(sql("DELETE FROM webhook_endpoints WHERE id = ?"), (endpoint_id,))
            return bool(cur.rowcount)

    def rotate(self) -> int:
        """Re-encrypt every endpoint secret under the first key of BOOKBAG_SECRET_KEY."""
        return rotate_column(self._engine, self.keyring, WebhookEndpoint, "secret_ciphertext")

    def has_endpoints(self, workspace_id: str) -> bool:
        with transaction(self._engine) as (cur, sql):
            cur.execute(sql("SELECT 1 FROM webhook_endpoints WHERE workspace_id = ? AND enabled"),
                        (workspace_id,))
            return cur.fetchone() is not None

    # --- the outbox -----------------------------------------------------------

    def emit(self, workspace_id: str, type_: str, discriminator: str,
             data: dict[str, Any]) -> str | None:
        """Store the event once and queue it for each subscribed endpoint.

        Returns its id when this call stored it, None when it already existed.
        """
        evt = event_id(type_, workspace_id, discriminator)
        at = now_ms(self._clock)
        body = orjson.dumps({"id": evt, "object": "event", "type": type_, "created": at // 1000,
                             "workspace_id": workspace_id, "data": data}).decode()
        with transaction(self._engine) as (cur, sql):
            cur.execute(
                sql("INSERT INTO webhook_events (id, workspace_id, type, payload, created_ms) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"),
                (evt, workspace_id, type_, body, at),
            )
            if cur.rowcount != 1:
                return None
            cur.execute(sql("SELECT id, events, enabled FROM webhook_endpoints "
                            "WHERE workspace_id = ?"), (workspace_id,))
            for endpoint_id, events, enabled in cur.fetchall():
                if enabled and (events == "*" or type_ in events.split(",")):
                    cur.execute(
                        sql("INSERT INTO webhook_deliveries (event_id, endpoint_id, status, "
                            "attempts, next_attempt_ms) VALUES (?, ?, 'pending', 0, ?)"),
                        (evt, endpoint_id, at),
                    )
        return evt

    def events(self, workspace_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The newest events of a workspace with how their deliveries stand."""
        with Session(self._engine) as session:
            rows = session.exec(
                select(WebhookEvent).where(WebhookEvent.workspace_id == workspace_id)
                .order_by(col(WebhookEvent.created_ms).desc()).limit(limit))
            out = []
            for event in rows:
                deliveries = session.exec(
                    select(WebhookDelivery).where(WebhookDelivery.event_id == event.id))
                out.append({
                    "id": event.id, "type": event.type, "created_ms": event.created_ms,
                    "payload": orjson.loads(event.payload),
                    "deliveries": [d.model_dump(exclude={"event_id"}) for d in deliveries],
                })
            return out
