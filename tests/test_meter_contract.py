"""The Meter contract against every backend, and what only the embedded meter promises.

Backends: the embedded `MemoryMeter` on SQLite, the `SqlMeter` on SQLite, and
the `SqlMeter` on PostgreSQL (a database of its own for this run, created on
127.0.0.1:5432 and dropped at the end). Adding a backend is one entry in
`BUILDERS` (and `SHARED` when several processes can serve it).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from gateway.accounts.workspaces import Accounts
from gateway.clock import Clock, ManualClock
from gateway.ledger.writer import GroupWriter
from gateway.metering.base import Meter
from gateway.metering.memory import MemoryMeter
from gateway.metering.memory_accounts import OwnerConflict
from gateway.metering.sql import SqlMeter
from gateway.storage.database import create_schema, make_engine
from gateway.types import EntryKind
from tests.conftest import service_missing
from tests.meter_contract import (
    HOLD_TTL,
    START,
    MeterBackend,
    MeterContract,
    SharedMeterContract,
    allotment_for,
    catalog,
    dispose,
    emptied,
    reply,
)
from tests.meter_contract_caps import CapContract, SharedCapContract
from tests.meter_contract_trim import TrimContract
from tests.redis_backend import redis_cluster_sqlite, redis_postgres, redis_sqlite
from tests.redis_backend import redis_url as redis_url  # the session's redis-server (a fixture)

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
IDLE = 3600.0  # background sync/sweep intervals: the tests call sync() and sweep() themselves

Builder = Callable[[pytest.FixtureRequest, Path, ManualClock], Awaitable[MeterBackend]]


async def memory_sqlite(request: pytest.FixtureRequest, tmp: Path, clock: ManualClock) -> MeterBackend:
    cat = catalog()
    engine = make_engine(f"sqlite:///{tmp / 'meter.db'}")
    create_schema(engine)
    writer = GroupWriter(engine)
    writer.start()

    def make(clock: Clock) -> Meter:
        return MemoryMeter(engine, writer, clock, allotment_for(cat), hold_ttl=HOLD_TTL,
                           sync_interval=IDLE, sweep_interval=IDLE)

    async def flush() -> None:
        # The writer commits in order: once this no-op is done, so is every earlier write.
        await writer.submit(lambda cur, sql: None)

    return MeterBackend(
        name="memory-sqlite", clock=clock, engine=engine, accounts=Accounts(engine, cat, clock),
        make=make, shared=False, flush=flush, teardown=[dispose(engine), writer.close],
    )


def _sql_backend(name: str, url: str, clock: ManualClock, *, grouped: bool = False) -> MeterBackend:
    """`grouped`: each meter writes through a group writer of its own, as each process of
    `serve --workers N` on SQLite does."""
    cat = catalog()
    engine = make_engine(url)
    create_schema(engine)
    teardown = [dispose(engine)]

    def make(clock: Clock) -> Meter:
        own = make_engine(url)  # each meter its own pool, as each process has
        teardown.append(dispose(own))
        writer = None
        if grouped:
            writer = GroupWriter(own)
            writer.start()
            teardown.append(writer.close)
        return SqlMeter(own, clock, allotment_for(cat), hold_ttl=HOLD_TTL, sweep_interval=IDLE,
                        writer=writer)

    return MeterBackend(name=name, clock=clock, engine=engine, accounts=Accounts(engine, cat, clock),
                        make=make, shared=True, teardown=teardown)


async def sql_sqlite(request: pytest.FixtureRequest, tmp: Path, clock: ManualClock) -> MeterBackend:
    return _sql_backend("sql-sqlite", f"sqlite:///{tmp / 'meter.db'}", clock)


async def sql_sqlite_grouped(request: pytest.FixtureRequest, tmp: Path,
                             clock: ManualClock) -> MeterBackend:
    return _sql_backend("sql-sqlite-grouped", f"sqlite:///{tmp / 'meter.db'}", clock, grouped=True)


async def sql_postgres(request: pytest.FixtureRequest, tmp: Path, clock: ManualClock) -> MeterBackend:
    url: str = request.getfixturevalue("postgres_url")
    backend = _sql_backend("sql-postgres", url, clock)
    return await emptied(backend)


BUILDERS: dict[str, Builder] = {
    "memory-sqlite": memory_sqlite,
    "sql-sqlite": sql_sqlite,
    "sql-sqlite-grouped": sql_sqlite_grouped,
    "sql-postgres": sql_postgres,
    "redis-sqlite": redis_sqlite,
    "redis-postgres": redis_postgres,
    "redis-cluster-sqlite": redis_cluster_sqlite,
}
SHARED = [name for name in BUILDERS if not name.startswith("memory-")]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this run, dropped at the end."""
    name = f"bookbag_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError:
        service_missing("PostgreSQL")
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    engine = make_engine(url)
    create_schema(engine)
    engine.dispose()
    yield url
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def _backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MeterBackend]:
    backend = await BUILDERS[request.param](request, tmp_path, ManualClock(START))
    try:
        yield backend
    finally:
        await backend.close()


