"""Redis Cluster (issue 17): the URL form, and what only the cluster does.

The Meter contract suite (tests/test_meter_contract.py, backend `redis-cluster-sqlite`),
the two-gateway no-overdraft test and the Redis idempotency tests also run on the
session's cluster (tests/redis_cluster.py: three primaries with a replica each).
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.crc import key_slot

from gateway.clock import ManualClock
from gateway.errors import ServiceUnavailable
from gateway.metering.cluster_url import ClusterUrl, cluster_url
from gateway.metering.redis import RedisMeter
from gateway.metering.redis_keys import SHARDS, Layout, shard_of
from gateway.settings import Settings, SettingsError
from gateway.storage.redis import connect
from tests.conftest import GatewayFactory, service_missing
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway
from tests.lifecycle_support import wait_for
from tests.meter_contract import HOLD_TTL, START, allotment_for, catalog, reply
from tests.redis_backend import IDLE, WAIT_WINDOW, redis_backend, settle_while_paused
from tests.redis_cluster import RedisCluster, sync_client


def test_the_cluster_url_names_its_seeds_credentials_and_tls() -> None:
    assert cluster_url("redis://127.0.0.1:6379/0") is None
    assert cluster_url("redis+cluster://a:7000,b:7001,c") == ClusterUrl(
        (("a", 7000), ("b", 7001), ("c", 6379)), None, None, False)
    assert cluster_url("rediss+cluster://user:p%40ss:w@h1:7000,h2:7001/0") == ClusterUrl(
        (("h1", 7000), ("h2", 7001)), "user", "p@ss:w", True)
    assert cluster_url("redis+cluster://[::1]:7000") == ClusterUrl(
        (("::1", 7000),), None, None, False)


@pytest.mark.parametrize(("url", "message"), [
    ("redis+cluster://a:7000,:7001", "has no host"),
    ("redis+cluster://a:notaport", "bad port"),
    ("redis+cluster://a:7000/3", "only database 0"),
])
def test_a_malformed_cluster_url_is_refused_at_startup(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cluster_url(url)
    with pytest.raises(SettingsError, match="BOOKBAG_REDIS_URL: .*" + message):
        Settings.from_env({"BOOKBAG_REDIS_URL": url})


# --- a shard down -----------------------------------------------------------------------

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
LOCAL = {**BODY, "model": "bookbag-local"}


def chat(gw: RunningGateway, key: str, body: dict[str, object]) -> httpx.Response:
    with gw.client(key) as c:
        return c.post("/v1/chat/completions", json=body)


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A cluster of this test's own (it kills nodes); asked for before `make_gateway`, so
    it outlives the gateways."""
    if shutil.which("redis-server") is None:
        service_missing("redis-server (apt-get install redis-server)")
    cluster = RedisCluster(tmp_path / "cluster").start()
    yield cluster
    cluster.stop()


