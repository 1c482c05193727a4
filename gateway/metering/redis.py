"""The Redis meter: balances and holds in Redis, changed only by Lua scripts; SQL gets the ledger.

    reserve  RESERVE script: renew if the period changed, check, take allotment first, hold
    settle   SETTLE script: remove the hold and append the entry to the shard's outbox stream;
             durable (as far as Redis's appendfsync) when it returns. `OutboxConsumer` writes
             the stream to SQL, exactly once by request id.
    void     VOID script: remove the hold, give back (the allotment only within its period)
    sweep    holds past their expiry are voided; a settled hold is gone, so it is never voided.
             So are holds of reserves that timed out (the script may have run after all).
    grant    SQL first (exact "already applied" answer), then APPLY in Redis, once per request id
    sync     grants written straight to SQL (the CLI) are applied the same way (`redis_sync`)

A workspace missing from Redis is seeded from SQL, set-if-absent. The period
is computed here from the anchor and the injected clock and passed in, so
the scripts never read a clock. Only metered requests reach this module.
Key layout: `redis_keys.py`; scripts: `redis_scripts.py`; running them: `redis_core.py`;
the sweep, the holds gauge and the sync: `redis_background.py`;
the SQL side: `redis_sync.py`.
The scripts run over one pipelined connection (`resp.py`); redis-py does the rest (sweep,
sync, ping).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from gateway.accounts.spend_caps import ledger_cap_used, refusal
from gateway.errors import ServiceUnavailable
from gateway.metering.base import charge, insufficient, trim
from gateway.metering.redis_background import RedisBackground
from gateway.metering.redis_client import advise
from gateway.metering.redis_keys import SHARDS, encode_entry
from gateway.metering.redis_sync import (
    in_ledger,
    write_entry,
)
from gateway.storage.offload import BALANCES, run_db
from gateway.storage.periodic import Periodic
from gateway.storage.redis import ERRORS, transient, unavailable
from gateway.types import Balance, Cap, Hold, LedgerEntry

log = logging.getLogger("bookbag.meter")

SETTLE_ATTEMPTS = 3  # settle is idempotent, so a transport failure is retried


class RedisMeter(RedisBackground):
    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Never waits for Redis: the gateway starts (and serves unmetered requests) without it."""
        # Redis or the database away (ServiceUnavailable): one line each round, no traceback.
        self._loops = (
            Periodic("meter-sync", self.sync, self._sync_interval, log=log,
                     quiet=(ServiceUnavailable,)),
            Periodic("meter-sweep", self.sweep, self._sweep_interval, log=log,
                     quiet=(ServiceUnavailable,)))
        for loop in self._loops:
            loop.start()
        self._advice = asyncio.create_task(advise(self._redis), name="meter-redis-config")
        if self._outbox is not None:
            await self._outbox.start()

    async def close(self) -> None:
        for loop in self._loops:
            await loop.stop()
        if self._advice is not None:
            self._advice.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._advice
        if self._outbox is not None:
            await self._outbox.close()
        if self._fast is not None:
            await self._fast.aclose()
        await self._redis.aclose()

    # --- the Meter interface ----------------------------------------------------

    async def reserve(self, workspace_id: str, credits: int, request_id: str,
                      caps: tuple[Cap, ...] = ()) -> Hold:
        keys = self._workspace(workspace_id).reserve
        if self._down_until and time.monotonic() < self._down_until.get(
                self._breaker_of(keys[0]), 0.0):  # Redis just failed: 503 now, no pile-up
            raise ServiceUnavailable("The balance store is unreachable; retry shortly.")
        facts = self._facts.get(workspace_id) or await self._facts_of(workspace_id)
        now = self._clock.now()
        start, end = self._current(facts.anchor, now)
        expires_at = now + self._hold_ttl
        seeds: dict[str, int] = {}
        try:
            replid = await self._replid(keys[0])
            for _ in range(len(caps) + 1):
                args = [request_id, credits, int(expires_at * 1000), workspace_id, len(caps),
                        *(x for c in caps for x in (c.subject, c.credits, seeds.get(c.subject, "")))]
                result = await self._seeded("reserve", workspace_id, keys, [*args, start])
                if int(result[0]) == 3:  # a new period: renew with its entry, then reserve
                    renewal, start, end = self._period(workspace_id, facts)
                    result = await self._seeded("reserve", workspace_id, keys, [*args, *renewal])
                if int(result[0]) != 4:
                    break
                # Spend caps: a cap's usage for this period is not in Redis yet: from SQL.
                seeds[str(result[1])] = await self._cap_seed(workspace_id, str(result[1]),
                                                             str(result[2]))
        except ServiceUnavailable as exc:
            if transient(exc.__cause__ or exc):
                # The script may still run once Redis answers again: void it then (the sweep).
                self._doubtful[request_id] = workspace_id
            raise
        code = int(result[0])
        if code == -1:
            raise ServiceUnavailable(f"request {request_id} already holds credits")
        if code == -2:
            raise insufficient(int(result[1]), credits, facts.period_end(result[2], start, end))
        if code == -3:
            raise refusal(caps[int(result[1])], int(result[2]), credits,
                          facts.period_end(result[3], start, end))
        if code == 4:  # pragma: no cover - each round seeds one more cap
            raise ServiceUnavailable("spend cap usage could not be loaded")
        self._epochs[request_id] = (f"{result[4]}|{replid}" if replid else str(result[4]),
                                    expires_at)
        return Hold(request_id, workspace_id, credits, int(result[1]), int(result[2]),
                    str(result[3]), expires_at, tuple(c.subject for c in caps))

    async def _cap_seed(self, workspace_id: str, subject: str, period: str) -> int:
        return await run_db(ledger_cap_used, self._engine, workspace_id, subject, period,
                            store=BALANCES)

    async def settle(self, hold: Hold, entry: LedgerEntry,
                     credits: int | None = None) -> Balance | None:
        charged, rest = trim(hold, credits)
        charge(entry, charged)
        epoch = self._epochs.pop(hold.request_id, ("", 0.0))
        keys = self._workspace(hold.workspace_id).settle
        stored, _, replid = epoch[0].partition("|")
        args: list[Any] = [hold.request_id, encode_entry(entry), stored, hold.credits,
                           charged.from_allotment, charged.from_topups, hold.period_start]
        if rest is not None:  # a trimmed settle: the script gives the rest back
            args += [rest.credits, rest.from_allotment, rest.from_topups]
        for attempt in range(SETTLE_ATTEMPTS):
            try:
                result = await self._run("settle", keys, args)
                if int(result[0]) == 0 and replid and args[2] == stored \
                        and replid != await self._replid(keys[0]):
                    # Another primary since the reserve (a failover): a new epoch. A hold it
                    # lacks never replicated: it was lost, not resolved, and is charged
                    # (unless its settle replicated: the script checks `pending`).
                    args[2] = "~" + stored
                    result = await self._run("settle", keys, args)
            except ServiceUnavailable as exc:
                if attempt + 1 == SETTLE_ATTEMPTS or not transient(exc.__cause__ or exc):
                    self._epochs.setdefault(hold.request_id, epoch)
                    raise
                continue
            if int(result[0]) == 2:
                log.warning("hold %s was lost by Redis (restarted without its data); "
                            "its charge was recorded anyway", hold.request_id)
            return self._balance_after(hold.workspace_id, result)
        return None  # pragma: no cover - the last attempt returns or raises

    def _balance_after(self, workspace_id: str, result: list[Any]) -> Balance | None:
        """The balance the settle script read after the charge, if it is this period's."""
        facts = self._facts.get(workspace_id)
        if facts is None or len(result) < 6:
            return None
        _, period, allotment, allot_rem, top_rem, reserved = result
        start, end = self._current(facts.anchor, self._clock.now())
        if str(period) != start:  # a renewal is due: balance() applies it first
            return None
        return Balance(workspace_id, facts.plan_at(start)[0], int(allotment), int(allot_rem),
                       int(top_rem), int(reserved), start, end)

    async def void(self, hold: Hold) -> None:
        self._epochs.pop(hold.request_id, None)
        await self._void(hold.workspace_id, hold.request_id)

    async def cap_usage(self, workspace_id: str, caps: tuple[Cap, ...]) -> dict[str, int]:
        """Each cap's usage this period from Redis (charged + held); SQL's charges if absent."""
        period = (await self.balance(workspace_id)).period_start
        found = await self._run("caps", [self.layout.bal(workspace_id)],
                                [period, *(c.subject for c in caps)])
        usage: dict[str, int] = {}
        for cap, value in zip(caps, found, strict=True):
            raw = value.decode() if isinstance(value, bytes) else str(value)
            usage[cap.subject] = int(raw) if raw else await self._cap_seed(
                workspace_id, cap.subject, period)
        return usage

    async def balance(self, workspace_id: str) -> Balance:
        facts = await self._facts_of(workspace_id)
        renewal, start, end = self._period(workspace_id, facts)
        shard = self.layout.of(workspace_id)
        result = await self._seeded("balance", workspace_id, [
            self.layout.bal(workspace_id), self.layout.applied(workspace_id), shard.outbox],
            renewal)
        _, period, allotment, allot_rem, top_rem, reserved = result
        return Balance(workspace_id, facts.plan_at(period)[0], int(allotment), int(allot_rem),
                       int(top_rem), int(reserved), period, facts.period_end(period, start, end))

    async def grant(self, entry: LedgerEntry) -> bool:
        inserted = await run_db(write_entry, self._engine, entry)
        facts = await self._facts_of(entry.workspace_id)
        try:
            await self._apply(entry.request_id, entry.workspace_id, str(entry.kind),
                              entry.allotment_delta, entry.topup_delta, entry.period_start,
                              self._period(entry.workspace_id, facts)[0])
        except ServiceUnavailable:
            log.warning("grant %s is in SQL; Redis gets it from the sync", entry.request_id)
        return inserted

    async def charged(self, request_id: str, workspace_id: str | None = None) -> bool:
        """Whether a reply was charged: its entry is on its way to SQL, or in SQL (idempotency's
        crash recovery asks; asking Redis first leaves no window between the two). With the
        workspace only its shard is asked, so a shard down elsewhere does not matter."""
        shards = [self.layout.of(workspace_id)] if workspace_id is not None \
            else [self.layout.shard(i) for i in range(SHARDS)]
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for shard in shards:
                    pipe.hexists(shard.pending, request_id)
                if any(await pipe.execute()):
                    return True
        except ERRORS as exc:
            raise unavailable(exc) from exc
        return await run_db(in_ledger, self._engine, request_id)
