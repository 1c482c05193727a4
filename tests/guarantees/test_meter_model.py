"""A hypothesis state machine drives the real `Meter` backends against a simple model.

Rules: reserve (with or without a spend cap on its key), settle, void, expire
(the ManualClock moves past the hold TTL, then a sweep), settle twice, settle
after void, void after settle, top-up, renewal (the clock crosses the period
end while holds are open), and on Redis: an outbox entry delivered twice, and
the outbox consumer dying between its SQL
commit and its acknowledgement (the next consumer re-delivers what it left).

After every step (DESIGN invariants 1, 2, 4, 6): the balance equals the
model's, `assert_equation` recomputes it from the SQL ledger alone, the
ledger holds exactly one reply entry per settled hold (its cost, its bucket
split), one renewal per period, and no bucket is ever negative; the key's cap
usage this period equals the model's (charged plus held) and never passes it.

The backends are built with the contract suite's builders (memory and sql
from tests/test_meter_contract.py; Redis with its outbox consumer driven by
the machine). On failure the seed is printed; `BOOKBAG_TEST_SEED=<n>` replays it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import threading
import uuid
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    get_state_machine_test,
    invariant,
    precondition,
    rule,
)

from gateway.accounts.workspaces import Accounts
from gateway.clock import Clock, ManualClock
from gateway.errors import InsufficientCredits, SpendCapReached
from gateway.metering.base import Meter
from gateway.metering.outbox import OutboxConsumer, backlog
from gateway.metering.redis_keys import Layout
from gateway.storage.database import create_schema, make_engine
from gateway.storage.redis import connect
from gateway.types import Cap, Hold
from tests.meter_contract import HOLD_TTL, START, MeterBackend, assert_equation, catalog, reply
from tests.redis_backend import redis_meter
from tests.redis_backend import redis_url as redis_url  # the session's redis-server (a fixture)
from tests.test_meter_contract import BUILDERS
from tests.test_meter_contract import postgres_url as postgres_url  # a fixture

T = TypeVar("T")
ALLOTMENT, TOPUPS = 60, 10
CAP = Cap("key:key_capped", 30)  # a spend cap on one key, per period


class Loop:
    """An event loop on its own thread: the machine's steps are synchronous, the meters async."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# --- Redis with a consumer the machine drives ---------------------------------------


@dataclass
class Outbox:
    redis_url: str
    engine: Any
    layout: Layout
    consumer: OutboxConsumer | None = None
    crashed: int = 0
    redelivered: int = 0
    consumers: list[OutboxConsumer] = field(default_factory=list)

    def new(self) -> OutboxConsumer:
        consumer = OutboxConsumer(connect(self.redis_url, timeout=2.0, read_timeout=2.5),
                                  self.engine, layout=self.layout, block=0.05, lease_ttl=30.0,
                                  retry=0.1)
        self.consumers.append(consumer)
        self.consumer = consumer
        return consumer

    async def drain(self) -> None:
        consumer = self.consumer or self.new()
        client = connect(self.redis_url, timeout=2.0)
        try:
            for _ in range(200):
                if not await backlog(client, self.layout):
                    return
                await consumer.step()
            raise AssertionError("the outbox did not drain")
        finally:
            await client.aclose()

    async def deliver_twice(self) -> int:
        """One batch written to SQL twice before its acknowledgement."""
        consumer = self.consumer or self.new()
        await consumer.lease()
        batch = await consumer.claim() or await consumer.read()
        if batch:
            await consumer.write(batch)
            before = consumer.duplicates
            await consumer.write(batch)
            assert consumer.duplicates - before == len(batch)
            await consumer.ack(batch)
        return len(batch)

    async def crash_after_commit(self) -> int:
        """Commit a batch, die before acknowledging it; the next consumer takes over."""
        consumer = self.consumer or self.new()
        await consumer.lease()
        batch = await consumer.claim() or await consumer.read()
        if batch:
            await consumer.write(batch)
        await consumer.close()  # its lease ends, as a dead consumer's would; nothing acked
        self.crashed += 1
        successor = self.new()
        await self.drain()
        self.redelivered += successor.duplicates
        if batch:
            assert successor.duplicates >= len(batch), "the successor did not re-deliver"
        return len(batch)

    async def close(self) -> None:
        for consumer in self.consumers:
            if consumer is self.consumer:
                await consumer.close()