def test_a_shard_down_stops_only_its_own_workspaces_metered_requests(
    own_cluster: RedisCluster, make_gateway: GatewayFactory, provider: FakeProvider,
) -> None:
    gw = make_gateway(BOOKBAG_REDIS_URL=own_cluster.url)
    assert type(gw.gw.meter).__name__ == "RedisMeter"
    workspaces = [gw.workspace("free") for _ in range(40)]
    down_slot = key_slot(f"{{s{shard_of(workspaces[0][0]):02d}}}".encode())
    primary = own_cluster.primary_of(down_slot)
    replica = own_cluster.replica_of(primary)
    on_down = [w for w in workspaces
               if own_cluster.primary_of(key_slot(f"{{s{shard_of(w[0]):02d}}}".encode()))
               is primary]
    elsewhere = [w for w in workspaces if w not in on_down]
    assert on_down and elsewhere
    for _, key in (on_down[0], elsewhere[0]):  # both served (and seeded) before
        assert chat(gw, key, BODY).status_code == 200

    assert replica is not None
    replica.kill()  # the whole shard: no replica to promote
    primary.kill()

    for _, key in on_down[:3]:
        r = chat(gw, key, BODY)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "service_unavailable"
        assert chat(gw, key, LOCAL).status_code == 200  # unmetered keeps working
    for _, key in elsewhere[:3]:
        r = chat(gw, key, BODY)
        assert r.status_code == 200, r.text
        assert chat(gw, key, LOCAL).status_code == 200
    # Top-ups written straight to SQL (the CLI) reach the other shards' workspaces, even
    # when a grant of a workspace on the dead shard comes first.
    for ws, _ in (on_down[0], elsewhere[0]):
        assert gw.accounts.apply(gw.accounts.topup_entry(ws, 50, ref=f"cli-{ws}"))
    with pytest.raises(ServiceUnavailable):
        gw.run(gw.gw.meter.sync())
    # What is promised is that it arrives (within the sync interval), not that this one call
    # applies it: the gateway's own sync loop runs beside it. Twice in CI runs it did not
    # arrive at all (cause not pinned down; syncs now run one round at a time): a failure
    # says where the grant stands.
    try:
        wait_for(lambda: gw.balance(elsewhere[0][1])["topups_remaining"] == 50,
                 what="the other shard's top-up")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {grant_state(gw, own_cluster, elsewhere[0][0])}") from exc
    # Their charges still reach SQL: the outbox consumer goes on with the other shards.
    assert len(gw.wait_ledger(elsewhere[0][0], 3, timeout=15)) == 3  # 2 metered + 1 local
    charged_down = [row for row in gw.ledger(on_down[0][0]) if row["billing_mode"] == "metered"]
    assert len(charged_down) <= 1  # the one before the shard went down, nothing since


def grant_state(gw: RunningGateway, cluster: RedisCluster, workspace_id: str) -> str:
    """Where the CLI's top-up of `workspace_id` stands: SQL, the grant feed, Redis."""
    meter: Any = gw.gw.meter
    row = gw.ledger(workspace_id, kind="topup")[0]
    request_id, seq = row["request_id"], row["seq"]
    with gw.engine.connect() as conn:
        newest = conn.exec_driver_sql("SELECT MAX(seq) FROM ledger").scalar_one()
    shard = shard_of(workspace_id)
    feed = meter._feed
    direct = sync_client(cluster.url)
    try:
        layout = meter.layout
        redis_side = {"applied": direct.sismember(layout.applied(workspace_id), request_id),
                      "bal": direct.hgetall(layout.bal(workspace_id)),
                      "mark": direct.get(layout.shard(shard).sync)}
    except Exception as exc:  # a diagnostic: say what could not be read
        redis_side = {"error": repr(exc)}
    finally:
        direct.close()
    return (f"grant {request_id} seq={seq} newest={newest} shard={shard} "
            f"low={None if feed is None else feed.lows.get(shard)} "
            f"seen={None if feed is None else request_id in feed._seen} redis={redis_side}")


async def test_with_a_shard_down_the_others_are_swept_counted_and_asked(
    own_cluster: RedisCluster, tmp_path: Path,
) -> None:
    """The background work is shard by shard too: with one shard (primary and replica) gone,
    the sweep still voids the other shards' expired holds (and reports the failure), the
    holds gauge counts the shards that answer, and crash recovery's `charged` asks only the
    workspace's own shard."""
    clock = ManualClock(START)
    backend = redis_backend("cluster-shard-down", f"sqlite:///{tmp_path / 'meter.db'}",
                            own_cluster.url, clock)
    try:
        meter = await backend.meter()
        assert isinstance(meter, RedisMeter)
        workspaces = [await backend.workspace(allotment=10) for _ in range(12)]
        primaries = {ws: own_cluster.primary_of(key_slot(f"{{s{shard_of(ws):02d}}}".encode()))
                     for ws in workspaces}
        down = primaries[workspaces[0]]
        on_down = [ws for ws in workspaces if primaries[ws] is down]
        elsewhere = [ws for ws in workspaces if primaries[ws] is not down]
        assert elsewhere
        for ws in workspaces:
            await meter.reserve(ws, 2, f"hold-{ws}")
        assert await meter.count_holds() == len(workspaces)

        replica = own_cluster.replica_of(down)
        assert replica is not None
        replica.kill()
        down.kill()

        assert await meter.count_holds() == len(elsewhere)  # the shards that answer
        assert not await meter.charged("never-seen", elsewhere[0])
        with pytest.raises(ServiceUnavailable):
            await meter.charged("never-seen", on_down[0])
        clock.advance(HOLD_TTL + 1)
        with pytest.raises(ServiceUnavailable):  # reported, after the other shards were swept
            await meter.sweep()
        for ws in elsewhere:
            balance = await meter.balance(ws)
            assert (balance.reserved, balance.available) == (0, 10), ws
        assert await meter.count_holds() == 0
    finally:
        await backend.close()


