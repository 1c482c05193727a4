"""The Meter contract's spend-cap cases (SPEC "Spend controls"), run on every backend.

A cap is checked in the same atomic step as the balance: under concurrency
(asyncio.gather, and meters on threads of their own as processes would be) no
cap is passed; holds in flight count; a void gives its share back; the
balance's refusal wins; caps reset with the period.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway.errors import InsufficientCredits, SpendCapReached
from gateway.metering.base import Meter
from gateway.types import Cap, Hold
from tests.meter_contract import MeterBackend, in_threads, reply

KEY = Cap("key:key_a", 20)
AGENT = Cap("agent:planner", 30)


async def gather_reserves(meters: Sequence[Meter], ws: str, n: int, caps: tuple[Cap, ...],
                          prefix: str, credits: int = 1) -> tuple[list[Hold], list[BaseException]]:
    results = await asyncio.gather(
        *(meters[i % len(meters)].reserve(ws, credits, f"{prefix}-{ws}-{i}", caps)
          for i in range(n)),
        return_exceptions=True)
    holds = [r for r in results if isinstance(r, Hold)]
    errors = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(e, SpendCapReached) for e in errors), errors[:3]
    return holds, errors


class CapContract:
    async def test_a_cap_counts_holds_in_flight_and_a_void_gives_back(
            self, backend: MeterBackend) -> None:
        meter = await backend.meter()
        ws = await backend.workspace(allotment=100)
        first = await meter.reserve(ws, 12, "a1", (KEY,))
        with pytest.raises(SpendCapReached) as refused:
            await meter.reserve(ws, 9, "a2", (KEY,))
        message = str(refused.value)
        assert "key 'key_a'" in message and "20" in message and "12" in message
        assert "resets on" in message
        assert refused.value.headers == {"x-should-retry": "false"}
        assert (await meter.balance(ws)).available == 88  # the refusal took nothing
        await meter.void(first)
        second = await meter.reserve(ws, 9, "a3", (KEY,))
        await meter.settle(second, reply(second))
        third = await meter.reserve(ws, 11, "a4", (KEY,))  # 9 charged + 11 held = 20
        assert await meter.cap_usage(ws, (KEY, AGENT)) == {KEY.subject: 20, AGENT.subject: 0}
        with pytest.raises(SpendCapReached):
            await meter.reserve(ws, 1, "a5", (KEY,))
        await meter.reserve(ws, 50, "uncapped")  # the workspace itself is not capped
        await meter.void(third)
        assert (await meter.balance(ws)).available == 41

    async def test_the_balance_refusal_wins_over_a_cap(self, backend: MeterBackend) -> None:
        meter = await backend.meter()
        ws = await backend.workspace(allotment=3)
        with pytest.raises(InsufficientCredits):
            await meter.reserve(ws, 5, "b1", (Cap("key:key_b", 2),))

    async def test_concurrent_capped_reserves_never_pass_a_cap(
            self, backend: MeterBackend) -> None:
        meters = await backend.peers(3)
        ws = await backend.workspace(allotment=1000)
        both, other = (KEY, AGENT), (Cap("key:key_c", 500), AGENT)
        (held_a, _), (held_b, _) = await asyncio.gather(
            gather_reserves(meters, ws, 60, both, "k"), gather_reserves(meters, ws, 60, other, "o"))
        assert len(held_a) <= 20 and len(held_a) + len(held_b) == 30  # the agent's 30, shared
        await asyncio.gather(*(meters[0].void(h) for h in held_a + held_b))
        held, refused = await gather_reserves(meters, ws, 40, both, "again")
        assert (len(held), len(refused)) == (20, 20)  # voids gave the caps back
        assert (await meters[0].balance(ws)).reserved == 20

    async def test_caps_reset_with_the_period(self, backend: MeterBackend) -> None:
        meter = await backend.meter()
        ws = await backend.workspace(allotment=100)
        hold = await meter.reserve(ws, 20, "p1", (KEY,))
        await meter.settle(hold, reply(hold))
        with pytest.raises(SpendCapReached):
            await meter.reserve(ws, 1, "p2", (KEY,))
        backend.cross_period(await meter.balance(ws))
        await meter.reserve(ws, 20, "p3", (KEY,))


class SharedCapContract:
    async def test_capped_reserves_from_several_threads_never_pass_the_cap(
            self, backend: MeterBackend) -> None:
        """Four meters, each on a thread with its own loop and connections, as processes."""
        ws = await backend.workspace(allotment=1000)
        held: list[int] = []

        async def work(meter: Meter, n: int) -> None:
            holds, _ = await gather_reserves([meter], ws, 25, (Cap("key:key_p", 37),), f"t{n}")
            held.append(len(holds))

        crashed = await in_threads(backend, 4, work)
        assert not crashed, crashed
        assert sum(held) == 37
        assert (await (await backend.meter()).balance(ws)).reserved == 37
