"""A Redis Cluster of the test's own on loopback: six redis-server processes in cluster mode,
three primaries with one replica each, built with CLUSTER commands (no redis-cli needed).

    cluster = RedisCluster(tmp_path).start()
    cluster.url                      # redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...
    cluster.primary_of(slot)         # the RedisServer serving a slot now (kill, pause ...)
    cluster.replica_of(server)       # its replica
    cluster.wait_for_failover(old)   # until a replica took over the dead primary's slots
    cluster.stop()

Slots are assigned as docs/deployment.md documents (`SLOT_RANGES`), so the gateway's
sixteen shard tags `{s00}`..`{s15}` split 6/5/5 over the three primaries instead of the
8/4/4 of an even split of the slot space.
"""

from __future__ import annotations

import contextlib
import random
import socket
import time
from pathlib import Path
from typing import Any

import redis

from tests.harness import free_port
from tests.redis_server import RedisServer
from tests.tls_certs import TlsFiles

# The gateway's shard tags by slot: {s14} 299, {s10} 431, {s07} 633, {s03} 765, {s15} 4362,
# {s11} 4494 | {s06} 4696, {s02} 4828, {s12} 8685, {s05} 8763, {s01} 8895 | {s09} 9143,
# {s13} 12748, {s04} 12826, {s00} 12958, {s08} 13206.
SLOT_RANGES = ((0, 4600), (4601, 9000), (9001, 16383))


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections (Linux's default: 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bus_port_pair() -> int:
    """A free port whose cluster bus port (+10000) is free too, both below the ephemeral
    range: a port picked in it was taken by an outgoing connection of the suite between
    this check and redis-server's bind, once in a full run ("bind: Address already in use")."""
    high = max(10000, _ephemeral_low() - 10001)
    for _ in range(200):
        port = random.randint(min(10000, high), high)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
                return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    def __init__(self, directory: Path, *, node_timeout_ms: int = 2000, aof: bool = False,
                 tls: TlsFiles | None = None) -> None:
        self.node_timeout_ms = node_timeout_ms
        extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", str(node_timeout_ms),
                 "--cluster-require-full-coverage", "no", "--repl-diskless-sync-delay", "0"]
        self.nodes = [RedisServer(directory / f"node{i}", aof=aof, extra=extra)
                      for i in range(2 * len(SLOT_RANGES))]
        self.tls_ports: dict[int, int] = {}  # plain port -> TLS port (tls: clients, bus, replication)
        for node in self.nodes:  # the cluster bus listens on port + 10000
            node.port = _bus_port_pair()
            node.url = f"redis://127.0.0.1:{node.port}/0"
            if tls is not None:  # the plain port stays, for the helpers here; TLS clients see
                self.tls_ports[node.port] = free_port()  # the TLS ports in the slot map
                node.extra = [*node.extra, "--tls-port", str(self.tls_ports[node.port]),
                              *tls.server_args(), "--tls-cluster", "yes",
                              "--tls-replication", "yes",  # else the bus is at TLS port + 10000
                              "--cluster-port", str(node.port + 10000)]
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        if tls is not None:
            self.url = "rediss+cluster://" + ",".join(
                f"127.0.0.1:{self.tls_ports[n.port]}" for n in self.nodes)
        self._ids: dict[int, str] = {}

    def _client(self, server: RedisServer) -> redis.Redis:
        return redis.Redis(port=server.port, socket_timeout=2, socket_connect_timeout=2,
                           decode_responses=True)

    def _call(self, server: RedisServer, *args: object) -> object:
        client = self._client(server)
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    def start(self, timeout: float = 30.0) -> RedisCluster:
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()  # no redis-server left behind by a start that failed half-way
            raise

    def _start(self, timeout: float) -> RedisCluster:
        for epoch, node in enumerate(self.nodes, start=1):
            node.start()
            self._ids[node.port] = str(self._call(node, "CLUSTER", "MYID"))
            # A config epoch of its own for each node, before it meets the others (as
            # `redis-cli --cluster create` does). Left at 0, the nodes settle their
            # collisions only while they are primaries: a node made a replica before its
            # own was settled can keep a primary's epoch, and its TAKEOVER then claims the
            # slots at an epoch no higher than the dead primary's, which the others refuse
            # for good (seen in a failover test: promoted in its own view only).
            self._call(node, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
        primaries, replicas = self.nodes[:len(SLOT_RANGES)], self.nodes[len(SLOT_RANGES):]
        for node in self.nodes[1:]:
            self._call(node, "CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port)
        for node, (low, high) in zip(primaries, SLOT_RANGES, strict=True):
            self._call(node, "CLUSTER", "ADDSLOTSRANGE", low, high)
        self._until(lambda: all(self._knows_all(n) for n in self.nodes), timeout, "meet")
        for replica, primary in zip(replicas, primaries, strict=True):
            self._call(replica, "CLUSTER", "REPLICATE", self._ids[primary.port])
        self._until(self._healthy, timeout, "cluster_state:ok with every replica in sync")
        return self

    def _knows_all(self, node: RedisServer) -> bool:
        lines = str(self._call(node, "CLUSTER", "NODES")).splitlines()
        return len(lines) == len(self.nodes) and "handshake" not in "".join(lines)

    def _healthy(self) -> bool:
        for node in self.nodes:
            if node.proc is None:
                continue
            info = str(self._call(node, "CLUSTER", "INFO"))
            if "cluster_state:ok" not in info:
                return False
        primaries = self.primaries()  # every node's view: a replica of each primary, in sync
        return len(primaries) == len(SLOT_RANGES) and all(
            self._replica_synced(p, self.replica_of(p)) for p in primaries)

    def _replica_synced(self, primary: RedisServer, replica: RedisServer | None) -> bool:
        """The replica's link is up, and its primary counts it online: WAIT only counts
        online replicas, and a primary marks one online at its first ACK after the sync
        (up to a second after the replica says its link is up)."""
        if replica is None or replica.proc is None:
            return False
        if self._client(replica).info("replication").get("master_link_status") != "up":
            return False
        seen = self._client(primary).info("replication")
        return any(name.startswith("slave") and isinstance(value, dict)
                   and value.get("state") == "online" for name, value in seen.items())

    def _until(self, check: object, timeout: float, what: str) -> None:
        assert callable(check)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if check():
                    return
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, LookupError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis cluster did not reach {what} in {timeout:g}s")
            time.sleep(0.05)

    def _by_id(self) -> dict[str, RedisServer]:
        return {self._ids[n.port]: n for n in self.nodes}

    def _topology(self) -> list[list[str]]:
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                return [line.split() for line in
                        str(self._call(node, "CLUSTER", "NODES")).splitlines()]
            except (redis.ConnectionError, redis.TimeoutError):
                continue
        raise RuntimeError("no cluster node answers")

    def primaries(self) -> list[RedisServer]:
        by_id = self._by_id()
        return [by_id[f[0]] for f in self._topology()
                if "master" in f[2] and "fail" not in f[2] and len(f) > 8]

    def primary_of(self, slot: int) -> RedisServer:
        by_id = self._by_id()
        for f in self._topology():
            if "master" not in f[2] or "fail" in f[2]:
                continue
            for part in f[8:]:
                low, _, high = part.partition("-")
                if int(low) <= slot <= int(high or low):
                    return by_id[f[0]]
        raise LookupError(f"no primary serves slot {slot}")

    def replica_of(self, primary: RedisServer) -> RedisServer | None:
        by_id = self._by_id()
        for f in self._topology():
            if "slave" in f[2] and f[3] == self._ids[primary.port]:
                return by_id[f[0]]
        return None

    def wait_for_failover(self, slot: int, old: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Until a live node other than `old` serves `slot` (its replica was promoted)."""
        found: list[RedisServer] = []

        def promoted() -> bool:
            node = self.primary_of(slot)
            if node is old or node.proc is None:
                return False
            info = str(self._call(node, "CLUSTER", "INFO"))
            found[:] = [node]
            return "cluster_state:ok" in info

        self._until(promoted, timeout, f"a new primary for slot {slot}")
        return found[0]

    def take_over(self, replica: RedisServer, slot: int, old: RedisServer) -> RedisServer:
        """`CLUSTER FAILOVER TAKEOVER` on `replica`, until a live node other than `old` serves
        `slot`. Sent again when a takeover does not show within 10 s (one did not show in
        30 s, once, in a full run on a busy machine; the tests are of the meter after a
        promotion, not of Redis's takeover); the error then carries every live node's view."""
        failed: RuntimeError | None = None
        for _ in range(3):
            with contextlib.suppress(redis.ResponseError):  # a primary already: a takeover
                self._call(replica, "CLUSTER", "FAILOVER", "TAKEOVER")  # before took effect
            try:
                return self.wait_for_failover(slot, old, timeout=10.0)
            except RuntimeError as exc:
                failed = exc
        views = {}
        for node in self.nodes:
            if node.proc is not None:
                try:
                    views[node.port] = str(self._call(node, "CLUSTER", "NODES"))
                except redis.RedisError as exc:
                    views[node.port] = repr(exc)
        raise RuntimeError(f"{failed}; each live node's CLUSTER NODES: {views}")

    def flush(self) -> None:
        """Every key gone (FLUSHALL on each primary): a test of gateways starts from nothing,
        as the gateways' shard keys (outbox, holds, sync mark) have no per-test prefix."""
        for node in self.primaries():
            self._call(node, "FLUSHALL")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def raw_client(url: str) -> Any:
    """A plain redis-py asyncio client (bytes replies) for a single-node or cluster URL."""
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import ClusterNode
    from redis.asyncio.cluster import RedisCluster as AsyncCluster

    from gateway.storage.redis import cluster_url

    cluster = cluster_url(url)
    if cluster is None:
        return aioredis.Redis.from_url(url)
    return AsyncCluster(startup_nodes=[ClusterNode(h, p) for h, p in cluster.seeds])


def sync_client(url: str) -> Any:
    """A plain synchronous redis-py client (str replies) for a single-node or cluster URL."""
    from redis.cluster import ClusterNode as SyncNode
    from redis.cluster import RedisCluster as SyncCluster

    from gateway.storage.redis import cluster_url

    cluster = cluster_url(url)
    if cluster is None:
        return redis.Redis.from_url(url, socket_timeout=5, decode_responses=True)
    return SyncCluster(startup_nodes=[SyncNode(h, p) for h, p in cluster.seeds],
                       socket_timeout=5, decode_responses=True)
