"""The Redis meter over TLS (`rediss://`, `rediss+cluster://`): its scripts go over the same
pipelined client as over TCP (with redis-py's SSL context), so `WAIT` after a settle works
there too. A throwaway CA and server certificate are made at test time (tests/tls_certs.py);
the client trusts the CA through SSL_CERT_FILE, as a deployment would its own CA."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from gateway.clock import ManualClock
from gateway.metering.redis import RedisMeter
from gateway.metering.redis_keys import shard_of
from gateway.metering.resp import RespClient
from gateway.metering.resp_cluster import ClusterScripts
from gateway.storage.redis import connect
from tests.harness import free_port
from tests.meter_contract import HOLD_TTL, START, allotment_for, catalog, reply
from tests.redis_backend import IDLE, WAIT_WINDOW, redis_backend, settle_while_paused
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer
from tests.tls_certs import TlsFiles, make_tls


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TlsFiles:
    files = make_tls(tmp_path / "tls")
    monkeypatch.setenv("SSL_CERT_FILE", str(files.ca))  # the client trusts the test CA
    return files


def _started(server: RedisServer) -> RedisServer:
    try:
        return server.start()
    except RuntimeError:  # pragma: no cover - depends on how redis-server was built
        log = (server.dir / "redis.log").read_text(errors="replace")
        if "tls" in log.lower():
            pytest.skip("this redis-server is built without TLS (BUILD_TLS=yes)")
        raise


def _until_replicated(primary: int) -> None:
    client = redis.Redis(port=primary, socket_timeout=5)
    try:
        deadline = time.monotonic() + 30
        while "online" not in str(client.info("replication").get("slave0", "")):
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.05)
    finally:
        client.close()


async def _wait_counted(meter: RedisMeter, ws: str, replica: RedisServer) -> None:
    """A settle the replica confirms, then one it cannot (paused): counted unconfirmed."""
    hold = await meter.reserve(ws, 1, "confirmed")
    await meter.settle(hold, reply(hold))
    assert meter.unconfirmed == 0
    await settle_while_paused(meter, ws, replica, 2, "unconfirmed")
    assert (await meter.balance(ws)).available == 7


@pytest.fixture
def tls_node(tmp_path: Path, tls: TlsFiles) -> Iterator[tuple[str, RedisServer]]:
    """A TLS primary (`rediss://`) with a replica."""
    port = free_port()
    primary = _started(RedisServer(tmp_path / "primary",
                                   extra=["--tls-port", str(port), *tls.server_args()]))
    replica = RedisServer(tmp_path / "replica", extra=["--replicaof", "127.0.0.1",
                                                        str(primary.port)]).start()
    try:
        _until_replicated(primary.port)
        yield f"rediss://127.0.0.1:{port}/0", replica
    finally:
        replica.stop()
        primary.stop()


async def test_wait_after_a_settle_over_tls(tls_node: tuple[str, RedisServer],
                                            tmp_path: Path) -> None:
    url, replica = tls_node
    clock = ManualClock(START)
    backend = redis_backend("tls", f"sqlite:///{tmp_path / 'meter.db'}", url, clock)
    meter = RedisMeter(connect(url, timeout=2.0), backend.engine, clock,
                       allotment_for(catalog()), hold_ttl=HOLD_TTL, sync_interval=IDLE,
                       sweep_interval=IDLE, breaker=0.1, wait_replicas=1, wait_timeout=WAIT_WINDOW)
    try:
        assert isinstance(meter._fast, RespClient)  # the pipelined client, over TLS
        await _wait_counted(meter, await backend.workspace(allotment=10), replica)
    finally:
        await meter.close()
        await backend.close()


async def test_wait_after_a_settle_on_a_tls_cluster(tls: TlsFiles, tmp_path: Path) -> None:
    cluster = RedisCluster(tmp_path / "cluster", tls=tls)
    try:
        cluster.start()
    except RuntimeError:
        cluster.stop()
        raise
    clock = ManualClock(START)
    backend = redis_backend("tls-cluster", f"sqlite:///{tmp_path / 'meter.db'}", cluster.url,
                            clock)
    meter = RedisMeter(connect(cluster.url, timeout=2.0), backend.engine, clock,
                       allotment_for(catalog()), hold_ttl=HOLD_TTL, sync_interval=IDLE,
                       sweep_interval=IDLE, breaker=0.1, wait_replicas=1, wait_timeout=WAIT_WINDOW)
    try:
        assert cluster.url.startswith("rediss+cluster://")
        assert isinstance(meter._fast, ClusterScripts)
        ws = await backend.workspace(allotment=10)
        replica = cluster.replica_of(cluster.primary_of(key_slot(
            f"{{s{shard_of(ws):02d}}}".encode())))
        assert replica is not None
        await _wait_counted(meter, ws, replica)
    finally:
        await meter.close()
        await backend.close()
        cluster.stop()
