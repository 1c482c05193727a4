"""The outbox consumer: moves ledger entries from the Redis streams to SQL, exactly once.

Each step:
  1. lease   one consumer at a time per shard (a `SET NX PX` lease, renewed), so a
             workspace's entries reach SQL in the order they were appended (a renewal
             before the charges of its period: `apply_entry`'s projection depends on it)
  2. claim   on taking a lease, or after a failure: the shard's pending entries, whoever
             read them (a consumer that died between commit and acknowledge), via XAUTOCLAIM
  3. read    otherwise XREADGROUP new entries (blocking up to `block` seconds)
  4. write   one SQL transaction, each entry through `apply_entry`, which inserts
             ON CONFLICT (request_id) DO NOTHING: an entry written twice is written once
  5. ack     XACK and XDEL only after the commit, and drop the request ids from the
             shard's `pending` hash (settled, not yet in SQL: what "was it charged?" reads)
At each lease renewal a shard's owner checks its epoch and, when it changed, rebuilds
its balances from SQL before its next step (`redis_rebuild.py`).

After each commit `on_commit` gets the entries inserted and how long ago the
oldest of them was settled (`/metrics`: bookbag_ledger_write_lag_seconds{store="redis"}).

Every gateway process runs one; whoever holds a shard's lease drains it. A
consumer that stops releases its leases; one that dies loses them after
`lease_ttl`, and the next owner re-applies what it left pending (harmless).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from gateway.metering.redis_keys import SHARDS, Layout, decode_entry
from gateway.metering.redis_rebuild import Rebuilder
from gateway.metering.redis_scripts import LEASE, RELEASE
from gateway.storage.database import apply_entry, transaction
from gateway.storage.periodic import Periodic
from gateway.storage.redis import ERRORS, Redis, ResponseError, is_cluster, transient
from gateway.types import LedgerEntry

log = logging.getLogger("bookbag.outbox")
GROUP = "ledger"


@dataclass(slots=True)
class Message:
    stream: str
    id: str
    raw: str | None  # the entry's JSON; None when the stream lost it
    request_id: str | None = None  # known once decoded


class OutboxConsumer:
    def __init__(self, client: Redis, engine: Engine, *, layout: Layout | None = None,
                 batch: int = 256, block: float = 0.5, lease_ttl: float = 10.0,
                 retry: float = 1.0, linger: float = 0.02) -> None:
        self._redis = client  # its read timeout must exceed `block`
        self._engine = engine
        self.layout = layout or Layout()
        self._batch = batch
        self._block_ms = int(block * 1000)
        self._lease_ms = int(lease_ttl * 1000)
        self._linger = linger  # after a short batch: let entries gather, fewer SQL commits
        self.poll = 0.05  # Redis Cluster: the wait after reading every stream empty
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lease = client.register_script(LEASE)
        self._release = client.register_script(RELEASE)
        shards = [self.layout.shard(i) for i in range(SHARDS)]
        self._streams = {shard.outbox: shard.lease for shard in shards}
        self._pending = {shard.outbox: shard.pending for shard in shards}
        self._shards = {shard.outbox: shard for shard in shards}
        # A shard's lease owner rebuilds it when its epoch changed (`redis_rebuild.py`).
        self.rebuilder = Rebuilder(client, engine, self.layout)
        self.owned: set[str] = set()  # streams whose lease this consumer holds
        self._to_claim: set[str] = set()
        self._renewed = 0.0
        self._stop = asyncio.Event()  # also ends the waits inside a step
        # Steps back to back; after a failed one, a pause of `retry`.
        self._loop = Periodic("outbox-consumer", self._round, retry, log=log, first_at_once=True)
        self.written = 0  # entries inserted in SQL
        self.duplicates = 0  # entries SQL already had (re-applied after a failure)
        # Called after each commit that inserted entries: (how many, seconds since the oldest of
        # the batch was settled, i.e. appended to its stream: the time in its stream id).
        self.on_commit: Callable[[int, float], None] | None = None

    # --- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self._stop.clear()
        self._loop.start()

    async def close(self) -> None:
        self._stop.set()
        await self._loop.stop(grace=self._block_ms / 1000 + 5)
        with contextlib.suppress(*ERRORS):  # let another process take over at once
            for stream in self.owned:
                await self._release(keys=[self._streams[stream]], args=[self.name])
        self.owned.clear()
        await self._redis.aclose()

    async def _round(self) -> bool:
        """One step; True (the next at once) unless it failed."""
        try:
            await self.step()
        except Exception as exc:
            log.warning("outbox consumer step failed (%s); retrying", exc,
                        exc_info=not transient(exc))
            self._renewed = 0.0  # re-check leases and groups, then re-claim what is pending
            self._to_claim |= self.owned
            self.owned.clear()
            return False
        return True

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    # --- one step -------------------------------------------------------------

    async def step(self) -> int:
        """Lease, then claim or read one batch, write it to SQL, acknowledge it."""
        await self.lease()
        if not self.owned:
            await self._pause(min(self._lease_ms / 3000, 1.0))
            return 0
        batch = await self.claim() or await self.read()
        if batch:
            await self.write(batch)
            await self.ack(batch)
            if len(batch) < self._batch:
                await self._pause(self._linger)
        return len(batch)

    async def lease(self) -> set[str]:
        """Take or renew the shard leases (every third of their TTL)."""
        if time.monotonic() - self._renewed < self._lease_ms / 3000:
            return self.owned
        results = [await self._lease_one(lease) for lease in self._streams.values()]
        if all(r is None for r in results):
            raise ConnectionError("no shard's lease could be taken: Redis is unreachable")
        for stream, result in zip(self._streams, results, strict=True):
            if result is None or int(result) == 0:
                self.owned.discard(stream)
            elif stream not in self.owned:
                await self._ensure_group(stream)
                self.owned.add(stream)
                self._to_claim.add(stream)
        for stream in sorted(self.owned):  # a new epoch: rebuilt before the next step
            if not await self.rebuilder.checked(self._shards[stream]):
                self.owned.discard(stream)  # its shard is down (Redis Cluster)
        self._renewed = time.monotonic()
        return self.owned

    async def _lease_one(self, lease: str) -> int | None:
        """Take or renew one lease; None when its shard is down (Redis Cluster: the other
        shards' entries keep moving to SQL; on one node every shard is down at once)."""
        try:
            return int(await self._lease(keys=[lease], args=[self.name, self._lease_ms]))
        except ERRORS as exc:
            if not is_cluster(self._redis) or not transient(exc):
                raise
            log.warning("outbox lease %s: its shard is unreachable (%s)", lease, exc)
            return None

    async def _ensure_group(self, stream: str) -> None:
        try:
            await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def claim(self) -> list[Message]:
        """Pending entries of an owned shard (left by a dead consumer, or by a failed step)."""
        for stream in sorted(self._to_claim & self.owned):
            cursor, entries, *_ = await self._redis.xautoclaim(
                stream, GROUP, self.name, 0, start_id="0-0", count=self._batch)
            if str(cursor) in ("0-0", "0"):
                self._to_claim.discard(stream)
            if entries:
                return [_message(stream, id_, fields) for id_, fields in entries]
        self._to_claim &= self.owned
        return []

    async def read(self) -> list[Message]:
        if is_cluster(self._redis):
            return await self._read_each()
        reply = await self._redis.xreadgroup(
            GROUP, self.name, {stream: ">" for stream in sorted(self.owned)},
            count=self._batch, block=self._block_ms)
        return [_message(stream, id_, fields) for stream, entries in reply or []
                for id_, fields in entries]

    async def _read_each(self) -> list[Message]:
        """Redis Cluster: one XREADGROUP per stream (each shard tag is its own slot, and a
        command spanning slots is refused), all at once, without BLOCK (a blocked read would
        hold up the others); a shard that fails is skipped; when every stream is empty, wait
        a short `poll` before the next read."""
        streams = sorted(self.owned)
        replies = await asyncio.gather(*(self._read_one(stream) for stream in streams),
                                       return_exceptions=True)
        batch: list[Message] = []
        for stream, reply in zip(streams, replies, strict=True):
            if isinstance(reply, BaseException):  # its shard is down: the others go on
                if not isinstance(reply, ERRORS):
                    raise reply
                log.warning("outbox %s unreadable (%s)", stream, reply)
                self.owned.discard(stream)  # taken again (and its pending claimed) later
                self._renewed = 0.0
                continue
            batch += [_message(stream, id_, fields) for name, entries in _entries(reply)
                      for id_, fields in entries]
        if not batch:
            await self._pause(min(self._block_ms / 1000, self.poll))
        return batch

    async def _read_one(self, stream: str) -> object:
        """XREADGROUP on the stream's primary, named here: left to redis-py, it would ask a
        node for the command's keys (COMMAND GETKEYS) on every poll. A moved slot fails
        this read; the stream is leased and read again after a topology refresh."""
        node = self._redis.get_node_from_key(stream)
        return await self._redis.execute_command(
            "XREADGROUP", "GROUP", GROUP, self.name, "COUNT", self._batch, "STREAMS", stream,
            ">", target_nodes=node)

    async def write(self, batch: list[Message]) -> None:
        entries: list[LedgerEntry] = []
        for message in batch:
            if message.raw is None:
                continue  # deleted from the stream while pending: nothing to write
            try:
                entries.append(decode_entry(message.raw))
                message.request_id = entries[-1].request_id
            except Exception:
                # Nothing can ever decode it: keep it aside rather than block the shard.
                log.error("outbox entry %s %s is unreadable; moved to %s:dead", message.stream,
                          message.id, message.stream)
                await self._redis.xadd(f"{message.stream}:dead", {"e": message.raw})
        inserted = await asyncio.to_thread(self._commit, entries)
        self.written += inserted
        self.duplicates += len(entries) - inserted
        if inserted and self.on_commit is not None:
            settled_ms = min(_appended_ms(m.id) for m in batch)
            with contextlib.suppress(Exception):  # metrics never fail the consumer
                # Redis stamps stream ids with its own clock: a skew below zero reads as no lag.
                self.on_commit(inserted, max(0.0, time.time() - settled_ms / 1000))

    def _commit(self, entries: list[LedgerEntry]) -> int:
        with transaction(self._engine) as (cur, sql):
            return sum(apply_entry(cur, sql, entry) for entry in entries)

    async def ack(self, batch: list[Message]) -> None:
        by_stream: dict[str, list[Message]] = {}
        for message in batch:
            by_stream.setdefault(message.stream, []).append(message)
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, messages in by_stream.items():
                ids = [m.id for m in messages]
                pipe.xack(stream, GROUP, *ids)
                pipe.xdel(stream, *ids)
                if done := [m.request_id for m in messages if m.request_id]:
                    pipe.hdel(self._pending[stream], *done)  # now SQL answers "charged?"
            await pipe.execute()


def _appended_ms(stream_id: str) -> int:
    """When Redis appended a stream entry: the milliseconds part of its id (`<ms>-<seq>`)."""
    return int(stream_id.split("-", 1)[0])


def _entries(reply: object) -> list[tuple[str, list[tuple[str, dict[str, str] | None]]]]:
    """XREADGROUP's reply as (stream, entries) pairs (RESP2 gives a list, RESP3 a dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(str(k), v) for k, v in reply.items()]
    return [(str(k), v) for k, v in reply]  # type: ignore[attr-defined]


def _message(stream: str, id_: str, fields: dict[str, str] | None) -> Message:
    return Message(str(stream), str(id_), (fields or {}).get("e"))


async def backlog(client: Redis, layout: Layout) -> int:
    """Entries appended to the outbox and not yet committed to SQL (acknowledged ones are deleted)."""
    async with client.pipeline(transaction=False) as pipe:
        for i in range(SHARDS):
            pipe.xlen(layout.shard(i).outbox)
        return sum(int(n) for n in await pipe.execute())