def sync_rig(cluster: RedisCluster, tmp_path: Path, name: str) -> tuple[Any, RedisMeter, Layout]:
    """A meter of the grant sync's tests: its own key prefix, no background loops, no lag
    (each `sync()` call moves the marks as far as it read)."""
    clock = ManualClock(START)
    backend = redis_backend(name, f"sqlite:///{tmp_path / 'meter.db'}", cluster.url, clock)
    layout = Layout(prefix="t" + uuid.uuid4().hex[:12])
    meter = RedisMeter(connect(cluster.url, timeout=2.0), backend.engine, clock,
                       allotment_for(catalog()), hold_ttl=HOLD_TTL, sync_interval=IDLE,
                       sweep_interval=IDLE, breaker=0.1, layout=layout, sync_lag=0.0)
    return backend, meter, layout


async def test_with_a_shard_down_the_other_shards_grants_arrive_and_their_marks_move(
    own_cluster: RedisCluster, tmp_path: Path,
) -> None:
    """The grant sync's watermark is per shard tag, on that shard: with one shard (primary
    and replica) gone, grants written straight to SQL (the CLI) still reach the other
    shards' workspaces and those shards' watermarks move; the dead shard's grants wait. A
    shard without a mark of its own starts from the old untagged `bk:sync:seq` (upgrade)."""
    backend, meter, layout = sync_rig(own_cluster, tmp_path, "cluster-sync")
    direct = sync_client(own_cluster.url)

    def newest() -> int:
        with backend.engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT MAX(seq) FROM ledger").scalar_one())

    def marks(shards: list[int]) -> set[int]:
        return {int(direct.get(layout.shard(i).sync) or 0) for i in shards}

    try:
        workspaces = [await backend.workspace(allotment=10) for _ in range(12)]
        for ws in workspaces:
            await meter.balance(ws)  # seeded
        direct.set(layout.legacy_sync_mark, newest())  # what an older gateway left
        await meter.sync()
        assert marks(list(range(SHARDS))) == {newest()}  # every shard took over the old mark

        tag_primary = {i: own_cluster.primary_of(key_slot(f"{{s{i:02d}}}".encode()))
                       for i in range(SHARDS)}
        down = tag_primary[shard_of(workspaces[0])]
        on_down = [ws for ws in workspaces if tag_primary[shard_of(ws)] is down]
        elsewhere = [ws for ws in workspaces if tag_primary[shard_of(ws)] is not down]
        live_shards = [i for i in range(SHARDS) if tag_primary[i] is not down]
        assert elsewhere
        replica = own_cluster.replica_of(down)
        assert replica is not None
        replica.kill()
        down.kill()

        for round_ in range(2):  # the dead shard's grant first: it does not hold up the others
            for ws in (on_down[0], *elsewhere):
                assert backend.accounts.apply(
                    backend.accounts.topup_entry(ws, 50, ref=f"cli-{round_}-{ws}"))
            with pytest.raises(ServiceUnavailable):
                await meter.sync()
            for ws in elsewhere:
                assert (await meter.balance(ws)).available == 10 + 50 * (round_ + 1), ws
            assert marks(live_shards) == {newest()}  # the live shards' marks moved
    finally:
        direct.close()
        await meter.close()
        await backend.close()


