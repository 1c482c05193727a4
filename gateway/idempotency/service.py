"""Idempotency keys: one provider call and one charge per `Idempotency-Key`, across processes.

The flow (gateway/flow/chat.py) runs this step after the billing decision and the parameter
check, before reserve:

    claim(workspace, key, body hash, request id)
      no live record            -> Claim: this request runs
      a different body          -> 422 idempotency_key_reused
      done, with a response     -> Replay: the stored response; no provider call, no charge
      in flight, lease running  -> 409 idempotency_in_progress (Retry-After: 1)
      in flight, lease over     -> the process holding it died: recover (below)
    success: stage(response) -> settle the charge -> finish (state done)
    failure: release (the key can be used again)

Crash consistency. The claim records the gateway request id, which is also
the request id of the reply's ledger entry, and the response is *staged*
(stored, the record still in flight) before the charge is settled. So when
a process dies:
  - before the charge: no ledger entry -> once the lease ends, a retry takes over and runs fresh;
  - between settle and finish: staged response + ledger entry -> a retry replays it;
  - a staged claim is never released (its settle may have committed even if
    it reported a failure); the lease ending resolves it the same way.
The lease is the hold TTL, longer than the provider's total timeout, so a
live request never loses its claim. The one charged reply with no stored
response is a stream whose client left after content reached it: it is
`done` without a response, and a retry gets 409
`idempotency_response_unavailable` (`x-should-retry: false`), never a
second charge.

Replayed responses carry the first response's body (a stream: its SSE
events as the client received them, then `[DONE]`) and its
`X-Bookbag-Credits-Charged` / `-Reserved` headers (what the *first* request
was charged; the replay itself charges nothing), plus `Idempotent-Replayed:
true`, a fresh `X-Request-Id` (every HTTP response has its own), and
`X-Bookbag-Original-Request-Id`: the first request's id, which is the
request id of its ledger entry. `X-Bookbag-Credits-Remaining` is not
replayed (it would be stale).

Records expire `retention` after their claim (at least 24 h in production);
a claim on an expired record starts fresh and a periodic sweep deletes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.clock import Clock, now_ms
from gateway.errors import (
    GatewayError,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InvalidRequest,
    ServiceUnavailable,
)
from gateway.idempotency.store import IdempotencyStore, Record, State, StoredResponse
from gateway.storage.periodic import Periodic

log = logging.getLogger("bookbag.idempotency")

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255
REPLAYED_HEADER = "idempotent-replayed"
ORIGINAL_ID_HEADER = "x-bookbag-original-request-id"
REPLAYED_HEADERS = ("x-bookbag-credits-charged", "x-bookbag-credits-reserved")
Charged = Callable[[str, str], Awaitable[bool]]  # (request id, workspace id)


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """The key a request sent and the SHA-256 of its body's canonical JSON."""

    key: str
    body_hash: str


@dataclass(slots=True)
class Claim:
    """A key this request holds: `stage` the response, settle the charge, then `finish`;
    or `release` it after a failure (a no-op once staged, see the module docstring)."""

    owner: Idempotency
    workspace_id: str
    key: str
    request_id: str
    created_ms: int
    staged: bool = False
    released: bool = False

    async def stage(self, response: StoredResponse) -> None:
        await self.owner.stage(self, response)

    async def finish(self) -> None:
        await self.owner.finish(self)

    async def release(self) -> None:
        await self.owner.release(self)


@dataclass(frozen=True, slots=True)
class Replay:
    """The stored response of the first request with this key (the edge renders it,
    see gateway/edge/render.py)."""

    response: StoredResponse
    original_request_id: str

def key_of(raw: str | None, body: Mapping[str, Any]) -> IdempotencyKey | None:
    """The `Idempotency-Key` the request sent (`raw`, 400 when malformed) with its body's
    hash; None without one. `body` is the parsed body as sent, Bookbag's metadata in it.
    """
    if raw is None:
        return None
    key = raw.strip()
    if not key or len(key) > MAX_KEY_LENGTH or any(not " " <= c <= "~" for c in key):
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters.",
            param="Idempotency-Key",
        )
    return IdempotencyKey(key, body_hash(body))


