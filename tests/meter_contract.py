"""The `Meter` contract: what every balance backend does, whatever stores the balances.

A backend is described by a `MeterBackend` (how to make a meter on it, the
SQL database that holds workspaces and the ledger, a way to wait until what
the meters wrote has reached that ledger). `MeterContract` holds the tests;
a test module subclasses it and provides a `backend` fixture, so a new
backend (Redis) runs this suite unchanged by adding one fixture param.
`SharedMeterContract` adds the tests for backends that several processes
serve at once (every meter instance has its own connections).

Every test drives a `ManualClock`: holds expire and billing periods renew
when the test moves it, never by waiting.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from gateway.accounts.workspaces import Accounts, allotment_of
from gateway.catalog import Catalog, parse
from gateway.clock import Clock, ManualClock
from gateway.errors import InsufficientCredits
from gateway.metering.base import Meter
from gateway.storage.database import transaction
from gateway.storage.schema import LEDGER_COLUMNS
from gateway.types import Balance, EntryKind, Hold, LedgerEntry

HOLD_TTL = 60.0
# 2026-03-15 12:00:00 UTC: workspaces created now are anchored on the 15th.
START = dt.datetime(2026, 3, 15, 12, tzinfo=dt.UTC).timestamp()
PLAN = "enterprise"  # custom allotment per workspace, so each test picks its own


def catalog() -> Catalog:
    return parse({
        "models": {"m1": {"provider": "openai", "credits": 1, "api_base": "http://127.0.0.1:9"}},
        "plans": {"free": {"credits": 100}, "enterprise": {"credits": "custom"}},
    })


async def _nothing() -> None:
    return None


@dataclass
class MeterBackend:
    """One balance store under test.

    `make(clock)` builds a new, unstarted meter; on a `shared` backend each
    call gets its own connections, as another gateway process would.
    `flush()` returns once everything the meters wrote is in the SQL ledger.
    `teardown` runs last-first after the meters are closed.
    """

    name: str
    clock: ManualClock
    engine: Engine
    accounts: Accounts
    make: Callable[[Clock], Meter]
    shared: bool
    flush: Callable[[], Awaitable[None]] = _nothing
    teardown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _meters: list[Meter] = field(default_factory=list)

    async def start(self) -> Meter:
        meter = self.make(self.clock)
        await meter.start()
        self._meters.append(meter)
        return meter

    async def meter(self) -> Meter:
        return self._meters[0] if self._meters else await self.start()

    async def peers(self, n: int) -> list[Meter]:
        """n meters serving the same balances: separate instances when the backend is shared."""
        first = await self.meter()
        if not self.shared:
            return [first] * n
        while len(self._meters) < n:
            await self.start()
        return self._meters[:n]

    async def close(self) -> None:
        for meter in reversed(self._meters):
            await meter.close()
        self._meters.clear()
        for job in reversed(self.teardown):
            await job()

    # --- helpers ---------------------------------------------------------

    async def workspace(self, allotment: int, topups: int = 0) -> str:
        ws = await asyncio.to_thread(
            self.accounts.create_workspace, "contract", PLAN, custom_allotment=allotment)
        if topups:
            assert await (await self.meter()).grant(self.topup(ws.id, topups))
        return ws.id

    def topup(self, workspace_id: str, credits: int, kind: EntryKind = EntryKind.TOPUP,
              ref: str | None = None) -> LedgerEntry:
        return self.accounts.topup_entry(workspace_id, credits, kind=kind, ref=ref)

    async def ledger(self, workspace_id: str) -> list[dict[str, Any]]:
        """The workspace's ledger rows, in order, read from SQL alone."""
        await self.flush()

        def read() -> list[dict[str, Any]]:
            with transaction(self.engine) as (cur, sql):
                cur.execute(sql(f"SELECT {', '.join(LEDGER_COLUMNS)} FROM ledger "
                                "WHERE workspace_id = ? ORDER BY seq"), (workspace_id,))
                return [dict(zip(LEDGER_COLUMNS, row, strict=True)) for row in cur.fetchall()]

        return await asyncio.to_thread(read)

    def cross_period(self, balance: Balance, seconds: float = 1.0) -> None:
        """Move the clock just past the end of `balance`'s period."""
        end = dt.datetime.fromisoformat(balance.period_end).replace(tzinfo=dt.UTC)
        self.clock.set(end.timestamp() + seconds)


