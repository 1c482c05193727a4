"""The Meter contract's trimmed settles (DESIGN "Meter, caps and fallbacks"), on every backend.

A fallback that answered with a cheaper model settles its hold for less:
`settle(hold, entry, credits)` charges the allotment first and gives the rest
back to its buckets and caps in the same atomic step; a trim never resolves a
hold twice, and under concurrency charges still equal the ledger and never
pass the balance.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import InsufficientCredits, SpendCapReached
from gateway.metering.base import Meter, trim
from gateway.types import Cap, Hold
from tests.meter_contract import MeterBackend, assert_equation, replies, reply

KEY = Cap("key:key_t", 20)


def test_trim_takes_the_allotment_first() -> None:
    hold = Hold("r", "w", 15, 10, 5, "2026-01-01", 0.0, ("key:k",))
    charged, rest = trim(hold, 12)
    assert (charged.credits, charged.from_allotment, charged.from_topups) == (12, 10, 2)
    assert rest is not None and (rest.credits, rest.from_allotment, rest.from_topups) == (3, 0, 3)
    assert rest.caps == hold.caps and trim(hold, None) == (hold, None) == trim(hold, 15)
    with pytest.raises(ValueError, match=r"0\.\.15 credits, not 16"):
        trim(hold, 16)


class TrimContract:
    async def test_a_trimmed_settle_charges_less_and_gives_the_rest_back(
            self, backend: MeterBackend) -> None:
        meter = await backend.meter()
        ws = await backend.workspace(allotment=10, topups=10)
        hold = await meter.reserve(ws, 15, "t1")
        assert (hold.from_allotment, hold.from_topups) == (10, 5)
        await meter.settle(hold, reply(hold), 12)
        balance = await assert_equation(backend, meter, ws, [])
        assert (balance.allotment_remaining, balance.topups_remaining, balance.reserved) == (0, 8, 0)
        [row] = replies(await backend.ledger(ws))
        assert (row["credits"], row["allotment_delta"], row["topup_delta"]) == (12, -10, -2)

    async def test_a_trim_gives_cap_usage_back_and_resolves_once(
            self, backend: MeterBackend) -> None:
        meter = await backend.meter()
        ws = await backend.workspace(allotment=100)
        hold = await meter.reserve(ws, 15, "c1", (KEY,))
        with pytest.raises(SpendCapReached):
            await meter.reserve(ws, 6, "c2", (KEY,))
        await meter.settle(hold, reply(hold), 5)
        await meter.settle(hold, reply(hold), 5)  # resolved already: nothing more
        await meter.void(hold)
        assert await meter.cap_usage(ws, (KEY,)) == {KEY.subject: 5}
        second = await meter.reserve(ws, 15, "c3", (KEY,))  # 5 charged + 15 held = 20
        await meter.void(second)
        balance = await assert_equation(backend, meter, ws, [])
        assert balance.available == 95
        assert [r["credits"] for r in replies(await backend.ledger(ws))] == [5]

    async def test_concurrent_trimmed_settles_never_overdraw(self, backend: MeterBackend) -> None:
        meters = await backend.peers(3)
        ws = await backend.workspace(allotment=40, topups=20)

        async def one(meter: Meter, i: int) -> int:
            try:
                hold = await meter.reserve(ws, 5, f"x-{ws}-{i}")
            except InsufficientCredits:
                return 0
            await asyncio.sleep(0)
            await meter.settle(hold, reply(hold), 2)
            return 2

        charged = await asyncio.gather(*(one(meters[i % 3], i) for i in range(60)))
        rows = replies(await backend.ledger(ws))
        assert sum(charged) == sum(r["credits"] for r in rows) <= 60
        assert sum(charged) >= 24  # 60 / 5 holds at the least, each charged 2
        balance = await assert_equation(backend, meters[0], ws, [])
        assert balance.available == 60 - sum(charged) and balance.reserved == 0