def body_hash(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def json_response(body: bytes, headers: Mapping[str, str]) -> StoredResponse:
    return StoredResponse("json", 200, _replayed(headers), body)


def sse_response(events: list[bytes], headers: Mapping[str, str]) -> StoredResponse:
    return StoredResponse("sse", 200, _replayed(headers), b"".join(events))


def _replayed(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: headers[name] for name in REPLAYED_HEADERS if name in headers}


@dataclass
class Idempotency:
    store: IdempotencyStore
    clock: Clock
    charged: Charged  # does the ledger have an entry with this request id?
    retention: float
    lease: float  # seconds an in-flight claim lasts without its process: the hold TTL
    sweep_interval: float = 60.0
    unmetered_timeout: float = 2.0
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    async def start(self) -> None:
        self._spawn(self._sweeper())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self.store.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the pipeline's step ---------------------------------------------

    async def claim(self, workspace_id: str, key: IdempotencyKey, request_id: str, *,
                    metered: bool) -> Claim | Replay | None:
        """Claim the key, or the replay, or raise 409 / 422 / 503.

        Unmetered requests (no charge at stake) never wait long for the store nor
        fail because of it: past `unmetered_timeout` or on a store error they run
        without a claim (None), and a claim that lands later is given back.
        """
        if metered:
            return await self._claim(workspace_id, key, request_id)
        task = asyncio.ensure_future(self._claim(workspace_id, key, request_id))
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.unmetered_timeout)
        except (IdempotencyInProgress, IdempotencyKeyReused):
            raise
        except (TimeoutError, GatewayError):
            log.warning("idempotency store unavailable; running %s without its key", request_id)
            task.add_done_callback(self._give_back_late)
            return None
        except BaseException:
            task.add_done_callback(self._give_back_late)
            raise

    def _give_back_late(self, task: asyncio.Task[Claim | Replay]) -> None:
        if not task.cancelled() and task.exception() is None:
            result = task.result()
            if isinstance(result, Claim):
                self._spawn(self.release(result))

    async def _claim(self, workspace_id: str, key: IdempotencyKey,
                     request_id: str) -> Claim | Replay:
        now = now_ms(self.clock)
        lease, expires = self._deadlines(now)
        record = await self.store.claim(workspace_id, key.key, key.body_hash, request_id,
                                        now_ms=now, lease_ms=lease, expires_ms=expires)
        if record is None:
            return Claim(self, workspace_id, key.key, request_id, now)
        if record.body_hash != key.body_hash:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was already used with a different request body; "
                "use a new key for a new request.", param="Idempotency-Key",
            )
        if record.state is State.DONE:
            return _replay_of(record)
        if record.lease_ms > now:
            raise _in_progress()
        # The process that claimed it died. Its charge, if any, is in the ledger.
        if await self.charged(record.request_id, workspace_id):
            await self.store.finish(workspace_id, key.key, record.request_id,
                                    expires_ms=now + int(self.retention * 1000))
            return _replay_of(record)
        if await self.store.take_over(workspace_id, key.key, record.request_id, request_id,
                                      now_ms=now, lease_ms=lease, expires_ms=expires):
            log.warning("took over idempotency key of %s, whose process died", record.request_id)
            return Claim(self, workspace_id, key.key, request_id, now)
        raise _in_progress()

    def _deadlines(self, now: int) -> tuple[int, int]:
        lease = now + int(self.lease * 1000)
        return lease, max(lease, now + int(self.retention * 1000))

    async def stage(self, claim: Claim, response: StoredResponse) -> None:
        """Store the response before the charge; raises if it could not be stored."""
        if not await self.store.stage(claim.workspace_id, claim.key, claim.request_id, response):
            raise ServiceUnavailable("This request's Idempotency-Key was taken over; retry it.")
        claim.staged = True

    async def finish(self, claim: Claim) -> None:
        """Mark the claim done (after the charge). A failure only delays replays until the
        lease ends (recovery finds the charge), so it is logged, not raised."""
        try:
            await asyncio.shield(self.store.finish(
                claim.workspace_id, claim.key, claim.request_id,
                expires_ms=claim.created_ms + int(self.retention * 1000),
            ))
        except Exception:
            log.warning("could not mark idempotency key of %s done", claim.request_id,
                        exc_info=True)

    async def release(self, claim: Claim) -> None:
        """Give the key back after a failure. A staged claim stays (its settle may have
        committed): the lease ending resolves it from the ledger. Never raises."""
        if claim.staged or claim.released:
            return
        claim.released = True
        try:
            await asyncio.shield(self.store.release(claim.workspace_id, claim.key,
                                                    claim.request_id))
        except Exception:
            log.warning("could not release idempotency key of %s; it frees when its lease ends",
                        claim.request_id, exc_info=True)

    # --- background ----------------------------------------------------------

    async def sweep(self) -> int:
        return await self.store.sweep(now_ms(self.clock))

    async def _sweeper(self) -> None:
        await Periodic("idempotency sweep", self.sweep, self.sweep_interval, log=log).run()


def _replay_of(record: Record) -> Replay:
    if record.response is None:
        raise IdempotencyInProgress(
            "The first request with this Idempotency-Key was charged, but its response could "
            "not be stored (its stream was cut off after content was delivered), so it cannot "
            "be replayed. It will not be charged again; send a new key to ask again.",
            param="Idempotency-Key", code="idempotency_response_unavailable",
            headers={"x-should-retry": "false"},
        )
    return Replay(record.response, record.request_id)


def _in_progress() -> IdempotencyInProgress:
    return IdempotencyInProgress(
        "A request with this Idempotency-Key is still in progress; retry shortly.",
        param="Idempotency-Key", headers={"retry-after": "1"},
    )
