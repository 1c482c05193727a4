"""Fault runs, bounded in time, on loopback: each ends with the history checker's figures.

  - the gateway SIGKILLed every few seconds under load (a `serve` subprocess,
    restarted each time; clients retry with their Idempotency-Keys)
  - Redis restarted with persistence (AOF, appendfsync always: nothing lost) and
    without (Redis lost its data: the overdraft is bounded by the holds in flight)
  - Redis paused (SIGSTOP): metered requests fail closed with 503, unmetered succeed
  - PostgreSQL stopped and restarted: metered fail closed, unmetered are spooled
    and reach the ledger once
  - the provider hanging, slow, cutting streams, failing: never charged
  - a TCP fault proxy in front of Redis, and of PostgreSQL: latency, blackhole, reset

The first workspace's key carries a spend cap in most runs (`key_cap`): the checker's
`cap_overdraft` is that key's ledger charges beyond its cap (0 unless the store lost data).

DESIGN invariants 1-4, 7, 8, 11. Fast variants run on every `pytest`; the
long ones (`@pytest.mark.slow`) with `make guarantees`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.crc import key_slot

from gateway.metering.redis_keys import SHARDS, Layout, shard_of
from tests.fake_provider import FakeProvider
from tests.guarantees.client import CHAIN, Mix, load, make_client, new_op, resolve, run_op
from tests.guarantees.deployment import Deployment, deployment
from tests.guarantees.history import FAIL, OK, History
from tests.guarantees.process import GatewayProcess
from tests.redis_cluster import RedisCluster, sync_client

# Each mix carries fallback traffic: chain-mini's replies settle trimmed holds (client.py).
METERED: Mix = [("gpt-4o-mini", 1), (CHAIN, 1)]
MIXED: Mix = [("gpt-4o-mini", 1), ("bookbag-local", 0), (CHAIN, 1)]


async def start(dep: Deployment) -> None:
    await asyncio.to_thread(dep.gateway.start)


def outcomes(history: History, cost: int | None = None) -> dict[str, int]:
    ops = [op for op in history.ops if cost is None or op.cost == cost]
    return {k: sum(1 for op in ops if op.outcome == k) for k in (OK, FAIL, "indeterminate")}


def fail_latency(history: History, status: int = 503) -> float | None:
    """The slowest answer with `status` (seconds): how quickly metered requests fail closed."""
    times = [a.ended - a.started for op in history.ops for a in op.attempts if a.status == status]
    return round(max(times), 3) if times else None


# --- the gateway SIGKILLed under load -------------------------------------------------------


async def sigkill_run(dep: Deployment, name: str, kills: int, every: float) -> None:
    """`kills` SIGKILLs, `every` seconds after the gateway came back from the previous one."""
    await start(dep)
    history = History()
    killed: list[float] = []

    async def killer() -> None:
        for _ in range(kills):
            await asyncio.sleep(every)
            await asyncio.to_thread(dep.gateway.kill)
            killed.append(time.monotonic())
            await asyncio.to_thread(dep.gateway.start)
        await asyncio.sleep(1)

    task = asyncio.ensure_future(killer())
    await asyncio.gather(task, load(dep.url, history, dep.accounts, METERED,
                                    until=time.monotonic(), busy=lambda: not task.done(),
                                    concurrency=6, deadline_slack=20))
    await resolve(dep.url, history, dep.accounts)
    recovery = [r for r in (history.first_ok_after(k) for k in killed) if r is not None]
    figures = await asyncio.to_thread(
        dep.check, name, history, kills=len(killed),
        recovery_s=round(sum(recovery) / len(recovery), 3) if recovery else None)
    figures.assert_clean()
    assert len(killed) == kills and figures.ok > 0
    assert figures.indeterminate == 0, [(op.id, [(a.status, a.code) for a in op.attempts][-5:])
                                        for op in history.ops if op.outcome != OK][:10]


def test_gateway_sigkilled_under_load(tmp_path: Path, pricing: Path) -> None:
    with deployment(tmp_path, pricing, meter="sql", allotment=10_000, key_cap=60) as dep:
        asyncio.run(sigkill_run(dep, "sigkill[sqlite-sql]", kills=2, every=2))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["embedded", "postgres", "redis"])
def test_gateway_sigkilled_under_load_long(tmp_path: Path, pricing: Path, kind: str) -> None:
    options = {"embedded": {}, "postgres": {"meter": "sql", "sql": "postgres"},
               "redis": {"meter": "redis", "sql": "postgres"}}[kind]
    with deployment(tmp_path, pricing, allotment=100_000, key_cap=200, **options) as dep:
        asyncio.run(sigkill_run(dep, f"sigkill[{kind}]", kills=5, every=3))


# --- Redis restarted -----------------------------------------------------------------------


def in_flight(url: str, workspaces: list[str], *, cluster: bool = False) -> tuple[int, int]:
    """(credits reserved by holds, outbox entries not yet in SQL) of these workspaces, on a
    single node or (cluster=True) a Redis Cluster."""
    client = sync_client(url) if cluster else redis.Redis.from_url(
        url, socket_timeout=5, decode_responses=True)
    layout = Layout()
    try:
        reserved = sum(int(client.hget(layout.bal(ws), "reserved") or 0) for ws in workspaces)
        backlog = sum(int(client.xlen(layout.shard(i).outbox)) for i in range(SHARDS))
    finally:
        client.close()
    return reserved, backlog


async def redis_restart_run(dep: Deployment, name: str, *, aof: bool, seconds: float,
                            kill_at: float = 2.0) -> None:
    assert dep.redis is not None
    await start(dep)
    history = History()
    until = time.monotonic() + seconds
    bound: dict[str, Any] = {}

    async def restart() -> None:
        await asyncio.sleep(kill_at)
        assert dep.redis is not None
        ws = [a.workspace_id for a in dep.accounts]
        bound["reserved"], bound["backlog"] = await asyncio.to_thread(in_flight, dep.redis.url, ws)
        await asyncio.to_thread(dep.redis.kill)  # SIGKILL: only what was fsynced survives
        bound["at"] = time.monotonic()
        await asyncio.to_thread(dep.redis.start)

    await asyncio.gather(restart(), load(dep.url, history, dep.accounts, MIXED, until=until,
                                         concurrency=6, deadline_slack=20))
    await resolve(dep.url, history, dep.accounts)
    figures = await asyncio.to_thread(
        dep.check, name, history, aof=aof, reserved_at_loss=bound["reserved"],
        backlog_at_loss=bound["backlog"], recovery_s=history.first_ok_after(bound["at"]))
    assert outcomes(history, cost=0)[FAIL] == 0, [
        (op.id, [(a.status, a.code) for a in op.attempts]) for op in history.ops
        if op.cost == 0 and op.outcome == FAIL]
    if aof:
        figures.assert_clean()
        return
    # Redis lost its data: holds, idempotency keys and outbox entries not yet in SQL. The
    # balances are reseeded from SQL; what can go wrong is bounded by what was in flight.
    assert figures.overdraft <= bound["reserved"], figures.line()
    # A cap's usage is reseeded from SQL's ledger: what it misses is the same holds and backlog.
    assert figures.cap_overdraft <= bound["reserved"] + bound["backlog"], figures.line()
    assert figures.lost <= bound["backlog"], figures.line()
    assert figures.leaked_holds == 0 and figures.charged_failures == 0, figures.violations


def test_redis_restarted_with_aof(tmp_path: Path, pricing: Path) -> None:
    with deployment(tmp_path, pricing, meter="redis", key_cap=40) as dep:
        asyncio.run(redis_restart_run(dep, "redis-restart[aof]", aof=True, seconds=6))


@pytest.mark.slow
def test_redis_restarted_without_persistence(tmp_path: Path, pricing: Path) -> None:
    """A balance that runs out after the loss, so that an overdraft would show."""
    with deployment(tmp_path, pricing, meter="redis", sql="postgres", redis_aof=False,
                    allotment=300, key_cap=200) as dep:
        asyncio.run(redis_restart_run(dep, "redis-restart-pg[none]", aof=False, seconds=15))


# --- Redis paused ----------------------------------------------------------------------------


async def redis_pause_run(dep: Deployment, name: str, pause: float, seconds: float) -> None:
    assert dep.redis is not None
    await start(dep)
    history = History()
    until = time.monotonic() + seconds
    marks: dict[str, float] = {}

    async def freeze() -> None:
        assert dep.redis is not None
        await asyncio.sleep((seconds - pause) / 2)
        dep.redis.pause()
        marks["paused"] = time.monotonic()
        await asyncio.sleep(pause)
        dep.redis.resume()
        marks["resumed"] = time.monotonic()

    await asyncio.gather(freeze(), load(dep.url, history, dep.accounts, MIXED, until=until,
                                        concurrency=6, deadline_slack=20, retry_failures=False))
    await resolve(dep.url, history, dep.accounts)
    during = [a for op in history.ops if op.cost for a in op.attempts
              if marks["paused"] <= a.started and a.ended <= marks["resumed"]]
    figures = await asyncio.to_thread(
        dep.check, name, history, pause_s=pause, metered=outcomes(history, 1),
        unmetered=outcomes(history, 0), metered_503_during_pause=sum(
            1 for a in during if a.status == 503),
        slowest_503_s=fail_latency(history), recovery_s=history.first_ok_after(marks["resumed"]))
    figures.assert_clean()
    assert outcomes(history, cost=0)[FAIL] == 0, "an unmetered request failed with Redis paused"
    assert figures.extra["metered_503_during_pause"] > 0, "the pause was never seen"


def test_redis_paused(tmp_path: Path, pricing: Path) -> None:
    with deployment(tmp_path, pricing, meter="redis") as dep:
        asyncio.run(redis_pause_run(dep, "redis-pause", pause=2, seconds=6))


@pytest.mark.slow
def test_redis_paused_long(tmp_path: Path, pricing: Path) -> None:
    with deployment(tmp_path, pricing, meter="redis", sql="postgres", key_cap=60) as dep:
        asyncio.run(redis_pause_run(dep, "redis-pause-pg", pause=6, seconds=16))


# --- PostgreSQL stopped and restarted -----------------------------------------------------------


def wait_spool_drained(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(url + "/readyz", timeout=5).json().get("spool_backlog"):
        assert time.monotonic() < deadline, "the spool was not replayed"
        time.sleep(0.2)


async def postgres_stop_run(dep: Deployment, name: str, down: float, seconds: float) -> None:
    assert dep.pg is not None
    await start(dep)
    history = History()
    until = time.monotonic() + seconds
    marks: dict[str, float] = {}

    async def outage() -> None:
        assert dep.pg is not None
        await asyncio.sleep((seconds - down) / 2)
        await asyncio.to_thread(dep.pg.stop)
        marks["stopped"] = time.monotonic()
        await asyncio.sleep(down)
        await asyncio.to_thread(dep.pg.start)
        marks["started"] = time.monotonic()

    await asyncio.gather(outage(), load(dep.url, history, dep.accounts, MIXED, until=until,
                                        concurrency=6, deadline_slack=20, retry_failures=False))
    await resolve(dep.url, history, dep.accounts)
    await asyncio.to_thread(wait_spool_drained, dep.url)
    figures = await asyncio.to_thread(
        dep.check, name, history, down_s=down, metered=outcomes(history, 1),
        unmetered=outcomes(history, 0), slowest_503_s=fail_latency(history),
        recovery_s=history.first_ok_after(marks["started"]))
    figures.assert_clean()
    assert outcomes(history, cost=0)[FAIL] == 0, "an unmetered request failed with SQL down"


def test_postgres_stopped_and_restarted(tmp_path: Path, pricing: Path) -> None:
    with deployment(tmp_path, pricing, meter="sql", sql="private-postgres", key_cap=30) as dep:
        asyncio.run(postgres_stop_run(dep, "postgres-stop[sql]", down=2, seconds=6))


@pytest.mark.slow
def test_postgres_stopped_under_the_redis_meter(tmp_path: Path, pricing: Path) -> None:
    with deployment(tmp_path, pricing, meter="redis", sql="private-postgres",
                    key_cap=60) as dep:
        asyncio.run(postgres_stop_run(dep, "postgres-stop[redis]", down=8, seconds=20))


# --- the provider failing ------------------------------------------------------------------------

PROVIDER_FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("hang", {}), ("drop", {}), ("cut", {"after": 2}), ("inband_error", {"after": 1}),
    ("slow_stream", {"interval": 1.5}), ("status", {"status": 500}),
    ("status", {"status": 503}), ("status", {"status": 429}), ("status", {"status": 400}),
]


CHAIN_FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("status", {"status": 500}), ("status", {"status": 429}), ("drop", {})]


async def provider_run(dep: Deployment, provider: FakeProvider, name: str) -> None:
    await start(dep)
    history = History()
    account = dep.accounts[0]
    async with make_client(dep.url) as client:
        for mode, opts in PROVIDER_FAULTS:
            for stream in (False, True):
                provider.fail(mode, times=1, path="/v1/chat/completions", **opts)
                op = new_op(history, account, "gpt-4o-mini", 1, stream=stream, prefix=mode)
                await run_op(client, op, account, deadline=time.monotonic() + 30)
            provider.reset()
        # The chain's primary failing before its first byte: the fallback answers, charged
        # at its own price out of the hold (the dearest member's), never both.
        fell_back = []
        for mode, opts in CHAIN_FAULTS:
            for stream in (False, True):
                provider.fail(mode, times=1, model=f"up-{CHAIN}", **opts)
                op = new_op(history, account, CHAIN, 1, stream=stream, prefix=f"chain-{mode}")
                fell_back.append(await run_op(client, op, account,
                                              deadline=time.monotonic() + 30))
            provider.reset()
        provider.delay = 0.5  # slow but within the timeouts: charged
        ok = [new_op(history, account, "gpt-4o-mini", 1, stream=s, prefix="slow")
              for s in (False, True)]
        await asyncio.gather(*(run_op(client, op, account, deadline=time.monotonic() + 30)
                               for op in ok))
        provider.delay = 0.0
    figures = await asyncio.to_thread(dep.check, name, history, faults=len(PROVIDER_FAULTS))
    figures.assert_clean()
    assert [op.outcome for op in ok] == [OK, OK], [(a.status, a.code) for op in ok
                                                   for a in op.attempts]
    failed = [op for op in history.ops if op.outcome == FAIL]
    assert len(failed) >= 2 * len(PROVIDER_FAULTS) - 2, [(o.id, o.attempts) for o in history.ops]
    assert [op.outcome for op in fell_back] == [OK] * len(fell_back), [
        (op.id, [(a.status, a.code) for a in op.attempts]) for op in fell_back]
    assert figures.charged >= 5 * len(fell_back)  # each at the fallback's price (the checker)


def test_provider_faults_are_never_charged(tmp_path: Path, pricing: Path,
                                          provider: FakeProvider) -> None:
    with deployment(tmp_path, pricing) as dep:
        asyncio.run(provider_run(dep, provider, "provider-faults[embedded]"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_provider_faults_long(tmp_path: Path, pricing: Path, provider: FakeProvider,
                              kind: str) -> None:
    options = {"postgres": {"meter": "sql", "sql": "postgres"},
               "redis": {"meter": "redis", "sql": "postgres"}}[kind]
    with deployment(tmp_path, pricing, **options) as dep:
        asyncio.run(provider_run(dep, provider, f"provider-faults[{kind}]"))


# --- a fault proxy in front of Redis and PostgreSQL --------------------------------------------------

PHASES: list[tuple[str, float]] = [("forward", 0.0), ("latency", 0.2), ("latency", 1.0),
                                   ("blackhole", 0.0), ("reset", 0.0), ("forward", 0.0)]


async def proxy_run(dep: Deployment, name: str, which: str, phase_s: float) -> None:
    proxy = dep.redis_proxy if which == "redis" else dep.sql_proxy
    assert proxy is not None
    await start(dep)
    history = History()
    until = time.monotonic() + phase_s * len(PHASES)
    marks: list[tuple[str, float]] = []

    async def faults() -> None:
        assert proxy is not None
        for i, (mode, seconds) in enumerate(PHASES):
            await asyncio.to_thread(proxy.set, mode, seconds)
            marks.append((f"{i}:{mode}{seconds or ''}", time.monotonic()))
            await asyncio.sleep(phase_s)

    await asyncio.gather(faults(), load(dep.url, history, dep.accounts, MIXED, until=until,
                                        concurrency=6, deadline_slack=20, retry_failures=False,
                                        client_timeout=5))
    await asyncio.to_thread(proxy.set, "forward")
    await resolve(dep.url, history, dep.accounts)
    # Recovered: once the proxy forwards again, a metered request is answered from the store
    # (a 200, or a 402 if the load spent the balance). The last phase's own ops are not enough
    # on a loaded machine: every client may still be inside a request of the blackhole phase.
    async with make_client(dep.url) as client:
        probe = await run_op(client, new_op(history, dep.accounts[-1], METERED[0][0], 1,
                                            prefix="probe"),
                             dep.accounts[-1], deadline=time.monotonic() + 15,
                             retry_failures=True)
    per_phase: dict[str, dict[str, int]] = {}
    for (label, start_at), (_, end_at) in zip(marks, [*marks[1:], ("end", until)], strict=True):
        ops = [op for op in history.ops if start_at <= op.attempts[0].started < end_at]
        per_phase[label] = {k: sum(1 for op in ops if op.attempts[0].outcome == k)
                            for k in (OK, FAIL, "indeterminate")}
    figures = await asyncio.to_thread(
        dep.check, name, history, phases=per_phase, slowest_503_s=fail_latency(history),
        recovery_s=history.first_ok_after(marks[-1][1]), connections=proxy.connections)
    figures.assert_clean()
    assert outcomes(history, cost=0)[FAIL] == 0, sorted({
        (a.status, a.code) for op in history.ops if op.cost == 0 for a in op.attempts
        if a.outcome == FAIL})
    assert per_phase[marks[0][0]][OK] > 0
    assert probe.outcome == OK or probe.attempts[-1].status == 402, probe.attempts[-3:]


def test_fault_proxy_in_front_of_redis(tmp_path: Path, pricing: Path) -> None:
    with deployment(tmp_path, pricing, meter="redis", proxy_redis=True, key_cap=8) as dep:
        asyncio.run(proxy_run(dep, "fault-proxy[redis]", "redis", phase_s=1.0))


@pytest.mark.slow
def test_fault_proxy_in_front_of_postgres(tmp_path: Path, pricing: Path) -> None:
    with deployment(tmp_path, pricing, meter="sql", sql="postgres", proxy_sql=True,
                    key_cap=10) as dep:
        asyncio.run(proxy_run(dep, "fault-proxy[postgres]", "postgres", phase_s=1.5))


@pytest.mark.slow
@pytest.mark.parametrize("which", ["redis", "postgres"])
def test_fault_proxy_long(tmp_path: Path, pricing: Path, which: str) -> None:
    options: dict[str, Any] = (
        {"meter": "redis", "sql": "postgres", "proxy_redis": True} if which == "redis"
        else {"meter": "redis", "sql": "postgres", "proxy_sql": True})
    with deployment(tmp_path, pricing, key_cap=40, **options) as dep:
        asyncio.run(proxy_run(dep, f"fault-proxy-long[{which}]", which, phase_s=3.5))


# --- a Redis Cluster primary killed: its replica takes over ---------------------------------


async def failover_run(dep: Deployment, name: str, seconds: float, kill_at: float) -> None:
    """Two gateway processes on the cluster (issue 17 point 3), each loaded by half the
    clients, while the primary of the first workspace's shard is killed."""
    cluster = dep.cluster
    assert cluster is not None
    second_dir = dep.tmp / "second-gateway"
    second_dir.mkdir()
    second = GatewayProcess(second_dir, {**dep.gateway.env,
                                         "BOOKBAG_SPOOL_PATH": str(second_dir / "spool.jsonl")})
    await start(dep)
    await asyncio.to_thread(second.start)
    try:
        await _failover(dep, cluster, second, name, seconds, kill_at)
    finally:
        await asyncio.to_thread(second.stop)


