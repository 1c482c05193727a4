"""What only the Redis meter promises, against redis-servers these tests start and break.

The Meter contract itself runs against Redis in `test_meter_contract.py`.
Here: reserves from two real processes, the outbox's exactly-once through a
consumer that dies between commit and acknowledge, a Redis that restarts with
and without its data, a paused Redis (SIGSTOP), grants the CLI writes to SQL,
and one gateway charging through Redis. Figures (time to 503 when paused,
time to recover) are printed (`pytest -s`), never asserted.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions
from sqlalchemy import Engine

from gateway.accounts.workspaces import Accounts
from gateway.clock import ManualClock
from gateway.errors import ServiceUnavailable
from gateway.metering.outbox import OutboxConsumer, backlog
from gateway.metering.redis import RedisMeter
from gateway.metering.redis_keys import SHARDS, Layout
from gateway.storage.database import create_schema, make_engine, transaction
from gateway.storage.redis import connect, unavailable
from gateway.types import EntryKind, Hold
from tests.conftest import GatewayFactory
from tests.meter_contract import PLAN, START, catalog, reply
from tests.redis_backend import drain, redis_meter
from tests.redis_server import RedisServer

FAULT_TIMEOUT = 0.5  # the production default of BOOKBAG_REDIS_TIMEOUT


@dataclass
class Env:
    """A SQLite ledger, a redis-server of this test's own, and the meters made on them."""

    server: RedisServer
    db_url: str
    engine: Engine
    accounts: Accounts
    clock: ManualClock
    layout: Layout = field(default_factory=lambda: Layout(prefix="t" + uuid.uuid4().hex[:8]))
    meters: list[RedisMeter] = field(default_factory=list)

    async def meter(self, **kwargs: Any) -> RedisMeter:
        meter = redis_meter(self.server.url, self.engine, self.clock, self.layout, **kwargs)
        await meter.start()
        self.meters.append(meter)
        return meter

    async def workspace(self, allotment: int) -> str:
        ws = await asyncio.to_thread(self.accounts.create_workspace, "redis", PLAN,
                                     custom_allotment=allotment)
        return ws.id

    async def drain(self) -> None:
        await drain(self.server.url, self.layout)

    def rows(self, workspace_id: str, kind: str = "reply") -> list[dict[str, Any]]:
        with transaction(self.engine) as (cur, sql):
            cur.execute(sql("SELECT request_id, credits, allotment_delta, topup_delta FROM ledger "
                            "WHERE workspace_id = ? AND kind = ? ORDER BY seq"), (workspace_id, kind))
            return [dict(zip(("request_id", "credits", "allotment_delta", "topup_delta"), r,
                             strict=True)) for r in cur.fetchall()]

    def sql_balance(self, workspace_id: str) -> tuple[int, int]:
        """SQL's settled projection: (allotment remaining, top-ups remaining)."""
        b = self.accounts.balance(workspace_id)
        return int(str(b["allotment_remaining"])), int(str(b["topups_remaining"]))


async def _env(tmp_path: Path, *, aof: bool) -> AsyncIterator[Env]:
    server = RedisServer(tmp_path / "redis", aof=aof).start()
    db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    engine = make_engine(db_url)
    create_schema(engine)
    clock = ManualClock(START)
    env = Env(server, db_url, engine, Accounts(engine, catalog(), clock), clock)
    try:
        yield env
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.resume()
        for meter in reversed(env.meters):
            await meter.close()
        engine.dispose()
        server.stop()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async for e in _env(tmp_path, aof=False):
        yield e


@pytest.fixture
async def aof_env(tmp_path: Path) -> AsyncIterator[Env]:
    async for e in _env(tmp_path, aof=True):
        yield e


async def settle_all(meter: RedisMeter, holds: list[Hold]) -> None:
    await asyncio.gather(*(meter.settle(h, reply(h)) for h in holds))


# --- two processes ------------------------------------------------------------------