def reply(hold: Hold, **fields: Any) -> LedgerEntry:
    """The entry a successful reply settles with (the meter fills in the charge)."""
    return LedgerEntry(request_id=hold.request_id, workspace_id=hold.workspace_id,
                       model="m1", provider="openai", replies=1, **fields)


def replies(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["kind"] == EntryKind.REPLY]


async def reserve_many(meter: Meter, workspace_id: str, n: int, credits: int = 1,
                       prefix: str = "r") -> tuple[list[Hold], list[BaseException]]:
    results = await asyncio.gather(
        *(meter.reserve(workspace_id, credits, f"{prefix}-{workspace_id}-{i}") for i in range(n)),
        return_exceptions=True,
    )
    return split(results)


def split(results: Sequence[object]) -> tuple[list[Hold], list[BaseException]]:
    holds = [r for r in results if isinstance(r, Hold)]
    errors = [r for r in results if isinstance(r, BaseException)]
    unexpected = [e for e in errors if not isinstance(e, InsufficientCredits)]
    assert not unexpected, f"reserve failed with something other than 402: {unexpected[:3]!r}"
    return holds, errors


async def spread(meters: list[Meter], workspace_id: str, n: int, credits: int = 1,
                 prefix: str = "r") -> tuple[list[Hold], list[BaseException]]:
    """n concurrent reserves dealt round-robin over `meters`."""
    results = await asyncio.gather(
        *(meters[i % len(meters)].reserve(workspace_id, credits, f"{prefix}-{workspace_id}-{i}")
          for i in range(n)),
        return_exceptions=True,
    )
    return split(results)


async def assert_equation(backend: MeterBackend, meter: Meter, workspace_id: str,
                          open_holds: Sequence[Hold]) -> Balance:
    """The balance equation, with the ledger's side recomputed from its rows alone."""
    balance = await meter.balance(workspace_id)
    rows = await backend.ledger(workspace_id)
    period = balance.period_start
    in_period = [r for r in rows if r["period_start"] == period]
    assert balance.allotment_remaining + sum(
        h.from_allotment for h in open_holds if h.period_start == period
    ) == sum(r["allotment_delta"] for r in in_period)
    assert balance.topups_remaining + sum(h.from_topups for h in open_holds) == sum(
        r["topup_delta"] for r in rows)
    assert balance.reserved == sum(h.credits for h in open_holds)
    assert balance.allotment == sum(
        r["allotment_delta"] for r in in_period if r["kind"] == EntryKind.ALLOTMENT)
    return balance


# A random session against one workspace: (op, argument).
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.integers(1, 30)),
        st.tuples(st.just("settle"), st.integers(0, 50)),
        st.tuples(st.just("void"), st.integers(0, 50)),
        st.tuples(st.just("topup"), st.integers(1, 40)),
        st.tuples(st.just("adjust"), st.integers(-20, 20).filter(bool)),
        st.tuples(st.just("advance"), st.integers(1, 40 * 24)),  # hours; may cross periods
        st.tuples(st.just("sweep"), st.just(0)),
    ),
    min_size=1,
    max_size=25,
)


