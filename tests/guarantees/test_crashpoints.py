"""Crash points (DESIGN invariants 2, 4, 5, 7): `kill -9` at any step, then idempotent retries.

For each named point (gateway/crashpoints.py) a real `bookbag-gateway serve`
subprocess runs with `BOOKBAG_TEST_CRASH_AT=<point>`; clients send keyed
requests, the first one to reach the point kills the process (exit 137,
checked: otherwise the run proves nothing), the gateway is restarted without
the setting, and every client retries with its Idempotency-Key until it is
answered. The history checker then finds each operation charged exactly
once, nothing charged for failures, no hold left after the TTL, and the
balance equal to the ledger's.

Deployments: `embedded` (the default: SQLite, balances in memory), `sqlite-sql`
(the `sql` meter: hold rows a crash leaves behind for the sweeper), `postgres`
(`sql` meter on PostgreSQL) and `redis` (Redis with AOF + PostgreSQL).
Fast (every run): three points (`FAST`). Slow (`make guarantees`): the rest of
`MATRIX`, and runs where the points fire at random under load, the gateway
restarted after each crash.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.crashpoints import EXIT_CODE, POINTS
from tests.fake_provider import FakeProvider
from tests.guarantees.client import load, make_client, new_op, resolve, run_op
from tests.guarantees.deployment import Deployment, deployment
from tests.guarantees.history import INDETERMINATE, History

MODEL, COST = "gpt-4o-mini", 1
ALLOTMENT = 200
# Every run: the charge made durable then lost with its reply, a stream cut mid-way, and a
# failure's void (hold rows left for the sweeper). The rest with `make guarantees`.
FAST = {("after_settle", "embedded"), ("mid_stream", "embedded"), ("after_void", "sqlite-sql")}
KINDS: dict[str, dict[str, str]] = {
    "embedded": {"meter": "embedded", "sql": "sqlite"},
    "sqlite-sql": {"meter": "sql", "sql": "sqlite"},
    "postgres": {"meter": "sql", "sql": "postgres"},
    "redis": {"meter": "redis", "sql": "postgres"},
}


@pytest.fixture
def dep(request: pytest.FixtureRequest, tmp_path: Path, pricing: Path) -> Iterator[Deployment]:
    with deployment(tmp_path, pricing, allotment=ALLOTMENT, **KINDS[request.param]) as made:
        yield made


async def crash_once(dep: Deployment, provider: FakeProvider, point: str, name: str) -> None:
    """Start with the crash point armed, crash on the first request, restart, resolve."""
    gw = dep.gateway
    await asyncio.to_thread(gw.start, BOOKBAG_TEST_CRASH_AT=point)
    if point == "after_void":
        provider.fail("status", status=500, times=1, path="/v1/chat/completions")
    history = History()
    deadline = time.monotonic() + 60
    async with make_client(gw.url) as client:
        first = new_op(history, dep.accounts[0], MODEL, COST, stream=point == "mid_stream")
        first_task = asyncio.create_task(run_op(client, first, dep.accounts[0],
                                                deadline=deadline, retry_failures=True))
        code = await asyncio.to_thread(gw.wait_exit, 20)
        assert code == EXIT_CODE, f"the gateway did not crash at {point}: {code}\n{gw.output()}"
        # Requests sent while it is down (refused), then the restart without the setting.
        others = [new_op(history, dep.accounts[i % 2], MODEL, COST, stream=i % 2 == 1)
                  for i in range(4)]
        tasks = [asyncio.create_task(run_op(client, op, dep.accounts[i % 2],
                                            deadline=deadline, retry_failures=True))
                 for i, op in enumerate(others)]
        await asyncio.sleep(0.3)
        restarted = time.monotonic()
        await asyncio.to_thread(gw.start)
        await asyncio.gather(first_task, *tasks)
    assert first.attempts[0].outcome == INDETERMINATE, first.attempts[0]
    figures = await asyncio.to_thread(dep.check, name, history, point=point, crashes=1,
                                      recovery_s=history.first_ok_after(restarted))
    figures.assert_clean()
    assert figures.ok == len(history.ops), [(op.id, op.attempts) for op in history.ops]


# Every point on the embedded default and on Redis; the `sql` meter where its hold rows make a
# difference (before the charge, a void) and PostgreSQL where its commit does.
MATRIX = {"embedded": POINTS, "redis": POINTS,
          "sqlite-sql": ("after_reserve", "after_provider", "after_void"),
          "postgres": ("after_settle", "after_void")}
CASES = [
    pytest.param(point, kind, id=f"{point}-{kind}",
                 marks=() if (point, kind) in FAST else (pytest.mark.slow,))
    for kind, points in MATRIX.items() for point in points
]


@pytest.mark.parametrize(("point", "dep"), CASES, indirect=["dep"])
async def test_a_crash_at_each_point_charges_exactly_once(
    dep: Deployment, provider: FakeProvider, point: str, request: pytest.FixtureRequest
) -> None:
    kind = request.node.callspec.params["dep"]
    await crash_once(dep, provider, point, f"crashpoint[{point}/{kind}]")


@pytest.mark.slow
@pytest.mark.parametrize("dep", ["embedded", "redis"], indirect=True)
async def test_random_crashes_under_load(dep: Deployment, provider: FakeProvider,
                                         request: pytest.FixtureRequest) -> None:
    """Every point armed in turn with a probability, under load; the gateway is restarted
    after each crash, and each client retries with its key until it is answered."""
    kind = request.node.callspec.params["dep"]
    gw = dep.gateway
    history = History()
    crashes = 0
    for point in POINTS:
        await asyncio.to_thread(gw.start, BOOKBAG_TEST_CRASH_AT=f"{point}:0.2")
        until = time.monotonic() + 4

        async def supervise(point: str = point, until: float = until) -> int:
            crashed = 0
            while time.monotonic() < until:
                code = await asyncio.to_thread(gw.wait_exit, 0.2)
                if code is not None:
                    assert code == EXIT_CODE, gw.output()[-3000:]
                    crashed += 1
                    await asyncio.to_thread(gw.start, BOOKBAG_TEST_CRASH_AT=f"{point}:0.2")
            return crashed

        if point == "after_void":
            provider.fail("status", status=500, times=40, path="/v1/chat/completions")
        results = await asyncio.gather(
            supervise(),
            load(gw.url, history, dep.accounts, [(MODEL, COST)], until=until, concurrency=4,
                 stream_every=2 if point == "mid_stream" else 3, deadline_slack=0))
        crashes += results[0]
        provider.reset()
        if gw.alive:
            await asyncio.to_thread(gw.stop)
        else:
            await asyncio.to_thread(gw.wait_exit, 5)
    # Resolve what the crashes left open: retry every unresolved operation on a calm gateway.
    await asyncio.to_thread(gw.start)
    await resolve(gw.url, history, dep.accounts)
    figures = await asyncio.to_thread(dep.check, f"crashpoints-random[{kind}]", history,
                                      crashes=crashes)
    figures.assert_clean()
    assert crashes >= 3, "the crash points hardly fired: the run proves little"
    assert history.count(INDETERMINATE) == 0