async def test_a_gateway_that_starts_with_the_old_marks_shard_down_still_syncs_the_others(
    own_cluster: RedisCluster, tmp_path: Path,
) -> None:
    """A shard without a mark of its own starts from the old untagged mark (the upgrade),
    which lives on one shard. With that shard down when a gateway's first sync runs, the
    other shards' grants must still arrive: they start from the ledger's beginning instead
    (each grant is applied once all the same, by its request id)."""
    backend, meter, layout = sync_rig(own_cluster, tmp_path, "cluster-legacy")
    try:
        down = own_cluster.primary_of(key_slot(layout.legacy_sync_mark.encode()))
        tag_primary = {i: own_cluster.primary_of(key_slot(f"{{s{i:02d}}}".encode()))
                       for i in range(SHARDS)}
        workspaces = [await backend.workspace(allotment=10) for _ in range(12)]
        elsewhere = [ws for ws in workspaces if tag_primary[shard_of(ws)] is not down]
        assert elsewhere
        for ws in elsewhere:
            await meter.balance(ws)  # seeded; no sync has run yet
        replica = own_cluster.replica_of(down)
        assert replica is not None
        replica.kill()
        down.kill()
        for ws in elsewhere:
            assert backend.accounts.apply(backend.accounts.topup_entry(ws, 50, ref=f"cli-{ws}"))
        with pytest.raises(ServiceUnavailable):
            await meter.sync()  # the dead shard's own marks cannot be read: reported
        for ws in elsewhere:
            assert (await meter.balance(ws)).available == 60, ws
        with pytest.raises(ServiceUnavailable):
            await meter.sync()  # a second round applies nothing twice
        for ws in elsewhere:
            assert (await meter.balance(ws)).available == 60, ws
    finally:
        await meter.close()
        await backend.close()


# --- failover: a new epoch ----------------------------------------------------------------


async def test_a_hold_lost_in_a_failover_is_charged_at_settle(
    own_cluster: RedisCluster, tmp_path: Path,
) -> None:
    """A hold acknowledged by a primary that died before replicating it: the promoted
    replica lacks it. Its primary's replication id changed (a new epoch), so the settle
    charges it (the reply was delivered) instead of taking it as already resolved."""
    backend = redis_backend("cluster-failover", f"sqlite:///{tmp_path / 'meter.db'}",
                            own_cluster.url, ManualClock(START))
    try:
        meter = await backend.meter()
        ws = await backend.workspace(allotment=10)
        await meter.balance(ws)  # seeded
        slot = key_slot(f"{{s{shard_of(ws):02d}}}".encode())
        primary = own_cluster.primary_of(slot)
        replica = own_cluster.replica_of(primary)
        assert replica is not None
        direct = redis.Redis(port=primary.port, socket_timeout=5)
        assert direct.execute_command("WAIT", 1, 5000) == 1  # the seed is on the replica
        replica.pause()
        direct.execute_command("CLIENT", "KILL", "TYPE", "replica")  # nothing more replicates
        direct.close()

        hold = await meter.reserve(ws, 3, "lost-in-failover")
        primary.kill()
        replica.resume()
        assert own_cluster.take_over(replica, slot, primary) is replica

        await meter.settle(hold, reply(hold))
        await backend.flush()
        with backend.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT credits FROM ledger WHERE request_id = 'lost-in-failover'").fetchall()
        assert [r[0] for r in rows] == [3]
        assert (await meter.balance(ws)).available == 7
    finally:
        await backend.close()


