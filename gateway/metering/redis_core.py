"""The Redis meter's core: its state, and the plumbing its operations share.

Scripts run over the pipelined client (`resp.py`, over TCP or TLS; redis-py's only with
a credential provider),
with WAIT after a settle when replicas must confirm it; a transport failure
opens the circuit breaker (per shard tag on a cluster) and becomes a 503
(`gateway/storage/redis.py`'s one error map). A workspace missing from Redis
is seeded from SQL once however many requests ask at the same time; the
current period is computed once per period from the anchor and the clock.
`RedisMeter` (`redis.py`) is the Meter interface and the background work on top.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import Engine

from gateway.clock import Clock
from gateway.errors import ServiceUnavailable
from gateway.metering.base import AllotmentOf, midnight_utc, renewal_entry
from gateway.metering.outbox import OutboxConsumer
from gateway.metering.redis_client import script_client
from gateway.metering.redis_keys import Layout, WorkspaceKeys, encode_entry
from gateway.metering.redis_scripts import (
    APPLY,
    BALANCE,
    CAPS,
    MARK,
    RESERVE,
    SEED,
    SETTLE,
    VOID,
    apply_args,
)
from gateway.metering.redis_sync import Facts, GrantFeed, load_facts, load_seed
from gateway.metering.resp import Script
from gateway.metering.resp_cluster import ClusterScripts
from gateway.periods import period_of
from gateway.storage.offload import run_db
from gateway.storage.periodic import Periodic
from gateway.storage.redis import ERRORS, Redis, is_cluster, transient, unavailable

log = logging.getLogger("bookbag.meter")

T = TypeVar("T")


class RedisCore:
    """The Redis meter's state and how it runs its scripts (`RedisMeter` is the Meter on top)."""

    def __init__(
        self,
        client: Redis,
        engine: Engine,
        clock: Clock,
        allotment_of: AllotmentOf,
        *,
        hold_ttl: float,
        sync_interval: float = 1.0,
        sweep_interval: float = 5.0,
        breaker: float = 0.5,
        layout: Layout | None = None,
        outbox: OutboxConsumer | None = None,
        wait_replicas: int = 0,
        wait_timeout: float = 0.05,
        sync_lag: float | None = None,
    ) -> None:
        self._redis = client
        self._engine = engine
        self._clock = clock
        self._allotment_of = allotment_of
        self._hold_ttl = hold_ttl
        self._sync_interval = sync_interval
        self._breaker = breaker
        self.layout = layout or Layout()
        self._outbox = outbox
        # WAIT after each settle (BOOKBAG_REDIS_WAIT_REPLICAS): a charge no replica confirmed
        # in time is "unconfirmed": counted and logged, the reply goes out all the same.
        self._wait = (wait_replicas, max(1, int(wait_timeout * 1000)))
        self.unconfirmed = 0  # settles whose WAIT timed out short of `wait_replicas`
        sources = {"caps": CAPS, "reserve": RESERVE, "settle": SETTLE, "void": VOID, "balance": BALANCE,
                   "apply": APPLY, "seed": SEED, "mark": MARK}
        # The scripts go through the pipelined client (redis-py's per-command cost was most
        # of a request's); redis-py keeps the rest.
        self._fast = script_client(client)
        self._lua = {name: Script(src) for name, src in sources.items()}
        self._scripts = {} if self._fast is not None else {
            name: client.register_script(src) for name, src in sources.items()}
        if wait_replicas and self._fast is None:
            log.warning("BOOKBAG_REDIS_WAIT_REPLICAS is not applied: WAIT needs the meter's "
                        "own connection, which a Redis credential provider rules out")
        self._keys: dict[str, WorkspaceKeys] = {}
        self._periods: dict[str, tuple[float, float, str, str]] = {}  # anchor -> the one now
        self._facts: dict[str, Facts] = {}
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._epochs: dict[str, tuple[str, float]] = {}  # request id -> (epoch, expires_at)
        self._doubtful: dict[str, str] = {}  # request id -> workspace: reserves that timed out
        # Redis just failed: metered requests get 503 at once for `breaker` seconds (no
        # pile-up). On a cluster, per shard tag: a shard down stops only its own workspaces.
        self._cluster = is_cluster(client)
        self._down_until: dict[str, float] = {}
        self._feed: GrantFeed | None = None
        # One sync round at a time: a round moves the watermarks by what the feed has read,
        # so a round overlapping another could move a shard's mark past a grant that only
        # the other round read, and whose apply then failed (the grant would be skipped).
        self._sync_lock = asyncio.Lock()
        # How long a seq may take to commit (the sync rereads that much, `redis_sync.py`).
        self._sync_lag = max(5.0, 3 * sync_interval) if sync_lag is None else sync_lag
        self._legacy_mark: int | None = None  # the untagged watermark, read once (upgrade)
        self._sweep_interval = sweep_interval
        self._loops: tuple[Periodic, ...] = ()
        self._advice: asyncio.Task[None] | None = None

    async def ping(self) -> bool:
        """Whether Redis answers now (`/readyz`); at most about one timeout."""
        try:
            return bool(await self._redis.ping())
        except ERRORS:
            return False

    # --- plumbing -------------------------------------------------------------

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        try:
            if self._fast is not None and name == "settle" and self._wait[0]:
                result, acked = await self._fast.evalsha_wait(self._lua[name], keys, args,
                                                              *self._wait)
                if acked < self._wait[0]:
                    self.unconfirmed += 1
                    log.warning("charge unconfirmed: %s replica(s) of %s acknowledged the "
                                "settle of %s in time", acked, self._wait[0], args[0])
                return result
            if self._fast is not None:
                return await self._fast.evalsha(self._lua[name], keys, args)
            return await self._scripts[name](keys=keys, args=args)
        except ERRORS as exc:
            if transient(exc):
                self._down_until[self._breaker_of(keys[0])] = time.monotonic() + self._breaker
            raise unavailable(exc) from exc

    async def _replid(self, key: str) -> str:
        """Redis Cluster: the replication id of the primary serving `key` (a change of primary
        is a new epoch, DESIGN "Redis Cluster"); '' on one node, where the shard's `epoch`
        key alone tells a Redis that restarted without its data."""
        if not isinstance(self._fast, ClusterScripts):
            return ""
        try:
            return await self._fast.replid(key)
        except ERRORS as exc:
            if transient(exc):
                self._down_until[self._breaker_of(key)] = time.monotonic() + self._breaker
            raise unavailable(exc) from exc

    def _breaker_of(self, key: str) -> str:
        """The circuit a key's failure opens: its shard tag on a cluster, else the one node."""
        return key.split("{", 1)[1].split("}", 1)[0] if self._cluster else ""

    async def _once(self, key: str, make: Callable[[], Awaitable[T]]) -> T:
        """One `make()` at a time per key; concurrent callers share its outcome."""
        fut = self._pending.get(key)
        if fut is None:
            fut = self._pending[key] = asyncio.ensure_future(make())

            def done(f: asyncio.Future[Any]) -> None:
                if self._pending.get(key) is f:
                    del self._pending[key]

            fut.add_done_callback(done)
        result: T = await asyncio.shield(fut)
        return result

    async def _facts_of(self, workspace_id: str) -> Facts:
        facts = self._facts.get(workspace_id)
        if facts is None:
            facts = await self._once("facts:" + workspace_id, lambda: run_db(
                load_facts, self._engine, workspace_id))
            self._facts[workspace_id] = facts
        return facts

    async def _seed(self, workspace_id: str) -> None:
        async def seed() -> None:
            s = await run_db(load_seed, self._engine, workspace_id)
            keys = [self.layout.bal(workspace_id), self.layout.applied(workspace_id),
                    self.layout.of(workspace_id).epoch]
            if await self._run("seed", keys, [s.period, s.allotment, s.allotment_remaining,
                                              s.topups_remaining, uuid.uuid4().hex, *s.applied]):
                log.info("seeded the balance of %s from SQL", workspace_id)

        await self._once("seed:" + workspace_id, seed)

    async def _seeded(self, name: str, workspace_id: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script that answers `{0}` when the workspace is not in Redis: seed, run again."""
        result = await self._run(name, keys, args)
        if int(result[0]) == 0:
            await self._seed(workspace_id)
            result = await self._run(name, keys, args)
            if int(result[0]) == 0:
                raise ServiceUnavailable(f"the balance of {workspace_id} could not be loaded")
        return result

    def _workspace(self, workspace_id: str) -> WorkspaceKeys:
        keys = self._keys.get(workspace_id)
        if keys is None:
            keys = self._keys[workspace_id] = self.layout.workspace(workspace_id)
        return keys

    def _current(self, anchor: str, now: float) -> tuple[str, str]:
        """(start, end) of the period containing `now`, computed once per period."""
        known = self._periods.get(anchor)
        if known is not None and known[0] <= now < known[1]:
            return known[2], known[3]
        start, end = period_of(anchor, now)
        self._periods[anchor] = (midnight_utc(start), midnight_utc(end), start, end)
        return start, end

    def _period(self, workspace_id: str, facts: Facts) -> tuple[list[Any], str, str]:
        """The renewal arguments for now (period, allotment, entry id, entry), and (start, end)."""
        now = self._clock.now()
        start, end = self._current(facts.anchor, now)
        entry = renewal_entry(workspace_id, start, self._allotment_of(*facts.plan_at(start)),
                              int(now * 1000))
        return [start, entry.credits, entry.request_id, encode_entry(entry)], start, end

    # --- the scripts the meter and its background share ----------------------------

    async def _void(self, workspace_id: str, request_id: str) -> bool:
        shard = self.layout.of(workspace_id)
        try:
            await self._run("void", [self.layout.bal(workspace_id), shard.holds, shard.exp],
                            [request_id])
        except ServiceUnavailable:
            # The hold stays until it expires; the sweep then gives its credits back.
            log.warning("could not void hold %s now; the sweep will after it expires", request_id)
            return False
        return True

    async def _apply(self, request_id: str, workspace_id: str, kind: str, allotment_delta: int,
                     topup_delta: int, period: str | None, renewal: list[Any] | None) -> int:
        """-1: the workspace is not in Redis (a seed will include the entry); 0: applied before."""
        shard = self.layout.of(workspace_id)
        result = await self._run("apply", [
            self.layout.bal(workspace_id), self.layout.applied(workspace_id), shard.outbox],
            apply_args(request_id, kind, allotment_delta, topup_delta, period, renewal))
        return int(result)