class MeterContract:
    """The tests every Meter backend passes. Subclasses provide a `backend` fixture."""

    # --- buckets and balance -----------------------------------------------

    async def test_new_workspace_has_its_allotment_at_once(self, backend: MeterBackend) -> None:
        meter = await backend.meter()
        ws = await backend.workspace(allotment=100)
        balance = await meter.balance(ws)
        assert (balance.workspace_id, balance.plan) == (ws, PLAN)
        assert (balance.allotment, balance.allotment_remaining, balance.topups_remaining) == (
            100, 100, 0)
        assert balance.reserved == 0 and balance.available == 100
        assert (balance.period_start, balance.period_end) == ("2026-03-15", "2026-04-15")
        rows = await backend.ledger(ws)
        assert [(r["kind"], r["allotment_delta"], r["period_start"]) for r in rows] == [
            ("allotment", 100, "2026-03-15")]

    async def test_reserve_takes_allotment_first_then_topups(self, backend: MeterBackend) -> None:
        meter = await backend.meter()
        ws = await backend.workspace(allotment=10, topups=5)
        first = await meter.reserve(ws, 8, "a")
        assert (first.credits, first.from_allotment, first.from_topups) == (8, 8, 0)
        assert first.period_start == "2026-03-15" and first.workspace_id == ws
        assert first.expires_at == pytest.approx(backend.clock.now() + HOLD_TTL, abs=1)
        second = await meter.reserve(ws, 4, "b")
        assert (second.from_allotment, second.from_topups) == (2, 2)
        third = await meter.reserve(ws, 3, "c")
        assert (third.from_allotment, third.from_topups) == (0, 3)
        balance = await meter.balance(ws)
        assert (balance.allotment, balance.allotment_remaining, balance.topups_remaining) == (10, 0, 0)
        assert balance.reserved == 15
        assert replies(await backend.ledger(ws)) == []  # holds are not charges

    async def test_reserve_beyond_the_balance_is_refused_and_changes_nothing(
        self, backend: MeterBackend
    ) -> None:
        meter = await backend.meter()
        ws = await backend.workspace(allotment=10, topups=5)
        await meter.reserve(ws, 6, "a")
        before, rows = await meter.balance(ws), await backend.ledger(ws)
        with pytest.raises(InsufficientCredits) as refused:
            await meter.reserve(ws, 10, "b")
        assert refused.value.status == 402 and refused.value.code == "insufficient_credits"
        assert "balance is 9" in refused.value.message and "2026-04-15" in refused.value.message
        assert await meter.balance(ws) == before
        assert await backend.ledger(ws) == rows
        exact = await meter.reserve(ws, 9, "b")  # the refused id can be used again
        assert (exact.from_allotment, exact.from_topups) == (4, 5)
        with pytest.raises(InsufficientCredits):
            await meter.reserve(ws, 1, "c")
        assert (await meter.balance(ws)).available == 0

    async def test_grant_applies_once(self, backend: MeterBackend) -> None:
        meter = await backend.meter()
        ws = await backend.workspace(allotment=10)
        topup = backend.topup(ws, 25, ref="order-1")
        assert await meter.grant(topup) is True
        assert await meter.grant(backend.topup(ws, 25, ref="order-1")) is False
        balance = await meter.balance(ws)
        assert (balance.allotment_remaining, balance.topups_remaining) == (10, 25)
        adjustment = backend.topup(ws, -7, kind=EntryKind.ADJUSTMENT, ref="refund-1")
        assert await meter.grant(adjustment) is True
        assert await meter.grant(backend.topup(ws, -7, kind=EntryKind.ADJUSTMENT,
                                               ref="refund-1")) is False
        balance = await meter.balance(ws)
        assert (balance.allotment, balance.allotment_remaining, balance.topups_remaining) == (
            10, 10, 18)
        grants = [(r["kind"], r["topup_delta"]) for r in await backend.ledger(ws)
                  if r["kind"] != "allotment"]
        assert grants == [("topup", 25), ("adjustment", -7)]
        hold = await meter.reserve(ws, 28, "all")
        assert (hold.from_allotment, hold.from_topups) == (10, 18)

    # --- settle and void ---------------------------------------------------

    async def test_settle_writes_exactly_one_entry_with_the_bucket_split(
        self, backend: MeterBackend
    ) -> None:
        meter = await backend.meter()
        ws = await backend.workspace(allotment=10, topups=5)
        await meter.reserve(ws, 8, "first")
        hold = await meter.reserve(ws, 4, "second")
        await meter.settle(hold, reply(hold, agent_id="agent-7", conversation_id="c-1",
                                       key_id="key_1", prompt_tokens=11, completion_tokens=3))
        rows = replies(await backend.ledger(ws))
        assert len(rows) == 1
        row = rows[0]
        assert row["request_id"] == "second" and row["billing_mode"] == "metered"
        assert (row["credits"], row["allotment_delta"], row["topup_delta"]) == (4, -2, -2)
        assert row["period_start"] == "2026-03-15"
        assert (row["agent_id"], row["conversation_id"], row["model"], row["prompt_tokens"]) == (
            "agent-7", "c-1", "m1", 11)
        balance = await meter.balance(ws)
        assert (balance.allotment_remaining, balance.topups_remaining, balance.reserved) == (0, 3, 8)

    async def test_the_balance_a_settle_returns_is_what_balance_says_next(
        self, backend: MeterBackend
    ) -> None:
        """A settle may hand back the balance it read (the reply's remaining-credits header,
        without another round trip): it must be exactly what `balance()` answers then, and
        None once the period has ended (only `balance()` renews)."""
        meter = await backend.meter()
        ws = await backend.workspace(allotment=10, topups=5)
        await meter.reserve(ws, 3, "open")
        hold = await meter.reserve(ws, 4, "now")
        after = await meter.settle(hold, reply(hold))
        if after is not None:
            assert after == await meter.balance(ws)
            assert (after.available, after.reserved) == (8, 3)
        late = await meter.reserve(ws, 2, "late")
        backend.cross_period(await meter.balance(ws))
        assert await meter.settle(late, reply(late)) is None
        assert (await meter.balance(ws)).period_start == "2026-04-15"

    @pytest.mark.parametrize(
        ("first", "second"),
        [("settle", "settle"), ("settle", "void"), ("void", "settle"), ("void", "void")],
    )
    async def test_a_hold_resolves_exactly_once(
        self, backend: MeterBackend, first: str, second: str
    ) -> None:
        meter = await backend.meter()
        ws = await backend.workspace(allotment=10, topups=5)
        hold = await meter.reserve(ws, 12, "once")

        async def resolve(how: str) -> None:
            if how == "settle":
                await meter.settle(hold, reply(hold))
            else:
                await meter.void(hold)

        await resolve(first)
        after_first, rows = await meter.balance(ws), await backend.ledger(ws)
        expected = (0, 3) if first == "settle" else (10, 5)
        assert (after_first.allotment_remaining, after_first.topups_remaining) == expected
        assert after_first.reserved == 0
        assert len(replies(rows)) == (1 if first == "settle" else 0)
        await resolve(second)
        assert await meter.balance(ws) == after_first
        assert await backend.ledger(ws) == rows

    async def test_void_returns_credits_to_their_buckets(self, backend: MeterBackend) -> None:
        meter = await backend.meter()
        ws = await backend.workspace(allotment=10, topups=5)
        hold = await meter.reserve(ws, 12, "v")
        await meter.void(hold)
        balance = await meter.balance(ws)
        assert (balance.allotment_remaining, balance.topups_remaining, balance.reserved) == (10, 5, 0)
        assert replies(await backend.ledger(ws)) == []

    async def test_void_after_the_period_ended_returns_only_topups(
        self, backend: MeterBackend
    ) -> None:
        meter = await backend.meter()
        ws = await backend.workspace(allotment=10, topups=5)
        early = await meter.reserve(ws, 6, "early")  # 6 from the allotment
        late = await meter.reserve(ws, 7, "late")  # 4 from the allotment, 3 from top-ups
        backend.cross_period(await meter.balance(ws))
        await meter.void(early)  # before anything noticed the new period
        renewed = await meter.balance(ws)
        assert renewed.period_start == "2026-04-15"
        assert (renewed.allotment_remaining, renewed.topups_remaining, renewed.reserved) == (10, 2, 7)
        await meter.void(late)  # after the renewal
        balance = await meter.balance(ws)
        # The old allotment lapsed; the new one is whole, the top-ups came back.
        assert (balance.allotment, balance.allotment_remaining, balance.topups_remaining) == (
            10, 10, 5)
        assert balance.reserved == 0
        await assert_equation(backend, meter, ws, [])

    async def test_settle_and_void_racing_resolve_once(self, backend: MeterBackend) -> None:
        meters = await backend.peers(2)
        ws = await backend.workspace(allotment=100)
        holds = [await meters[0].reserve(ws, 2, f"race-{i}") for i in range(20)]
        await asyncio.gather(*(
            job for i, h in enumerate(holds)
            for job in (meters[i % 2].settle(h, reply(h)), meters[(i + 1) % 2].void(h))
        ))
        settled = {r["request_id"] for r in replies(await backend.ledger(ws))}
        balance = await meters[0].balance(ws)
        assert balance.reserved == 0
        assert balance.allotment_remaining == 100 - 2 * len(settled)
        await assert_equation(backend, meters[0], ws, [])

    # --- concurrency -------------------------------------------------------

    async def test_concurrent_reserves_never_overdraw(self, backend: MeterBackend) -> None:
        meters = await backend.peers(2)
        ws = await backend.workspace(allotment=30, topups=20)
        holds, refused = await spread(meters, ws, 200)
        assert len(holds) == 50 and len(refused) == 150
        assert sum(h.from_allotment for h in holds) == 30
        assert sum(h.from_topups for h in holds) == 20
        balance = await meters[1].balance(ws)
        assert (balance.available, balance.reserved) == (0, 50)
        await asyncio.gather(*(meters[i % 2].settle(h, reply(h)) for i, h in enumerate(holds)))
        rows = replies(await backend.ledger(ws))
        assert len(rows) == 50 and sum(r["credits"] for r in rows) == 50
        assert len({r["request_id"] for r in rows}) == 50
        balance = await meters[0].balance(ws)
        assert (balance.available, balance.reserved) == (0, 0)
        await assert_equation(backend, meters[0], ws, [])

    async def test_concurrent_reserves_of_mixed_sizes_never_overdraw(
        self, backend: MeterBackend
    ) -> None:
        meters = await backend.peers(2)
        ws = await backend.workspace(allotment=101)
        results = await asyncio.gather(*(
            meters[i % 2].reserve(ws, 1 + i % 3, f"mix-{i}") for i in range(150)
        ), return_exceptions=True)
        holds, _ = split(results)
        assert sum(h.credits for h in holds) <= 101
        balance = await meters[0].balance(ws)
        assert balance.reserved == sum(h.credits for h in holds)
        assert balance.available == 101 - balance.reserved
        # Refusals happened only once the balance was short for that request.
        refused_costs = [1 + i % 3 for i, r in enumerate(results) if not isinstance(r, Hold)]
        assert refused_costs and balance.available < min(refused_costs)
        await asyncio.gather(*(meters[0].void(h) for h in holds))
        assert (await meters[1].balance(ws)).available == 101

    # --- expiry ------------------------------------------------------------

    async def test_expired_holds_are_voided_by_the_sweep(self, backend: MeterBackend) -> None:
        meter = await backend.meter()
        ws = await backend.workspace(allotment=10, topups=5)
        settled = await meter.reserve(ws, 3, "settled")
        stale = await meter.reserve(ws, 9, "stale")  # 7 from the allotment, 2 from top-ups
        await meter.settle(settled, reply(settled))
        backend.clock.advance(HOLD_TTL / 2)
        await meter.sweep()
        assert (await meter.balance(ws)).reserved == 9  # not expired yet
        backend.clock.advance(HOLD_TTL)
        late = await meter.reserve(ws, 1, "late")  # taken after the others, not expired
        await meter.sweep()
        balance = await assert_equation(backend, meter, ws, [late])
        assert (balance.allotment_remaining, balance.topups_remaining, balance.reserved) == (7, 4, 1)
        await meter.void(late)
        balance = await assert_equation(backend, meter, ws, [])
        ledger_balance = sum(r["allotment_delta"] + r["topup_delta"] for r in
                             await backend.ledger(ws))
        assert balance.available + balance.reserved == ledger_balance == 12
        # The swept hold is resolved: a late settle or void changes nothing.
        rows = await backend.ledger(ws)
        await meter.settle(stale, reply(stale))
        await meter.void(stale)
        assert await backend.ledger(ws) == rows
        assert await meter.balance(ws) == balance

    # --- periods -----------------------------------------------------------

    async def test_lazy_renewal_racing_with_reserves(self, backend: MeterBackend) -> None:
        meters = await backend.peers(2)
        ws = await backend.workspace(allotment=100, topups=30)
        big = await meters[0].reserve(ws, 90, "old-big")  # 90 from the allotment
        split_hold = await meters[1].reserve(ws, 20, "old-split")  # 10 allotment + 10 top-ups
        assert (split_hold.from_allotment, split_hold.from_topups) == (10, 10)
        spent = await meters[0].reserve(ws, 5, "old-spent")  # 5 from top-ups, settled now
        await meters[0].settle(spent, reply(spent))
        old = await meters[0].balance(ws)
        assert (old.allotment_remaining, old.topups_remaining) == (0, 15)

        backend.cross_period(old)
        jobs: list[Awaitable[object]] = [
            meters[i % 2].reserve(ws, 1, f"new-{i}") for i in range(200)]
        jobs += [meters[i % 2].balance(ws) for i in range(10)]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        holds, refused = split([r for r in results if not isinstance(r, Balance)])
        # No rollover: the new period has the plan's 100, plus the 15 top-ups left.
        assert len(holds) == 115 and len(refused) == 85
        assert {h.period_start for h in holds} == {"2026-04-15"}
        assert sum(h.from_allotment for h in holds) == 100
        rows = await backend.ledger(ws)
        renewals = [r for r in rows if r["kind"] == "allotment"]
        assert [(r["period_start"], r["allotment_delta"]) for r in renewals] == [
            ("2026-03-15", 100), ("2026-04-15", 100)]

        # Holds from the old period settle into the old period ...
        await meters[1].settle(big, reply(big))
        row = next(r for r in await backend.ledger(ws) if r["request_id"] == "old-big")
        assert (row["period_start"], row["allotment_delta"], row["topup_delta"]) == (
            "2026-03-15", -90, 0)
        # ... and voiding one after the boundary returns only its top-up part.
        await meters[0].void(split_hold)
        balance = await meters[1].balance(ws)
        assert (balance.allotment, balance.allotment_remaining, balance.topups_remaining) == (
            100, 0, 10)
        assert balance.period_start == "2026-04-15" and balance.period_end == "2026-05-15"
        await assert_equation(backend, meters[0], ws, holds)
        more, refused = await reserve_many(meters[1], ws, 11, prefix="after")
        assert len(more) == 10 and len(refused) == 1
        assert all(h.from_topups == 1 for h in more)

    async def test_a_balance_read_renews_once_and_grants_land_in_the_new_period(
        self, backend: MeterBackend
    ) -> None:
        meter = await backend.meter()
        ws = await backend.workspace(allotment=50, topups=5)
        hold = await meter.reserve(ws, 30, "used")
        await meter.settle(hold, reply(hold))
        backend.cross_period(await meter.balance(ws), seconds=3600)
        balances = await asyncio.gather(*(meter.balance(ws) for _ in range(20)))
        assert {(b.period_start, b.allotment, b.allotment_remaining, b.topups_remaining)
                for b in balances} == {("2026-04-15", 50, 50, 5)}
        assert await meter.grant(backend.topup(ws, 7)) is True
        balance = await meter.balance(ws)
        assert (balance.allotment_remaining, balance.topups_remaining) == (50, 12)
        renewals = [r for r in await backend.ledger(ws) if r["kind"] == "allotment"]
        assert [r["period_start"] for r in renewals] == ["2026-03-15", "2026-04-15"]
        # Two months on with no traffic: one renewal for the current period, none for the skipped one.
        backend.clock.set(dt.datetime(2026, 6, 20, tzinfo=dt.UTC).timestamp())
        balance = await meter.balance(ws)
        assert (balance.period_start, balance.allotment_remaining, balance.topups_remaining) == (
            "2026-06-15", 50, 12)
        renewals = [r for r in await backend.ledger(ws) if r["kind"] == "allotment"]
        assert [r["period_start"] for r in renewals] == ["2026-03-15", "2026-04-15", "2026-06-15"]

    # --- the balance equation ----------------------------------------------

    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(ops=_OPS)
    async def test_balance_equation_after_any_sequence(
        self, backend: MeterBackend, ops: list[tuple[str, int]]
    ) -> None:
        meter = await backend.meter()
        ws = await backend.workspace(allotment=40, topups=10)
        open_holds: list[Hold] = []
        for step, (op, arg) in enumerate(ops):
            if op == "reserve":
                before = await meter.balance(ws)
                try:
                    open_holds.append(await meter.reserve(ws, arg, f"{ws}-{step}"))
                except InsufficientCredits:
                    assert arg > before.available
                else:
                    assert arg <= before.available
            elif op in ("settle", "void") and open_holds:
                hold = open_holds.pop(arg % len(open_holds))
                if op == "settle":
                    await meter.settle(hold, reply(hold))
                else:
                    await meter.void(hold)
            elif op == "topup":
                assert await meter.grant(backend.topup(ws, arg))
            elif op == "adjust":
                floor = -(await meter.balance(ws)).topups_remaining
                if max(arg, floor):
                    assert await meter.grant(
                        backend.topup(ws, max(arg, floor), kind=EntryKind.ADJUSTMENT))
            elif op == "advance":
                backend.clock.advance(arg * 3600)
            elif op == "sweep":
                await meter.sweep()
                now = backend.clock.now()
                open_holds = [h for h in open_holds if h.expires_at > now]
            await assert_equation(backend, meter, ws, open_holds)
        settled = replies(await backend.ledger(ws))
        assert len({r["request_id"] for r in settled}) == len(settled)