async def test_after_a_failover_the_shard_is_rebuilt_from_sql(
    own_cluster: RedisCluster, tmp_path: Path,
) -> None:
    """kill -9 of a primary with a settle and a top-up it never replicated, after the
    settle's entry reached SQL through its outbox: the promoted replica still has the hold
    and lacks the top-up. The shard's new epoch makes its outbox consumer rebuild the
    balance from SQL: the hold SQL already charged is dropped (the sweep cannot give its
    credits back), the top-up is in, and nothing is charged twice."""
    clock = ManualClock(START)
    backend = redis_backend("cluster-rebuild", f"sqlite:///{tmp_path / 'meter.db'}",
                            own_cluster.url, clock)
    try:
        meter = await backend.meter()
        assert isinstance(meter, RedisMeter) and meter.outbox is not None
        ws = await backend.workspace(allotment=10)
        await meter.balance(ws)  # seeded
        slot = key_slot(f"{{s{shard_of(ws):02d}}}".encode())
        primary = own_cluster.primary_of(slot)
        replica = own_cluster.replica_of(primary)
        assert replica is not None
        hold = await meter.reserve(ws, 3, "settled-then-lost")
        direct = redis.Redis(port=primary.port, socket_timeout=5)
        deadline = time.monotonic() + 30
        while direct.get(meter.layout.of(ws).rebuilt) is None:  # the consumer's first epoch
            assert time.monotonic() < deadline, "no epoch recorded"
            await asyncio.sleep(0.05)
        direct.set(f"probe:{{s{shard_of(ws):02d}}}", 1)  # WAIT counts this connection's writes
        assert direct.execute_command("WAIT", 1, 5000) == 1  # epoch, seed, hold replicated
        replica.pause()
        direct.execute_command("CLIENT", "KILL", "TYPE", "replica")  # nothing more replicates
        direct.close()
        await meter.settle(hold, reply(hold))  # acknowledged by the primary alone
        assert await meter.grant(backend.accounts.topup_entry(ws, 50, ref="lost-topup"))
        await backend.flush()  # the settle's entry is in SQL, read from the old primary

        rebuilt = meter.outbox.rebuilder.rebuilt
        primary.kill()
        replica.resume()
        assert own_cluster.take_over(replica, slot, primary) is replica
        deadline = time.monotonic() + 30
        while meter.outbox.rebuilder.rebuilt == rebuilt:  # the consumer saw the new epoch
            assert time.monotonic() < deadline, "the shard was not rebuilt"
            await asyncio.sleep(0.1)

        balance = await meter.balance(ws)
        assert (balance.available, balance.reserved) == (57, 0)
        clock.advance(HOLD_TTL + 1)
        await meter.sweep()  # nothing left to void
        await meter.sync()  # the top-up is applied once
        assert (await meter.balance(ws)).available == 57
        await backend.flush()
        with backend.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT credits FROM ledger WHERE request_id = 'settled-then-lost'").fetchall()
            sql_balance = conn.exec_driver_sql(
                "SELECT allotment_remaining + topups_remaining FROM balances "
                "WHERE workspace_id = ?", (ws,)).scalar_one()
        assert [r[0] for r in rows] == [3]
        assert sql_balance == 57  # Redis equals SQL's truth
    finally:
        await backend.close()


# --- WAIT: a settle confirmed by a replica ------------------------------------------------


async def test_a_settle_no_replica_confirms_in_time_is_counted_unconfirmed(
    own_cluster: RedisCluster, tmp_path: Path,
) -> None:
    """BOOKBAG_REDIS_WAIT_REPLICAS=1: WAIT goes in the settle's pipeline on the per-node
    connection; with the replica paused it times out and the charge is "unconfirmed"
    (counted and logged), and the settle itself stands."""
    clock = ManualClock(START)
    backend = redis_backend("cluster-wait", f"sqlite:///{tmp_path / 'meter.db'}",
                            own_cluster.url, clock)
    meter = RedisMeter(connect(own_cluster.url, timeout=2.0), backend.engine, clock,
                       allotment_for(catalog()), hold_ttl=HOLD_TTL, sync_interval=IDLE,
                       sweep_interval=IDLE, breaker=2.0, wait_replicas=1, wait_timeout=WAIT_WINDOW)
    try:
        ws = await backend.workspace(allotment=10)
        hold = await meter.reserve(ws, 1, "confirmed")
        await meter.settle(hold, reply(hold))
        assert meter.unconfirmed == 0

        replica = own_cluster.replica_of(
            own_cluster.primary_of(key_slot(f"{{s{shard_of(ws):02d}}}".encode())))
        assert replica is not None
        await settle_while_paused(meter, ws, replica, 2, "unconfirmed")
        hold = await meter.reserve(ws, 3, "confirmed-again")
        await meter.settle(hold, reply(hold))
        assert meter.unconfirmed == 1
        assert (await meter.balance(ws)).available == 4  # every settle stood
    finally:
        await meter.close()
        await backend.close()