async def _failover(dep: Deployment, cluster: RedisCluster, second: GatewayProcess, name: str,
                    seconds: float, kill_at: float) -> None:
    history = History()
    until = time.monotonic() + seconds
    marks: dict[str, Any] = {}
    victim = dep.accounts[0].workspace_id
    slot = key_slot(f"{{s{shard_of(victim):02d}}}".encode())

    async def kill_primary() -> None:
        await asyncio.sleep(kill_at)
        primary = cluster.primary_of(slot)
        ws = [a.workspace_id for a in dep.accounts]
        marks["reserved"], marks["backlog"] = await asyncio.to_thread(
            functools.partial(in_flight, cluster=True), cluster.url, ws)
        await asyncio.to_thread(primary.kill)  # kill -9: what did not replicate is lost
        marks["killed"] = time.monotonic()
        await asyncio.to_thread(cluster.wait_for_failover, slot, primary)
        marks["promoted"] = time.monotonic()

    await asyncio.gather(kill_primary(), *(
        load(url, history, dep.accounts, MIXED, until=until, concurrency=3, deadline_slack=30)
        for url in (dep.url, second.url)))
    await resolve(dep.url, history, dep.accounts)
    unavailable = [a for op in history.ops for a in op.attempts if a.status == 503]
    window = (round(max(a.ended for a in unavailable) - min(a.started for a in unavailable), 3)
              if unavailable else 0.0)
    figures = await asyncio.to_thread(
        dep.check, name, history, gateways=2, metered=outcomes(history, 1),
        unmetered=outcomes(history, 0),
        reserved_at_kill=marks["reserved"], backlog_at_kill=marks["backlog"],
        promoted_after_s=round(marks["promoted"] - marks["killed"], 3),
        metered_503=len(unavailable), window_503_s=window,
        recovery_s=history.first_ok_after(marks["promoted"]))
    assert outcomes(history, cost=0)[FAIL] == 0, "an unmetered request failed in the failover"
    # Replication is asynchronous: what the dead primary had not sent its replica is lost.
    # The bound (docs/guarantees.md): holds in flight, and settles within the replication lag.
    assert figures.overdraft <= marks["reserved"], figures.line()
    assert figures.lost <= marks["backlog"], figures.line()
    assert figures.leaked_holds == 0 and figures.charged_failures == 0, figures.violations


@pytest.mark.slow
def test_redis_cluster_primary_killed_under_load(tmp_path: Path, pricing: Path) -> None:
    with deployment(tmp_path, pricing, meter="redis-cluster", sql="postgres", accounts=4,
                    allotment=400) as dep:
        asyncio.run(failover_run(dep, "redis-cluster-failover", seconds=16, kill_at=3))