async def in_threads(backend: MeterBackend, count: int,
                     work: Callable[[Meter, int], Awaitable[None]]) -> list[BaseException]:
    """Run `work(meter, n)` on `count` threads, each with its own event loop and its own meter
    (connections and all), as that many gateway processes would, released together by a
    barrier; the exceptions any of them raised."""
    barrier = threading.Barrier(count)
    crashed: list[BaseException] = []

    async def process(n: int) -> None:
        meter = backend.make(backend.clock)
        await meter.start()
        try:
            await asyncio.to_thread(barrier.wait, 30)
            await work(meter, n)
        finally:
            await meter.close()

    def run(n: int) -> None:
        try:
            asyncio.run(process(n))
        except BaseException as exc:
            crashed.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        await asyncio.to_thread(t.join, 60)
    return crashed


class SharedMeterContract:
    """Backends that several gateway processes serve at once (each meter has its own connections)."""

    async def test_reserves_from_several_threads_never_overdraw(
        self, backend: MeterBackend
    ) -> None:
        """Four meters, each on its own thread with its own event loop, as four processes would."""
        ws = await backend.workspace(allotment=50)
        outcomes: list[tuple[list[Hold], list[BaseException]]] = []

        async def work(meter: Meter, n: int) -> None:
            outcomes.append(await reserve_many(meter, ws, 50, prefix=f"p{n}"))

        crashed = await in_threads(backend, 4, work)
        assert not crashed, crashed
        assert len(outcomes) == 4
        holds = [h for got, _ in outcomes for h in got]
        assert len(holds) == 50 and sum(len(refused) for _, refused in outcomes) == 150
        meter = await backend.meter()
        balance = await meter.balance(ws)
        assert (balance.available, balance.reserved) == (0, 50)
        # Any process may resolve a hold another one took.
        await asyncio.gather(*(meter.settle(h, reply(h)) for h in holds))
        assert len(replies(await backend.ledger(ws))) == 50
        await assert_equation(backend, meter, ws, [])

    async def test_one_process_sees_what_another_reserved_and_granted(
        self, backend: MeterBackend
    ) -> None:
        a, b = await backend.peers(2)
        ws = await backend.workspace(allotment=10)
        hold = await a.reserve(ws, 7, "seen")
        assert (await b.balance(ws)).reserved == 7
        assert await b.grant(backend.topup(ws, 5)) is True
        assert (await a.balance(ws)).available == 8
        await b.void(hold)
        assert (await a.balance(ws)).available == 15


def allotment_for(cat: Catalog) -> Callable[[str, int | None], int]:
    """The meters' plan-allotment function for a test catalog."""
    def allotment(plan: str, custom: int | None) -> int:
        return allotment_of(cat, plan, custom)

    return allotment


def dispose(engine: Engine) -> Callable[[], Awaitable[None]]:
    """A backend teardown step closing an engine's pool."""
    async def job() -> None:
        engine.dispose()

    return job


async def emptied(backend: MeterBackend) -> MeterBackend:
    """A PostgreSQL backend with every table emptied, so each test starts clean."""
    try:
        with transaction(backend.engine) as (cur, _):
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                        "AND tablename <> 'alembic_version'")
            tables = ", ".join(row[0] for row in cur.fetchall())
            cur.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    except BaseException:
        await backend.close()
        raise
    return backend
