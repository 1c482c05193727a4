"""The rebuild of a shard from SQL on a new epoch (gateway/metering/redis_rebuild.py), on one
redis-server: what it restores, and that it restores it exactly. The failover that
triggers it on a real cluster: tests/test_redis_cluster.py::
test_after_a_failover_the_shard_is_rebuilt_from_sql."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.clock import ManualClock
from gateway.metering import redis_rebuild
from gateway.metering.redis import RedisMeter
from gateway.metering.redis_keys import Layout
from gateway.metering.redis_rebuild import Rebuilder
from gateway.storage.redis import connect
from gateway.types import Cap
from tests.meter_contract import HOLD_TTL, START, allotment_for, catalog, reply
from tests.redis_backend import IDLE, redis_backend
from tests.redis_server import RedisServer


@dataclass
class Rig:
    backend: Any
    meter: RedisMeter
    rebuilder: Rebuilder
    direct: redis.Redis
    layout: Layout


@asynccontextmanager
async def rig(tmp_path: Path, name: str, **meter_options: Any) -> AsyncIterator[Rig]:
    """A Redis meter with no outbox consumer (the outbox stays), a rebuilder beside it and a
    plain client, on a redis-server of the test's own."""
    server = RedisServer(tmp_path / "redis").start()
    clock = ManualClock(START)
    backend = redis_backend(name, f"sqlite:///{tmp_path / 'meter.db'}", server.url, clock)
    layout = Layout(prefix="t" + uuid.uuid4().hex[:12])
    meter = RedisMeter(connect(server.url, timeout=2.0), backend.engine, clock,
                       allotment_for(catalog()), hold_ttl=HOLD_TTL, sync_interval=IDLE,
                       sweep_interval=IDLE, layout=layout, **meter_options)
    rebuilder = Rebuilder(connect(server.url, timeout=2.0), backend.engine, layout)
    direct = redis.Redis(port=server.port, socket_timeout=5, decode_responses=True)
    try:
        yield Rig(backend, meter, rebuilder, direct, layout)
    finally:
        direct.close()
        await rebuilder._redis.aclose()
        await meter.close()
        await backend.close()
        server.stop()


async def test_a_rebuild_restores_balance_cap_usage_and_grants_seen_from_sql_and_the_outbox(
    tmp_path: Path,
) -> None:
    """Entries still in the outbox (not in SQL), a hold in flight, a spend cap and a top-up;
    then Redis's figures drift (as a Redis that lost or kept stale data could): the rebuild
    gives back exactly what the meter had, from SQL + the outbox - the holds."""
    cap = Cap("key:k1", 100)
    async with rig(tmp_path, "rebuild") as r:
        backend, meter, rebuilder, direct, layout = (r.backend, r.meter, r.rebuilder, r.direct,
                                                     r.layout)
        ws = await backend.workspace(allotment=10)
        settled = await meter.reserve(ws, 2, "settled", (cap,))
        await meter.settle(settled, reply(settled, key_id="k1"))  # in the outbox, not in SQL
        held = await meter.reserve(ws, 3, "held", (cap,))
        topup = backend.topup(ws, 50, ref="rebuild-topup")
        assert await meter.grant(topup)
        before = await meter.balance(ws)
        assert (before.available, before.reserved) == (55, 3)
        assert await meter.cap_usage(ws, (cap,)) == {"key:k1": 5}  # 2 charged + 3 held

        direct.hset(layout.bal(ws), mapping={"allot_rem": 999, "top_rem": 999, "reserved": 7,
                                             f"cap:{before.period_start}:key:k1": 42})
        direct.delete(layout.applied(ws))
        assert not await rebuilder.check(layout.of(ws))  # the first epoch: only recorded
        assert rebuilder.rebuilt == 0
        direct.set(layout.of(ws).rebuilt, "another-primary")  # as before a failover
        assert await rebuilder.check(layout.of(ws))
        assert rebuilder.rebuilt == 1

        after = await meter.balance(ws)
        assert (after.allotment_remaining, after.topups_remaining, after.reserved) == (
            before.allotment_remaining, before.topups_remaining, before.reserved)
        assert await meter.cap_usage(ws, (cap,)) == {"key:k1": 5}
        assert direct.sismember(layout.applied(ws), topup.request_id)  # seen: applied once
        await meter.sync()
        assert (await meter.balance(ws)).available == 55
        assert not await rebuilder.check(layout.of(ws))  # the same epoch: nothing to do

        await meter.void(held)  # the rebuilt hold still resolves as it was taken
        assert (await meter.balance(ws)).available == 58
        assert await meter.cap_usage(ws, (cap,)) == {"key:k1": 2}


async def test_a_grant_the_sync_applies_while_the_shard_is_rebuilt_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A top-up written straight to SQL (the CLI) after the rebuild read SQL, and applied by
    the sync before the rebuild's script ran: the script wipes the sync's work and the sync
    counts the grant done, so the rebuild itself must apply it. Without that the top-up is
    gone from Redis until the workspace is next rebuilt."""
    loop = asyncio.get_running_loop()
    real_snapshot = redis_rebuild.load_snapshot
    late: list[str] = []

    async with rig(tmp_path, "rebuild-late", sync_lag=0.0) as r:
        backend, meter, rebuilder, direct, layout = (r.backend, r.meter, r.rebuilder, r.direct,
                                                     r.layout)

        def snapshot_then_a_cli_topup(*args: Any) -> Any:
            snap = real_snapshot(*args)  # the rebuild has read SQL ...
            entry = backend.topup(args[1], 50, ref="late-topup")
            assert backend.accounts.apply(entry)  # ... then the CLI writes a top-up to SQL ...
            asyncio.run_coroutine_threadsafe(meter.sync(), loop).result(10)  # ... synced
            late.append(entry.request_id)
            return snap

        ws = await backend.workspace(allotment=10)
        assert (await meter.balance(ws)).available == 10
        await meter.sync()
        assert not await rebuilder.check(layout.of(ws))  # the first epoch: only recorded
        direct.set(layout.of(ws).rebuilt, "another-primary")  # as after a failover
        monkeypatch.setattr(redis_rebuild, "load_snapshot", snapshot_then_a_cli_topup)
        assert await rebuilder.check(layout.of(ws))
        assert late and direct.sismember(layout.applied(ws), late[0])
        assert (await meter.balance(ws)).available == 60
        await meter.sync()  # and later rounds do not apply it again
        assert (await meter.balance(ws)).available == 60