class TestMeterContract(MeterContract, CapContract, TrimContract):
    @pytest.fixture(params=list(BUILDERS))
    async def backend(self, request: pytest.FixtureRequest, tmp_path: Path
                      ) -> AsyncIterator[MeterBackend]:
        async for backend in _backend(request, tmp_path):
            yield backend


class TestSharedMeterContract(SharedMeterContract, SharedCapContract):
    @pytest.fixture(params=SHARED)
    async def backend(self, request: pytest.FixtureRequest, tmp_path: Path
                      ) -> AsyncIterator[MeterBackend]:
        async for backend in _backend(request, tmp_path):
            yield backend


# --- the embedded meter only ------------------------------------------------


@pytest.fixture
async def memory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MeterBackend]:
    backend = await memory_sqlite(request, tmp_path, ManualClock(START))
    try:
        yield backend
    finally:
        await backend.close()


async def test_a_second_owner_is_refused_while_the_first_holds_the_lease(
    memory: MeterBackend,
) -> None:
    first = await memory.meter()
    second = memory.make(memory.clock)
    with pytest.raises(OwnerConflict, match="owns the balances"):
        await second.start()
    ws = await memory.workspace(allotment=10)
    assert (await first.balance(ws)).available == 10  # the first keeps serving
    await first.close()
    memory._meters.clear()
    third = await memory.start()  # the lease was released on close
    assert (await third.balance(ws)).available == 10


async def test_an_expired_lease_can_be_taken_over(memory: MeterBackend) -> None:
    await memory.meter()  # its holder stops renewing (a crashed process): sync never runs
    memory.clock.advance(3 * IDLE + 1)
    taken = memory.make(memory.clock)
    await taken.start()
    await taken.close()


async def test_operator_grants_written_in_sql_reach_the_running_meter(memory: MeterBackend) -> None:
    meter = await memory.meter()
    assert isinstance(meter, MemoryMeter)
    ws = await memory.workspace(allotment=10)
    hold = await meter.reserve(ws, 4, "in-flight")
    # The CLI's path: straight into SQL, another process.
    assert memory.accounts.apply(memory.topup(ws, 20, ref="cli-1"))
    assert memory.accounts.apply(memory.topup(ws, -5, ref="cli-2", kind=EntryKind.ADJUSTMENT))
    assert (await meter.balance(ws)).topups_remaining == 0  # not yet seen
    await meter.sync()
    balance = await meter.balance(ws)
    assert (balance.allotment_remaining, balance.topups_remaining, balance.reserved) == (6, 15, 4)
    await meter.sync()  # applied once
    assert await meter.balance(ws) == balance
    await meter.settle(hold, reply(hold))
    assert (await meter.balance(ws)).available == 21


async def test_a_grant_already_written_by_the_cli_is_applied_once(memory: MeterBackend) -> None:
    meter = await memory.meter()
    assert isinstance(meter, MemoryMeter)
    ws = await memory.workspace(allotment=10)
    await meter.balance(ws)
    assert memory.accounts.apply(memory.topup(ws, 20, ref="both"))
    assert await meter.grant(memory.topup(ws, 20, ref="both")) is False  # the CLI was first
    await meter.sync()
    assert (await meter.balance(ws)).topups_remaining == 20
    await meter.sync()
    assert (await meter.balance(ws)).topups_remaining == 20


async def test_a_grant_racing_the_first_load_of_its_workspace_is_not_lost(
    memory: MeterBackend,
) -> None:
    meter = await memory.meter()
    assert isinstance(meter, MemoryMeter)
    workspaces = [await memory.workspace(allotment=10) for _ in range(20)]
    await asyncio.gather(*(
        job for ws in workspaces for job in (meter.balance(ws), meter.grant(memory.topup(ws, 5)))
    ))
    await meter.sync()
    for ws in workspaces:
        assert (await meter.balance(ws)).topups_remaining == 5


async def test_a_workspace_created_after_start_is_served(memory: MeterBackend) -> None:
    meter = await memory.meter()
    assert isinstance(meter, MemoryMeter)
    await meter.sync()
    ws = await memory.workspace(allotment=3)
    await meter.sync()
    hold = await meter.reserve(ws, 3, "new")
    with pytest.raises(Exception, match="Insufficient credits"):
        await meter.reserve(ws, 1, "more")
    await meter.settle(hold, reply(hold))
    await meter.sync()
    balance = await meter.balance(ws)
    assert (balance.allotment, balance.available, balance.reserved) == (3, 0, 0)