async def test_two_processes_reserving_at_once_never_overdraw(env: Env) -> None:
    """Two OS processes, 300 concurrent reserves each (costs 1 and 2), on a balance of 250."""
    meter = await env.meter()
    ws = await env.workspace(allotment=250)
    await meter.balance(ws)  # seeded once, before the race
    workers = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.redis_worker", env.server.url, env.db_url,
        env.layout.prefix, ws, "300", str(START), f"p{n}",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    ) for n in range(2)]
    pipes = [(w.stdin, w.stdout) for w in workers]
    try:
        for _, out in pipes:  # both warmed up before either starts
            assert out is not None and (await out.readline()).strip() == b"READY"
        go_at = time.time() + 0.5
        go = f"{go_at}\n".encode()  # both start at the same instant
        for into, _ in pipes:
            assert into is not None
            into.write(go)
            await into.drain()
        outcomes = [json.loads(await out.readline()) for _, out in pipes if out is not None]
    finally:
        for w in workers:
            await asyncio.wait_for(w.wait(), 60)
    assert [o["errors"] for o in outcomes] == [[], []]
    holds = [Hold(**h) for o in outcomes for h in o["holds"]]
    taken = sum(h.credits for h in holds)
    balance = await meter.balance(ws)
    spans = [(len(o["holds"]), round(o["began"] - go_at, 3), round(o["ended"] - go_at, 3))
             for o in outcomes]
    print(f"\n2 processes: {len(holds)} holds, {taken} credits taken, "
          f"{sum(o['refused'] for o in outcomes)} refused, {balance.available} left; "
          f"(holds, start s, end s) per process: {spans}")
    assert all(o["holds"] for o in outcomes), "both processes reserved"
    assert taken + balance.available == 250 and balance.available < 2
    assert balance.reserved == taken
    await settle_all(meter, holds)
    await env.drain()
    rows = env.rows(ws)
    assert len(rows) == len(holds) == len({r["request_id"] for r in rows})
    assert sum(r["credits"] for r in rows) == taken
    assert env.sql_balance(ws) == (balance.available, 0)


# --- the outbox ---------------------------------------------------------------------


async def test_a_consumer_dying_between_commit_and_ack_leaves_every_entry_once(env: Env) -> None:
    meter = await env.meter(consumer=False)
    ws = await env.workspace(allotment=100)
    await settle_all(meter, [await meter.reserve(ws, 2, f"first-{i}") for i in range(30)])

    # Consumer A commits a batch to SQL and dies before acknowledging it.
    client_a = connect(env.server.url, timeout=2.0, read_timeout=3.0)
    dead = OutboxConsumer(client_a, env.engine, layout=env.layout, lease_ttl=1.0, block=0.1)
    assert await dead.lease()
    batch = await dead.read()
    assert len(batch) == 30
    await dead.write(batch)
    assert dead.written == 30 and len(env.rows(ws)) == 30
    await client_a.aclose()  # no ack, no release: its leases run out after 1 s

    await settle_all(meter, [await meter.reserve(ws, 2, f"later-{i}") for i in range(10)])
    client_b = connect(env.server.url, timeout=2.0, read_timeout=3.0)
    survivor = OutboxConsumer(client_b, env.engine, layout=env.layout, lease_ttl=1.0, block=0.1)
    await survivor.start()
    try:
        await env.drain()
    finally:
        await survivor.close()
    # B re-applied A's 30 (already in SQL: nothing written twice), then wrote the 10 new ones.
    assert (survivor.duplicates, survivor.written) == (30, 10)
    rows = env.rows(ws)
    assert len(rows) == 40 == len({r["request_id"] for r in rows})
    assert env.sql_balance(ws) == (20, 0)
    assert (await meter.balance(ws)).available == 20