async def test_wait_follows_an_ask_redirect_during_a_slot_migration(
    own_cluster: RedisCluster, tmp_path: Path,
) -> None:
    """A workspace's slot migrating (CLUSTER SETSLOT ... MIGRATING / IMPORTING, its keys
    already moved): the scripts get ASK, and a settle's WAIT goes with ASKING and the
    script to the importing node, so it counts that node's replica: confirmed while the
    replica runs, "unconfirmed" once it is paused."""
    clock = ManualClock(START)
    backend = redis_backend("cluster-ask", f"sqlite:///{tmp_path / 'meter.db'}",
                            own_cluster.url, clock)
    layout = Layout(prefix="t" + uuid.uuid4().hex[:12])
    meter = RedisMeter(connect(own_cluster.url, timeout=2.0), backend.engine, clock,
                       allotment_for(catalog()), hold_ttl=HOLD_TTL, sync_interval=IDLE,
                       sweep_interval=IDLE, breaker=0.1, layout=layout, wait_replicas=1,
                       wait_timeout=WAIT_WINDOW)
    try:
        ws = await backend.workspace(allotment=10)
        hold = await meter.reserve(ws, 1, "before-migration")  # seeded on the source
        await meter.settle(hold, reply(hold))
        # A hold in flight: the shard's holds and expiry keys exist (an empty hash is no key,
        # and a script whose keys are partly absent on the importing node gets TRYAGAIN).
        open_hold = await meter.reserve(ws, 1, "open")
        slot = key_slot(f"{{s{shard_of(ws):02d}}}".encode())
        source = own_cluster.primary_of(slot)
        target = next(p for p in own_cluster.primaries() if p is not source)
        src = redis.Redis(port=source.port, socket_timeout=5, decode_responses=True)
        dst = redis.Redis(port=target.port, socket_timeout=5, decode_responses=True)
        src_id, dst_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command(
            "CLUSTER", "MYID")
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        assert keys
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        assert src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000) == []
        src.close()

        hold = await meter.reserve(ws, 2, "asked")  # ASK: run on the importing node
        await meter.settle(hold, reply(hold))
        assert meter.unconfirmed == 0  # the importing node's replica confirmed it
        replica = own_cluster.replica_of(target)
        assert replica is not None
        await settle_while_paused(meter, ws, replica, 3, "asked-unconfirmed")
        pipe = dst.pipeline(transaction=False)  # read on the importing node itself
        pipe.execute_command("ASKING")  # ASKING lets the next command through
        pipe.hget(layout.bal(ws), "allot_rem")
        pipe.execute_command("ASKING")
        pipe.hlen(layout.of(ws).holds)
        assert pipe.execute()[1::2] == ["3", 1]  # 10 - 1 - 1 held - 2 - 3; the open hold
        dst.close()
        await meter.void(open_hold)
    finally:
        await meter.close()
        await backend.close()


def test_the_wait_timeout_must_be_below_the_redis_timeout() -> None:
    with pytest.raises(SettingsError, match="BOOKBAG_REDIS_WAIT_TIMEOUT"):
        Settings.from_env({"BOOKBAG_REDIS_URL": "redis://x", "BOOKBAG_REDIS_WAIT_REPLICAS": "1",
                           "BOOKBAG_REDIS_WAIT_TIMEOUT": "0.5", "BOOKBAG_REDIS_TIMEOUT": "0.5"})
    settings = Settings.from_env({"BOOKBAG_REDIS_WAIT_REPLICAS": "1"})
    assert (settings.redis_wait_replicas, settings.redis_wait_timeout) == (1, 0.05)
