"""The Redis meter's background work, shard by shard: the sweep of expired holds, the holds
gauge, and the sync of grants written straight to SQL (the CLI). On a Cluster a shard that is
down is skipped and reported: the other shards' workspaces are swept and counted."""

from __future__ import annotations

import logging

from gateway.errors import ServiceUnavailable
from gateway.metering.outbox import OutboxConsumer
from gateway.metering.redis_core import RedisCore
from gateway.metering.redis_keys import SHARDS, ShardKeys, shard_of
from gateway.metering.redis_sync import Grant, GrantFeed
from gateway.storage.offload import run_db
from gateway.storage.redis import ERRORS, unavailable

log = logging.getLogger("bookbag.meter")


class RedisBackground(RedisCore):
    @property
    def outbox(self) -> OutboxConsumer | None:
        """The consumer moving this meter's entries to SQL (`/metrics` counts its commits)."""
        return self._outbox

    async def count_holds(self) -> int:
        """Holds in flight, every gateway's: the entries of the shards' holds hashes. On a
        Cluster the shards are asked one by one and a shard that is down is left out (the
        figure is a gauge; the other shards' holds still count)."""
        shards = [self.layout.shard(i) for i in range(SHARDS)]
        if not self._cluster:
            async with self._redis.pipeline(transaction=False) as pipe:
                for shard in shards:
                    pipe.hlen(shard.holds)
                return sum(int(n) for n in await pipe.execute())
        total, down = 0, 0
        for shard in shards:
            try:
                total += int(await self._redis.hlen(shard.holds))
            except ERRORS:
                down += 1
        if down == len(shards):
            raise unavailable(ConnectionError("no shard answered"))
        return total

    async def sweep(self) -> None:
        """Void every hold past its expiry: its request never settled or voided it."""
        now = self._clock.now()
        for request_id in [r for r, (_, exp) in self._epochs.items() if exp <= now]:
            del self._epochs[request_id]
        for request_id, workspace_id in list(self._doubtful.items()):
            if not await self._void(workspace_id, request_id):
                break  # Redis is still away: the next sweep tries again
            del self._doubtful[request_id]
        failed: BaseException | None = None
        for i in range(SHARDS):  # shard by shard: one shard down leaves the others swept
            try:
                await self._sweep_shard(self.layout.shard(i), now)
            except ERRORS as exc:
                failed = exc
                if not self._cluster:
                    break  # one node: every shard is on it
        if failed is not None:
            raise unavailable(failed) from failed

    async def _sweep_shard(self, shard: ShardKeys, now: float) -> None:
        request_ids: list[str] = await self._redis.zrangebyscore(
            shard.exp, "-inf", int(now * 1000), start=0, num=500)
        if not request_ids:
            return
        held = await self._redis.hmget(shard.holds, request_ids)
        for request_id, value in zip(request_ids, held, strict=True):
            if value is None:
                await self._redis.zrem(shard.exp, request_id)
                continue
            log.warning("voiding expired hold %s", request_id)
            await self._void(str(value).split("|", 1)[0], request_id)

    async def sync(self) -> None:
        """Apply the grants written straight to SQL since the last poll, once each. Shard by
        shard: each shard's watermark lives on it, so a shard that is down (or whose mark is
        not known yet) holds back only its own workspaces' grants; the others are applied
        and their watermarks move, and the failure is reported afterwards. One round at a
        time (a call during a round waits for it, then runs its own)."""
        async with self._sync_lock:
            await self._sync_round()

    async def _sync_round(self) -> None:
        if self._feed is None:
            self._feed = GrantFeed(self._engine, lag=self._sync_lag)
        feed = self._feed
        failed: ServiceUnavailable | None = None
        unknown = [i for i in range(SHARDS) if i not in feed.lows]
        for i in unknown:  # resume where the gateways left off (each shard's mark is on it)
            try:
                low, saved = await self._sync_mark(self.layout.shard(i))
                feed.know(i, low, saved=saved)
            except ServiceUnavailable as exc:
                if not self._cluster:
                    raise
                failed = exc
        if not feed.lows:
            assert failed is not None
            raise failed
        grants, facts = await run_db(feed.read, list(self._facts))
        self._facts.update(facts)
        behind = {i for i in range(SHARDS) if i not in feed.lows}
        for grant in grants:
            shard = shard_of(grant.workspace_id)
            if shard in behind:
                continue  # its shard failed this round: read again next time
            try:
                if await self._apply_grant(grant) >= 0:  # -1: not in Redis; its seed has it
                    feed.done(grant)
            except ServiceUnavailable as exc:
                if not self._cluster:
                    raise
                failed = exc  # its shard is down: the other workspaces' grants go on
                behind.add(shard)
        for i, low in feed.advance(set(feed.lows) - behind).items():
            try:
                await self._run("mark", [self.layout.shard(i).sync], [low])
            except ServiceUnavailable as exc:
                if not self._cluster:
                    raise
                failed = exc
        if failed is not None:
            raise failed

    async def _sync_mark(self, shard: ShardKeys) -> tuple[int, bool]:
        """A shard's watermark; a shard without one starts from the untagged mark of the
        gateways before per-shard marks (the upgrade), else from the start of the ledger."""
        try:
            mark = await self._redis.get(shard.sync)
        except ERRORS as exc:
            raise unavailable(exc) from exc
        if mark is None:
            return await self._legacy_low(), False
        return int(mark), True

    async def _legacy_low(self) -> int:
        """The untagged mark, read once. It lives on one shard: on a Cluster with that shard
        down, the shards asking start from the ledger's beginning instead (every grant is
        applied once all the same, by its request id; only the rescan costs more), rather
        than waiting on that one shard (the other shards' grants would not arrive)."""
        if self._legacy_mark is None:
            try:
                self._legacy_mark = int(await self._redis.get(self.layout.legacy_sync_mark)
                                        or 0)
            except ERRORS as exc:
                if not self._cluster:
                    raise unavailable(exc) from exc
                log.warning("the old sync mark %s is unreadable (%s): shards without a mark "
                            "start from the ledger's beginning", self.layout.legacy_sync_mark,
                            exc)
                return 0
        return self._legacy_mark

    async def _apply_grant(self, grant: Grant) -> int:
        applied = await self._apply(grant.request_id, grant.workspace_id, grant.kind,
                                    grant.allotment_delta, grant.topup_delta, grant.period_start,
                                    None)
        if applied == 1:
            log.info("applied %s from SQL to Redis", grant.request_id)
        return applied