async def redis_backend(request: pytest.FixtureRequest, tmp: Path, clock: ManualClock,
                        postgres: bool) -> tuple[MeterBackend, Outbox]:
    url: str = request.getfixturevalue("redis_url")
    sql_url = request.getfixturevalue("postgres_url") if postgres else f"sqlite:///{tmp / 'm.db'}"
    engine = make_engine(sql_url)
    create_schema(engine)
    layout = Layout(prefix="model" + uuid.uuid4().hex[:10])
    outbox = Outbox(url, engine, layout)

    def make(clock: Clock) -> Meter:
        return redis_meter(url, engine, clock, layout, consumer=False)

    async def dispose() -> None:
        await outbox.close()
        engine.dispose()

    backend = MeterBackend(name="redis", clock=clock, engine=engine,
                           accounts=Accounts(engine, catalog(), clock), make=make, shared=True,
                           flush=outbox.drain, teardown=[dispose])
    return backend, outbox


# --- the model ---------------------------------------------------------------------


@dataclass
class Model:
    period: str
    allotment: int
    allotment_remaining: int
    topups_remaining: int
    holds: dict[str, Hold] = field(default_factory=dict)
    settled: dict[str, int] = field(default_factory=dict)  # request id -> credits charged
    voided: set[str] = field(default_factory=set)
    periods: list[str] = field(default_factory=list)
    cap_used: dict[str, int] = field(default_factory=dict)  # period -> the capped key's usage
    capped: set[str] = field(default_factory=set)  # request ids reserved under the cap

    @property
    def reserved(self) -> int:
        return sum(h.credits for h in self.holds.values())

    def give_back(self, hold: Hold) -> None:
        if hold.period_start == self.period:
            self.allotment_remaining += hold.from_allotment
        self.topups_remaining += hold.from_topups
        if hold.request_id in self.capped:  # a void gives the cap its share back
            self.cap_used[hold.period_start] -= hold.credits


