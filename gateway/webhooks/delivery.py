"""Delivering the webhook outbox: at least once, retried with exponential backoff.

Every gateway process runs a dispatcher. Each round claims the deliveries
that are due by moving their `next_attempt_ms` past the send timeout
(compare-and-set, so two processes never send the same attempt), POSTs the
stored body signed with the endpoint's secret, and records the outcome: a 2xx
is delivered; anything else (an error status, a redirect, a timeout, a
refused connection) is retried after `backoff * 2**(attempts-1)` seconds, up
to an hour apart, until `max_attempts`, then marked failed. A process that
dies mid-send leaves a claim that expires and is retried: a receiver may get
an event twice, always under the same id (`Bookbag-Event-Id` and the body's
`id`), so it deduplicates on that id.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sqlalchemy import Engine

from gateway.accounts.keyring import Keyring, KeyringError
from gateway.clock import Clock, now_ms
from gateway.storage.database import snapshot, transaction
from gateway.storage.periodic import Periodic
from gateway.webhooks.registry import SIGNATURE_HEADER, sign
from gateway.webhooks.targets import is_public, literal, public_resolver, refuse

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("bookbag.webhooks")

MAX_BACKOFF_S = 3600.0


@dataclass(frozen=True, slots=True)
class _Due:
    event_id: str
    endpoint_id: str
    attempts: int
    type: str
    payload: str
    url: str
    secret_ciphertext: str


@dataclass(frozen=True, slots=True)
class _Outcome:
    due: _Due
    ok: bool
    status: int | None
    error: str | None


class Dispatcher:
    def __init__(self, engine: Engine, keyring: Keyring, clock: Clock, *, interval: float = 1.0,
                 backoff: float = 5.0, max_attempts: int = 12, timeout: float = 10.0,
                 batch: int = 32, allow_private: bool = False) -> None:
        self._engine = engine
        self._keyring = keyring
        self._clock = clock
        self._backoff = backoff
        self._max_attempts = max_attempts
        self._timeout = timeout
        self._batch = batch
        self._allow_private = allow_private  # BOOKBAG_WEBHOOK_ALLOW_PRIVATE (webhook_targets.py)
        self._session: aiohttp.ClientSession | None = None  # made by the first delivery
        # A round that filled its batch is followed by the next at once (a backlog drains).
        self._loop = Periodic("webhook-dispatcher", self._round, interval, log=log,
                              first_at_once=True)
        self.sent = 0
        self.failed = 0

    async def start(self) -> None:
        self._loop.start()

    async def close(self) -> None:
        """Stop after the round in progress (its database work is never cut off midway); a
        receiver still answering after the timeout is cut off, its attempt retried later."""
        await self._loop.stop(grace=self._timeout + 1)
        if self._session is not None:
            await self._session.close()

    async def _round(self) -> bool:
        return await self.run_once() >= self._batch

    async def run_once(self) -> int:
        """Send every delivery that is due (one batch); how many were claimed."""
        due = await asyncio.to_thread(self._claim)
        if due:
            outcomes = await asyncio.gather(*(self._send(d) for d in due))
            await asyncio.to_thread(self._record, outcomes)
        return len(due)

    def _claim(self) -> list[_Due]:
        now = now_ms(self._clock)
        with snapshot(self._engine) as (cur, sql):  # most rounds find nothing: no write lock
            cur.execute(sql("SELECT 1 FROM webhook_deliveries WHERE status = 'pending' AND "
                            "next_attempt_ms <= ? LIMIT 1"), (now,))
            if cur.fetchone() is None:
                return []
        lease = now + int((self._timeout + 30) * 1000)
        claimed: list[_Due] = []
        with transaction(self._engine) as (cur, sql):
            cur.execute(
                sql("SELECT d.event_id, d.endpoint_id, d.attempts, d.next_attempt_ms, e.type, "
                    "e.payload, w.url, w.secret_ciphertext FROM webhook_deliveries d "
                    "JOIN webhook_events e ON e.id = d.event_id "
                    "JOIN webhook_endpoints w ON w.id = d.endpoint_id "
                    "WHERE d.status = 'pending' AND d.next_attempt_ms <= ? AND w.enabled "
                    "ORDER BY d.next_attempt_ms LIMIT ?"),
                (now, self._batch),
            )
            for event_id, endpoint_id, attempts, due_ms, type_, payload, url, secret in cur.fetchall():
                cur.execute(
                    sql("UPDATE webhook_deliveries SET next_attempt_ms = ? WHERE event_id = ? AND "
                        "endpoint_id = ? AND status = 'pending' AND next_attempt_ms = ?"),
                    (lease, event_id, endpoint_id, due_ms),
                )
                if cur.rowcount == 1:
                    claimed.append(_Due(event_id, endpoint_id, attempts, type_, payload, url, secret))
        return claimed

    def _client(self) -> aiohttp.ClientSession:
        # Imported at the first delivery: aiohttp costs ~10 MB to a gateway without webhooks.
        import aiohttp

        if self._session is None:
            # Public addresses only: the resolver drops the others, so the connection
            # goes to an address that was checked, whatever DNS answers next.
            connector = None if self._allow_private else aiohttp.TCPConnector(
                resolver=public_resolver())
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout),
                headers={"User-Agent": "Bookbag-Webhooks/1"},
            )
        return self._session

    async def _send(self, due: _Due) -> _Outcome:
        import aiohttp

        session = self._client()
        try:
            secret = self._keyring.decrypt(due.secret_ciphertext)
        except KeyringError as exc:
            return _Outcome(due, False, None, str(exc)[:300])
        body = due.payload.encode()
        headers = {
            "Content-Type": "application/json",
            "Bookbag-Event-Id": due.event_id,
            "Bookbag-Event-Type": due.type,
            "Bookbag-Delivery-Attempt": str(due.attempts + 1),
            SIGNATURE_HEADER: sign(secret, int(self._clock.now()), body),
        }
        try:
            if not self._allow_private:
                host = urlsplit(due.url).hostname or ""
                address = literal(host)  # the resolver never sees an IP literal
                if address is not None and not is_public(address):
                    raise refuse(host, address)
            async with session.post(due.url, data=body, headers=headers,
                                          allow_redirects=False) as resp:
                await resp.read()
                ok = 200 <= resp.status < 300
                return _Outcome(due, ok, resp.status, None if ok else f"HTTP {resp.status}")
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return _Outcome(due, False, None, f"{type(exc).__name__}: {exc}"[:300])

    def _record(self, outcomes: list[_Outcome]) -> None:
        now = now_ms(self._clock)
        with transaction(self._engine) as (cur, sql):
            for out in outcomes:
                attempts = out.due.attempts + 1
                key = (out.due.event_id, out.due.endpoint_id)
                if out.ok:
                    self.sent += 1
                    cur.execute(
                        sql("UPDATE webhook_deliveries SET status = 'delivered', attempts = ?, "
                            "last_status = ?, last_error = NULL, delivered_ms = ? "
                            "WHERE event_id = ? AND endpoint_id = ?"),
                        (attempts, out.status, now, *key),
                    )
                    continue
                status = "failed" if attempts >= self._max_attempts else "pending"
                if status == "failed":
                    self.failed += 1
                    log.warning("webhook %s to %s failed for good after %d attempts: %s",
                                out.due.event_id, out.due.endpoint_id, attempts, out.error)
                delay = min(self._backoff * 2 ** (attempts - 1), MAX_BACKOFF_S)
                if status == "pending":  # each failed attempt is said, not only the last
                    log.warning("webhook %s to %s: attempt %d of %d failed (%s); retrying in %gs",
                                out.due.event_id, out.due.endpoint_id, attempts,
                                self._max_attempts, out.error, delay)
                cur.execute(
                    sql("UPDATE webhook_deliveries SET status = ?, attempts = ?, last_status = ?, "
                        "last_error = ?, next_attempt_ms = ? WHERE event_id = ? AND endpoint_id = ? "
                        "AND status = 'pending'"),
                    (status, attempts, out.status, out.error, now + int(delay * 1000), *key),
                )
