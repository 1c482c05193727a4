"""The meter's pipelined script client on Redis Cluster: one `RespClient` per primary.

Each script's keys share one slot (the workspace's shard tag, `redis_keys.py`), so a
call goes to the primary serving that slot, pipelined with every other call to that node
on one connection. The slot map is redis-py's (its cluster client's `nodes_manager`, the
client the meter uses for everything else), refreshed:

- on `MOVED` (the slot moved: a failover or a resharding): refresh, send again once;
- on `ASK` (the slot is migrating): `ASKING` and the command to the node named, once
  (with WAIT after a settle: ASKING, the script and WAIT in one write to that node, whose
  replicas WAIT counts);
- on a connection error (a primary killed): refresh, send again once to the slot's
  primary then (every meter script is safe to run twice); the promoted replica answers
  once the cluster has failed over, before that the call fails and the meter answers 503;
- on a timeout: not sent again (it may still run), the next call refreshes first;
- on `TRYAGAIN` (a slot migrating, the script's keys split between the two nodes, or some
  absent on the importing node: nothing ran): sent again after 50 ms, up to 3 times, then
  the meter answers 503.

Refreshes are shared by concurrent callers and at most one per `REFRESH_INTERVAL`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from gateway.metering.resp import Arg, RespClient, Script
from gateway.storage.redis import (
    Redis,
    RedisClusterException,
    RedisConnectionError,
    RedisTimeoutError,
    ResponseError,
    key_slot,
)

REFRESH_INTERVAL = 0.1
TRYAGAIN_ATTEMPTS = 4  # TRYAGAIN (a slot migrating): sent again after a pause, 3 times
TRYAGAIN_PAUSE = 0.05


class ClusterScripts:
    """`evalsha(script, keys, args)` like `RespClient`, routed by the slot of `keys[0]`."""

    def __init__(self, cluster: Redis, *, username: str | None, password: str | None,
                 connect_timeout: float, timeout: float, tls: ssl.SSLContext | None = None
                 ) -> None:
        self._cluster = cluster
        self._tls = tls
        self._username = username
        self._password = password
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._nodes: dict[tuple[str, int], RespClient] = {}
        self._replids: dict[tuple[str, int], str] = {}  # primary -> its replication id
        self._refreshing: asyncio.Future[None] | None = None
        self._refreshed = 0.0
        self._stale = True  # no slot map yet
        self.refreshes = 0  # topology refreshes done (tests and metrics read it)

    def _node(self, address: tuple[str, int]) -> RespClient:
        client = self._nodes.get(address)
        if client is None:
            client = self._nodes[address] = RespClient(
                address[0], address[1], username=self._username, password=self._password,
                connect_timeout=self._connect_timeout,
                timeout=self._timeout, tls=self._tls)
        return client

    def _primary(self, slot: int) -> tuple[str, int]:
        try:
            node = self._cluster.nodes_manager.get_node_from_slot(slot)
        except RedisClusterException as exc:  # no primary serves it (its shard is down)
            self._stale = True
            raise RedisConnectionError(f"no Redis Cluster node serves slot {slot}") from exc
        return str(node.host), int(node.port)

    async def _refresh(self) -> None:
        """Read the slot map again (one refresh for all callers, at most one per interval)."""
        if self._refreshing is None or self._refreshing.done():
            async def refresh() -> None:
                wait = self._refreshed + REFRESH_INTERVAL - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                try:
                    if self._stale and not self._refreshed:
                        await self._cluster.initialize()
                    else:
                        await self._cluster.nodes_manager.initialize()
                except RedisClusterException as exc:  # no seed answers
                    raise RedisConnectionError(f"Redis Cluster topology: {exc}") from exc
                finally:
                    self._refreshed = time.monotonic()
                self.refreshes += 1
                self._stale = False

            self._refreshing = asyncio.ensure_future(refresh())
        await asyncio.shield(self._refreshing)

    async def replid(self, key: str) -> str:
        """The replication id of the primary serving `key` now: it changes when a replica is
        promoted (or a primary restarts), so it names the epoch of that shard's data."""
        if self._stale:
            await self._refresh()
        address = self._primary(key_slot(key.encode()))
        replid = self._replids.get(address)
        if replid is None:
            try:
                info = str(await self._node(address).command(b"INFO", b"replication"))
            except RedisConnectionError:
                self._replids.pop(address, None)
                self._stale = True
                raise
            fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
            replid = self._replids[address] = fields.get("master_replid", "").strip()
        return replid

    async def evalsha_wait(self, script: Script, keys: Sequence[str], args: Sequence[Arg],
                           replicas: int, timeout_ms: int) -> tuple[Any, int]:
        """The script and WAIT pipelined on the slot's primary (`RespClient.evalsha_wait`)."""
        acked: list[int] = []

        async def send(node: RespClient, asking: bool) -> Any:
            result, n = await node.evalsha_wait(script, keys, args, replicas, timeout_ms,
                                                asking=asking)
            acked.append(n)
            return result

        return await self._routed(keys, send), acked[-1]

    async def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        async def send(node: RespClient, asking: bool) -> Any:
            return await node.evalsha(script, keys, args, asking=asking)

        return await self._routed(keys, send)

    async def _routed(self, keys: Sequence[str],
                      send: Callable[[RespClient, bool], Awaitable[Any]]) -> Any:
        for attempt in range(TRYAGAIN_ATTEMPTS):
            try:
                return await self._routed_once(keys, send)
            except ResponseError as exc:
                # A slot migrating with some of the script's keys moved and others absent:
                # nothing ran; Redis asks to retry once the keys are together again.
                if not str(exc).startswith("TRYAGAIN") or attempt + 1 == TRYAGAIN_ATTEMPTS:
                    raise
                await asyncio.sleep(TRYAGAIN_PAUSE)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _routed_once(self, keys: Sequence[str],
                           send: Callable[[RespClient, bool], Awaitable[Any]]) -> Any:
        slot = key_slot(keys[0].encode())
        if self._stale:
            await self._refresh()
        address = self._primary(slot)
        try:
            return await send(self._node(address), False)
        except RedisConnectionError:
            self._replids.pop(address, None)  # restarted or replaced: ask again
            self._stale = True  # a primary is gone: its replica may have taken over
            await self._refresh()
            return await send(self._node(self._primary(slot)), False)
        except RedisTimeoutError:
            self._replids.pop(address, None)
            self._stale = True
            raise
        except ResponseError as exc:
            kind, _, rest = str(exc).partition(" ")
            if kind == "MOVED":
                self._stale = True
                await self._refresh()
                return await send(self._node(self._primary(slot)), False)
            if kind == "ASK":
                host, _, port = rest.split(" ")[-1].rpartition(":")
                return await send(self._node((host, int(port))), True)
            raise

    async def aclose(self) -> None:
        if self._refreshing is not None and not self._refreshing.done():
            self._refreshing.cancel()
        for client in self._nodes.values():
            await client.aclose()
        self._nodes.clear()