async def test_a_settled_reply_counts_as_charged_before_and_after_it_reaches_sql(env: Env) -> None:
    """Idempotency's crash recovery asks `charged`: never "no" for a settled reply in the outbox."""
    meter = await env.meter(consumer=False)
    ws = await env.workspace(allotment=10)
    settled, voided = await meter.reserve(ws, 1, "settled"), await meter.reserve(ws, 1, "voided")
    await meter.settle(settled, reply(settled))
    await meter.void(voided)
    assert env.rows(ws) == []  # nothing in SQL yet
    assert await meter.charged("settled") and not await meter.charged("voided")
    consumer = await env.meter()  # a process with a consumer
    await env.drain()
    assert [r["request_id"] for r in env.rows(ws)] == ["settled"]
    assert await consumer.charged("settled") and not await consumer.charged("voided")
    client = connect(env.server.url, timeout=2.0)
    try:  # SQL answers now; the outbox keeps nothing for it
        assert not any([await client.hlen(env.layout.shard(i).pending) for i in range(SHARDS)])
    finally:
        await client.aclose()


async def test_the_outbox_reaches_sql_in_order_across_a_renewal(env: Env) -> None:
    """A renewal and the charges of its period land in SQL in order, so the projection is right."""
    meter = await env.meter()
    ws = await env.workspace(allotment=10)
    await settle_all(meter, [await meter.reserve(ws, 3, f"old-{i}") for i in range(3)])
    env.clock.set(START + 32 * 86400)  # the next period
    await settle_all(meter, [await meter.reserve(ws, 2, f"new-{i}") for i in range(4)])
    await env.drain()
    renewals = env.rows(ws, kind="allotment")
    assert [r["credits"] for r in renewals] == [10, 10]
    assert env.sql_balance(ws) == (2, 0)
    assert (await meter.balance(ws)).available == 2


# --- Redis losing or keeping its data -----------------------------------------------


async def test_redis_restarted_without_its_data_is_reseeded_from_sql(env: Env) -> None:
    meter = await env.meter()
    ws = await env.workspace(allotment=100)
    assert await meter.grant(env.accounts.topup_entry(ws, 20, ref="t1"))
    await settle_all(meter, [await meter.reserve(ws, 3, f"r-{i}") for i in range(10)])
    in_flight = await meter.reserve(ws, 5, "in-flight")
    await env.drain()
    assert env.sql_balance(ws) == (70, 20)

    env.server.kill()  # no AOF: everything in Redis is gone
    env.server.start()
    balance = await meter.balance(ws)  # seeded again from SQL, set-if-absent
    assert (balance.allotment_remaining, balance.topups_remaining, balance.reserved) == (70, 20, 0)
    # The hold was lost with Redis; its reply succeeded, so its charge is still recorded.
    await meter.settle(in_flight, reply(in_flight))
    await env.drain()
    assert (await meter.balance(ws)).available == 85
    assert env.sql_balance(ws) == (65, 20)
    assert len(env.rows(ws)) == 11
    # A second seed never adds: the balance stays what it is.
    assert (await meter.balance(ws)).available == 85


async def test_redis_killed_with_aof_keeps_holds_and_the_outbox(aof_env: Env) -> None:
    env = aof_env
    meter = await env.meter(consumer=False)
    ws = await env.workspace(allotment=50)
    settled = [await meter.reserve(ws, 2, f"s-{i}") for i in range(5)]
    open_hold = await meter.reserve(ws, 7, "open")
    await settle_all(meter, settled)

    env.server.kill()  # appendfsync always: every acknowledged write is on disk
    env.server.start()
    balance = await meter.balance(ws)
    assert (balance.available, balance.reserved) == (33, 7)
    client = connect(env.server.url, timeout=2.0)
    try:
        assert await backlog(client, env.layout) == 5  # the unconsumed entries survived too
    finally:
        await client.aclose()
    await meter.settle(open_hold, reply(open_hold))
    consumer = await env.meter()  # a process with a consumer drains what survived
    await env.drain()
    assert len(env.rows(ws)) == 6
    assert env.sql_balance(ws) == (33, 0)
    assert (await consumer.balance(ws)).available == 33


# --- Redis paused or gone ------------------------------------------------------------