class MeterMachine(RuleBasedStateMachine):
    """One workspace per example, on a backend shared by the examples of one test."""

    backend: MeterBackend
    loop: Loop
    outbox: Outbox | None = None

    def __init__(self) -> None:
        super().__init__()
        b, run = self.backend, self.loop.run
        self.meter = run(b.meter())
        self.ws = run(b.workspace(allotment=ALLOTMENT, topups=TOPUPS))
        balance = run(self.meter.balance(self.ws))
        self.model = Model(balance.period_start, ALLOTMENT, ALLOTMENT, TOPUPS,
                           periods=[balance.period_start])
        self.period_end = balance.period_end
        self.near_end = False
        self.n = 0
        self.all_holds: dict[str, Hold] = {}  # every hold taken, by request id

    def _id(self) -> str:
        self.n += 1
        return f"{self.ws}-{self.n}"

    # --- rules ---------------------------------------------------------------

    @rule(credits=st.integers(1, 25), capped=st.booleans())
    def reserve(self, credits: int, capped: bool = False) -> None:
        m = self.model
        available = m.allotment_remaining + m.topups_remaining
        used = m.cap_used.get(m.period, 0)
        try:
            hold = self.loop.run(self.meter.reserve(self.ws, credits, self._id(),
                                                    (CAP,) if capped else ()))
        except InsufficientCredits:  # checked first: it wins when both would refuse
            assert credits > available, f"refused {credits} with {available} available"
            return
        except SpendCapReached:
            assert capped and credits <= available and used + credits > CAP.credits, \
                f"cap refused {credits} with {used} of {CAP.credits} used"
            return
        assert credits <= available, f"reserved {credits} with only {available} available"
        if capped:
            assert used + credits <= CAP.credits, f"cap passed: {used} + {credits}"
            m.cap_used[m.period] = used + credits
            m.capped.add(hold.request_id)
        from_allotment = min(credits, m.allotment_remaining)
        assert (hold.credits, hold.from_allotment, hold.from_topups, hold.period_start) == (
            credits, from_allotment, credits - from_allotment, m.period)
        m.allotment_remaining -= from_allotment
        m.topups_remaining -= credits - from_allotment
        m.holds[hold.request_id] = hold
        self.all_holds[hold.request_id] = hold

    def _reply(self, hold: Hold) -> Any:
        """The settle's entry; a capped hold's names its key, as the flow's does."""
        return reply(hold, key_id=CAP.subject.partition(":")[2]) \
            if hold.request_id in self.model.capped else reply(hold)

    def _pick(self, which: int) -> Hold:
        holds = sorted(self.model.holds.values(), key=lambda h: h.request_id)
        return holds[which % len(holds)]

    @precondition(lambda self: self.model.holds)
    @rule(which=st.integers(0, 100))
    def settle(self, which: int) -> None:
        hold = self._pick(which)
        self.loop.run(self.meter.settle(hold, self._reply(hold)))
        del self.model.holds[hold.request_id]
        self.model.settled[hold.request_id] = hold.credits

    @precondition(lambda self: self.model.holds)
    @rule(which=st.integers(0, 100))
    def void(self, which: int) -> None:
        hold = self._pick(which)
        self.loop.run(self.meter.void(hold))
        del self.model.holds[hold.request_id]
        self.model.give_back(hold)
        self.model.voided.add(hold.request_id)

    @precondition(lambda self: self.model.settled or self.model.voided)
    @rule(which=st.integers(0, 100), how=st.sampled_from(["settle", "void"]))
    def resolve_again(self, which: int, how: str) -> None:
        """Settle twice, settle after void, void after settle, void twice: no-ops."""
        done = sorted([*self.model.settled, *self.model.voided])
        hold = self.all_holds[done[which % len(done)]]
        if how == "settle":
            self.loop.run(self.meter.settle(hold, self._reply(hold)))
        else:
            self.loop.run(self.meter.void(hold))

    @precondition(lambda self: not self.near_end)
    @rule()
    def expire(self) -> None:
        """Every open hold passes its TTL; the sweep voids them."""
        self.backend.clock.advance(HOLD_TTL + 1)
        self.loop.run(self.meter.sweep())
        for hold in list(self.model.holds.values()):
            self.model.give_back(hold)
            self.model.voided.add(hold.request_id)
        self.model.holds.clear()

    @rule(credits=st.integers(1, 40))
    def topup(self, credits: int) -> None:
        assert self.loop.run(self.meter.grant(self.backend.topup(self.ws, credits, ref=self._id())))
        self.model.topups_remaining += credits

    @precondition(lambda self: not self.near_end and not self.model.holds)
    @rule()
    def approach_period_end(self) -> None:
        """The clock to 20 s before the period ends: holds taken now outlive the boundary."""
        end = dt.datetime.fromisoformat(self.period_end).replace(tzinfo=dt.UTC).timestamp()
        self.backend.clock.set(end - 20)
        self.near_end = True

    @precondition(lambda self: self.near_end)
    @rule()
    def renewal(self) -> None:
        """Cross the period end with holds open: a new allotment, old holds keep their period."""
        self.backend.clock.advance(21)
        self.near_end = False
        balance = self.loop.run(self.meter.balance(self.ws))
        assert balance.period_start > self.model.period
        m = self.model
        m.period, m.allotment_remaining = balance.period_start, m.allotment
        m.periods.append(balance.period_start)
        self.period_end = balance.period_end

    @precondition(lambda self: self.outbox is not None and self.model.holds)
    @rule(which=st.integers(0, 100))
    def settle_delivered_twice(self, which: int) -> None:
        assert self.outbox is not None
        hold = self._pick(which)
        self.loop.run(self.meter.settle(hold, self._reply(hold)))
        del self.model.holds[hold.request_id]
        self.model.settled[hold.request_id] = hold.credits
        assert self.loop.run(self.outbox.deliver_twice()) >= 1

    @precondition(lambda self: self.outbox is not None and self.model.holds)
    @rule(which=st.integers(0, 100))
    def settle_then_consumer_crash(self, which: int) -> None:
        assert self.outbox is not None
        hold = self._pick(which)
        self.loop.run(self.meter.settle(hold, self._reply(hold)))
        del self.model.holds[hold.request_id]
        self.model.settled[hold.request_id] = hold.credits
        assert self.loop.run(self.outbox.crash_after_commit()) >= 1

    # --- invariants ------------------------------------------------------------

    @invariant()
    def matches_the_model_and_the_ledger(self) -> None:
        m = self.model
        balance = self.loop.run(self.meter.balance(self.ws))
        assert (balance.period_start, balance.allotment, balance.allotment_remaining,
                balance.topups_remaining, balance.reserved) == (
            m.period, m.allotment, m.allotment_remaining, m.topups_remaining, m.reserved)
        assert balance.allotment_remaining >= 0 and balance.topups_remaining >= 0  # no overdraft
        self.loop.run(assert_equation(self.backend, self.meter, self.ws, list(m.holds.values())))
        rows = self.loop.run(self.backend.ledger(self.ws))
        charged = {r["request_id"]: r["credits"] for r in rows if r["kind"] == "reply"}
        assert len([r for r in rows if r["kind"] == "reply"]) == len(charged)  # one per request
        assert charged == m.settled
        for row in rows:
            if row["kind"] == "reply":
                hold = self.all_holds[row["request_id"]]
                assert (row["allotment_delta"], row["topup_delta"], row["period_start"]) == (
                    -hold.from_allotment, -hold.from_topups, hold.period_start)
        renewals = [r["period_start"] for r in rows if r["kind"] == "allotment"]
        assert renewals == m.periods  # one renewal per period, in order
        cap_used = self.loop.run(self.meter.cap_usage(self.ws, (CAP,)))[CAP.subject]
        assert cap_used == m.cap_used.get(m.period, 0) <= CAP.credits  # caps hold, exactly


# --- running it --------------------------------------------------------------------


@pytest.fixture
def machine_backend(request: pytest.FixtureRequest, tmp_path: Path
                    ) -> Iterator[tuple[MeterBackend, Loop, Outbox | None]]:
    name: str = request.param
    if name.endswith("postgres"):
        request.getfixturevalue("postgres_url")  # resolved here, on the test's thread
    if name.startswith("redis"):
        request.getfixturevalue("redis_url")
    loop = Loop()
    clock = ManualClock(START)
    outbox: Outbox | None = None
    if name.startswith("redis"):
        backend, outbox = loop.run(redis_backend(request, tmp_path, clock,
                                                 name.endswith("postgres")))
    else:
        backend = loop.run(BUILDERS[name](request, tmp_path, clock))
    try:
        yield backend, loop, outbox
    finally:
        loop.run(backend.close())
        loop.close()


def run_machine(backend: MeterBackend, loop: Loop, outbox: Outbox | None, *,
                examples: int, steps: int) -> None:
    chosen = int(os.environ.get("BOOKBAG_TEST_SEED") or random.randrange(2**32))
    machine = type("Machine", (MeterMachine,), {"backend": backend, "loop": loop,
                                                "outbox": outbox})
    test = get_state_machine_test(machine, settings=settings(
        max_examples=examples, stateful_step_count=steps, deadline=None, database=None,
        print_blob=True, suppress_health_check=list(HealthCheck)))
    try:
        seed(chosen)(test)()
    except BaseException:
        print(f"\nmeter model failed on {backend.name}: replay with BOOKBAG_TEST_SEED={chosen}")
        raise
    if outbox is not None:  # whatever the draw, the Redis rules run at least once
        scripted = machine()
        scripted.reserve(5)
        scripted.reserve(3)
        scripted.settle_then_consumer_crash(0)
        scripted.matches_the_model_and_the_ledger()
        scripted.settle_delivered_twice(0)
        scripted.matches_the_model_and_the_ledger()
        assert outbox.crashed and outbox.redelivered, (outbox.crashed, outbox.redelivered)


@pytest.mark.parametrize("machine_backend", ["memory-sqlite", "redis-sqlite"], indirect=True)
def test_meter_model(machine_backend: tuple[MeterBackend, Loop, Outbox | None]) -> None:
    run_machine(*machine_backend, examples=12, steps=25)


@pytest.mark.slow
@pytest.mark.parametrize("machine_backend", ["memory-sqlite", "sql-sqlite", "sql-postgres",
                                             "redis-sqlite", "redis-postgres"], indirect=True)
def test_meter_model_long(machine_backend: tuple[MeterBackend, Loop, Outbox | None]) -> None:
    run_machine(*machine_backend, examples=15, steps=35)