async def test_a_paused_redis_gives_503_within_the_timeout_and_recovers(env: Env) -> None:
    meter = await env.meter(timeout=FAULT_TIMEOUT, consumer=False)
    ws = await env.workspace(allotment=100)
    before = await meter.reserve(ws, 1, "before")

    env.server.pause()
    started = time.monotonic()

    async def timed(i: int) -> tuple[float, BaseException | None]:
        t = time.monotonic()
        try:
            await meter.reserve(ws, 1, f"paused-{i}")
        except ServiceUnavailable as exc:
            return time.monotonic() - t, exc
        return time.monotonic() - t, None

    results = await asyncio.wait_for(asyncio.gather(*(timed(i) for i in range(50))), 30)
    assert all(isinstance(exc, ServiceUnavailable) for _, exc in results)
    worst = max(t for t, _ in results)
    t = time.monotonic()
    with pytest.raises(ServiceUnavailable):
        await asyncio.wait_for(meter.reserve(ws, 1, "paused-again"), 30)
    again = time.monotonic() - t
    with pytest.raises(ServiceUnavailable):  # a settle cannot complete either: never uncharged
        await asyncio.wait_for(meter.settle(before, reply(before)), 30)
    print(f"\npaused Redis (timeout {FAULT_TIMEOUT}s): 50 concurrent reserves all 503, "
          f"slowest {worst:.3f}s; next reserve {again:.3f}s (breaker); "
          f"paused for {time.monotonic() - started:.2f}s")

    env.server.resume()
    resumed = time.monotonic()
    while True:
        try:
            hold = await meter.reserve(ws, 1, "after")
            break
        except ServiceUnavailable:
            assert time.monotonic() - resumed < 30, "did not recover"
            await asyncio.sleep(0.05)
    print(f"resumed: first reserve succeeded after {time.monotonic() - resumed:.3f}s")
    await meter.settle(hold, reply(hold))
    # A reserve that timed out may still have run when Redis woke up: the sweep voids those
    # at once (not only after the hold TTL), since their requests were answered 503.
    await meter.sweep()
    # The settle attempted while paused may have run once Redis resumed: either way, once.
    await meter.settle(before, reply(before))
    balance = await meter.balance(ws)
    assert balance.reserved == 0 and balance.available == 98


async def test_a_stopped_redis_fails_closed(env: Env) -> None:
    meter = await env.meter(timeout=FAULT_TIMEOUT, consumer=False)
    ws = await env.workspace(allotment=10)
    await meter.balance(ws)
    env.server.stop()
    t = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="unreachable"):
        await meter.reserve(ws, 1, "down")
    print(f"\nstopped Redis: reserve refused with 503 after {time.monotonic() - t:.3f}s")
    with pytest.raises(ServiceUnavailable):
        await meter.balance(ws)


def test_every_redis_error_becomes_service_unavailable() -> None:
    classes = [c for _, c in inspect.getmembers(redis.exceptions, inspect.isclass)
               if issubclass(c, redis.exceptions.RedisError)]
    assert len(classes) > 10
    for cls in classes:
        error = unavailable(cls("12 10.9.8.7:6379"))  # cluster redirects parse their message
        assert isinstance(error, ServiceUnavailable) and error.status == 503
        assert "10.9.8.7" not in error.message  # Redis's own words stay in the logs
    assert "loading" in unavailable(redis.exceptions.BusyLoadingError("x")).message
    assert "unreachable" in unavailable(redis.exceptions.TimeoutError("x")).message


# --- grants written straight to SQL -----------------------------------------------------


async def test_cli_grants_reach_every_process_once(env: Env) -> None:
    a, b = await env.meter(consumer=False), await env.meter(consumer=False)
    ws = await env.workspace(allotment=10)
    hold = await a.reserve(ws, 4, "in-flight")
    assert env.accounts.apply(env.accounts.topup_entry(ws, 20, ref="cli-1"))
    assert env.accounts.apply(env.accounts.topup_entry(ws, -5, ref="cli-2",
                                                       kind=EntryKind.ADJUSTMENT))
    await asyncio.gather(a.sync(), b.sync(), a.sync(), b.sync())
    for meter in (a, b):
        balance = await meter.balance(ws)
        assert (balance.allotment_remaining, balance.topups_remaining, balance.reserved) == (6, 15, 4)
    await a.void(hold)
    assert (await b.balance(ws)).available == 25


async def test_a_grant_made_while_no_gateway_runs_is_applied_on_start(env: Env) -> None:
    first = await env.meter(consumer=False)
    ws = await env.workspace(allotment=10)
    await first.balance(ws)
    await first.sync()  # the sync mark is stored in Redis
    await first.close()
    env.meters.remove(first)
    assert env.accounts.apply(env.accounts.topup_entry(ws, 7, ref="offline"))
    later = await env.meter(consumer=False)
    await later.sync()
    await later.sync()
    assert (await later.balance(ws)).topups_remaining == 7


async def test_a_workspace_seeded_after_a_cli_grant_counts_it_once(env: Env) -> None:
    meter = await env.meter(consumer=False)
    ws = await env.workspace(allotment=10)
    assert env.accounts.apply(env.accounts.topup_entry(ws, 5, ref="before-seed"))
    assert (await meter.balance(ws)).topups_remaining == 5  # the seed includes it
    await meter.sync()
    await meter.sync()
    assert (await meter.balance(ws)).topups_remaining == 5


# --- one gateway on Redis --------------------------------------------------------------


def test_a_gateway_on_redis_charges_through_it_and_the_ledger_reaches_sql(
    redis_server: RedisServer, make_gateway: GatewayFactory
) -> None:
    server = redis_server  # set up before the gateway, so stopped after it
    gw = make_gateway(BOOKBAG_REDIS_URL=server.url, BOOKBAG_REDIS_TIMEOUT=FAULT_TIMEOUT)
    assert type(gw.gw.meter).__name__ == "RedisMeter"
    ws, key = gw.workspace("free")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    local = {"model": "bookbag-local", "messages": [{"role": "user", "content": "hi"}]}
    with gw.client(key) as c:
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.headers["x-bookbag-credits-charged"] == "1"
        assert r.headers["x-bookbag-credits-remaining"] == "99"
        rows = gw.wait_ledger(ws, 1)
        assert [(row["request_id"], row["credits"], row["billing_mode"]) for row in rows] == [
            (r.headers["x-request-id"], 1, "metered")]
        keys = _redis_keys(server.url)
        assert any(k.endswith(f":ws:{ws}:bal") for k in keys)

        server.pause()
        t = time.monotonic()
        r = c.post("/v1/chat/completions", json=body)
        took = time.monotonic() - t
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "service_unavailable"
        t = time.monotonic()
        r = c.post("/v1/chat/completions", json=local)
        local_took = time.monotonic() - t
        assert r.status_code == 200, r.text
        print(f"\ngateway, Redis paused: metered 503 in {took:.3f}s, "
              f"bookbag-local 200 in {local_took:.3f}s")
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["degraded"] == ["redis"], ready.text
        server.resume()
        deadline = time.monotonic() + 30
        while (r := c.post("/v1/chat/completions", json=body)).status_code == 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert r.status_code == 200, r.text
        metered = [row for row in gw.wait_ledger(ws, 3) if row["billing_mode"] == "metered"]
        assert len(metered) == 2  # the 503 was not charged
        # The 503'd request's reserve may have run when Redis woke up; the sweep voids it.
        while (balance := gw.balance(key))["reserved"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert balance["balance"] == 98
        assert c.get("/readyz").json()["checks"]["redis"] is True


def _redis_keys(url: str) -> list[str]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return [str(k) for k in client.scan_iter(count=1000)]
    finally:
        client.close()


def test_the_layout_keeps_a_workspace_and_its_outbox_in_one_slot() -> None:
    """Redis Cluster: every key a script touches hashes to the same slot."""
    from redis.crc import key_slot

    layout = Layout()
    for ws in ("ws_a", "ws_b", "ws_0123456789abcdef", "x"):
        shard = layout.of(ws)
        keys = [layout.bal(ws), layout.applied(ws), shard.holds, shard.exp, shard.outbox,
                shard.epoch, shard.lease, shard.pending]
        assert len({key_slot(k.encode()) for k in keys}) == 1
    assert len({key_slot(layout.shard(i).outbox.encode()) for i in range(SHARDS)}) == SHARDS

