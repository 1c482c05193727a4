"""Billing periods: month ends, leap years, and crossing a boundary with traffic in flight."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.clock import ManualClock
from gateway.periods import period_of
from tests.conftest import GatewayFactory
from tests.fake_provider import FakeProvider
from tests.lifecycle_support import (
    chat,
    entries,
    fire,
    ledger_balance,
    reconcile,
    shared_store_settings,
    ts,
    wait_for,
)

# --- the calendar --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("anchor", "at", "expected"),
    [
        # An anchor on the 31st renews on the last day of shorter months...
        ("2024-01-31", "2024-02-15T12:00:00", ("2024-01-31", "2024-02-29")),  # leap February
        ("2024-01-31", "2024-02-29T00:00:00", ("2024-02-29", "2024-03-31")),
        ("2024-01-31", "2024-03-30T23:59:59", ("2024-02-29", "2024-03-31")),
        # ...and returns to the 31st when the month has one.
        ("2024-01-31", "2024-03-31T00:00:00", ("2024-03-31", "2024-04-30")),
        ("2024-01-31", "2024-04-30T00:00:00", ("2024-04-30", "2024-05-31")),
        ("2023-01-31", "2023-02-27T23:59:59", ("2023-01-31", "2023-02-28")),  # common year
        ("2023-01-31", "2023-02-28T00:00:00", ("2023-02-28", "2023-03-31")),
        ("2024-01-30", "2024-02-29T10:00:00", ("2024-02-29", "2024-03-30")),
        ("2023-01-30", "2023-02-28T10:00:00", ("2023-02-28", "2023-03-30")),
        # An anchor on 29 February.
        ("2024-02-29", "2025-02-28T00:00:00", ("2025-02-28", "2025-03-29")),
        ("2024-02-29", "2025-03-29T00:00:00", ("2025-03-29", "2025-04-29")),
        ("2024-02-29", "2028-02-29T00:00:00", ("2028-02-29", "2028-03-29")),
        # Year ends, ordinary days, the first instant of a period.
        ("2024-12-31", "2025-01-01T00:00:00", ("2024-12-31", "2025-01-31")),
        ("2024-12-15", "2025-01-14T23:59:59", ("2024-12-15", "2025-01-15")),
        ("2024-12-15", "2025-01-15T00:00:00", ("2025-01-15", "2025-02-15")),
        # Before the anchor: the first period.
        ("2030-05-10", "2030-05-01T00:00:00", ("2030-05-10", "2030-06-10")),
    ],
)
def test_period_edges(anchor: str, at: str, expected: tuple[str, str]) -> None:
    assert period_of(anchor, ts(at)) == expected


def test_a_year_from_the_31st_has_twelve_periods_ending_on_month_ends() -> None:
    starts = []
    at = ts("2024-01-31T00:00:00")
    while at < ts("2025-01-31T00:00:00"):
        start, end = period_of("2024-01-31", at)
        starts.append(start)
        at = ts(end + "T00:00:00")
    assert starts == ["2024-01-31", "2024-02-29", "2024-03-31", "2024-04-30", "2024-05-31",
                      "2024-06-30", "2024-07-31", "2024-08-31", "2024-09-30", "2024-10-31",
                      "2024-11-30", "2024-12-31"]


@settings(max_examples=300, deadline=None)
@given(anchor=st.dates(dt.date(2000, 1, 1), dt.date(2090, 12, 31)),
       offset=st.integers(0, 3_000_000_000))
def test_periods_tile_time(anchor: dt.date, offset: int) -> None:
    """Every instant after the anchor is in exactly one period; periods are back to back."""
    base = dt.datetime.combine(anchor, dt.time(), dt.UTC).timestamp()
    at = base + offset
    start, end = period_of(anchor.isoformat(), at)
    today = dt.datetime.fromtimestamp(at, dt.UTC).date().isoformat()
    assert start <= today < end
    next_start, _ = period_of(anchor.isoformat(), ts(end + "T00:00:00"))
    assert next_start == end
    assert period_of(anchor.isoformat(), ts(start + "T00:00:00"))[0] == start
    days = (dt.date.fromisoformat(end) - dt.date.fromisoformat(start)).days
    assert 28 <= days <= 31


# --- crossing a boundary through the gateway ----------------------------------------

BEFORE = "2030-01-31T23:59:57"
AFTER = "2030-02-01T00:00:02"


def test_a_reply_in_flight_across_the_boundary_is_charged_to_its_reservation_period(
    make_gateway: GatewayFactory, provider: FakeProvider,
) -> None:
    clock = ManualClock(ts(BEFORE))
    gw = make_gateway(clock=clock)
    ws, key = gw.workspace("free", anchor_date="2030-01-01")
    assert chat(gw, key).status_code == 200  # January: 99 left
    provider.delay = 1.0
    result: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: result.append(chat(gw, key, "gpt-4o")))
    thread.start()
    wait_for(lambda: provider.count("/v1/chat/completions") == 2, what="the request in flight")
    clock.set(ts(AFTER))  # the period ends while the provider answers
    thread.join(30)
    provider.delay = 0.0
    assert result[0].status_code == 200
    assert result[0].headers["x-bookbag-credits-charged"] == "5"
    replies = sorted(gw.wait_ledger(ws, 2), key=lambda r: r["created_ms"])
    assert [(r["credits"], r["period_start"]) for r in replies] == [
        (1, "2030-01-01"), (5, "2030-01-01")]
    balance = gw.balance(key)
    # February starts with the whole allotment: January's charges stay in January.
    assert (balance["period_start"], balance["allotment_remaining"]) == ("2030-02-01", 100)
    renewals = [r for r in entries(gw, ws, "allotment") if r["period_start"] == "2030-02-01"]
    assert len(renewals) == 1
    assert ledger_balance(gw, ws, "2030-02-01") == (100, 0)
    assert reconcile(gw, ws) == []


def test_renewal_happens_once_under_concurrent_traffic(make_gateway: GatewayFactory) -> None:
    clock = ManualClock(ts(BEFORE))
    gw = make_gateway(clock=clock)
    ws, key = gw.workspace("free", anchor_date="2030-01-01")
    gw.accounts.apply(gw.accounts.topup_entry(ws, 20, ref="carry"))
    assert all(r.status_code == 200 for r in fire([gw], key, 30))  # 70 of January's 100 left
    clock.set(ts(AFTER))
    responses = fire([gw], key, 60, workers=60)
    assert [r.status_code for r in responses] == [200] * 60
    gw.wait_ledger(ws, 90)
    renewals = [r for r in entries(gw, ws, "allotment") if r["period_start"] == "2030-02-01"]
    assert len(renewals) == 1 and renewals[0]["allotment_delta"] == 100
    balance = gw.balance(key)
    # No rollover: January's 70 lapsed; the top-ups were untouched (allotment first).
    assert (balance["allotment_remaining"], balance["topups_remaining"]) == (40, 20)
    assert ledger_balance(gw, ws, "2030-02-01") == (40, 20)
    assert reconcile(gw, ws) == []


@pytest.fixture(params=["sql", "postgres", "redis"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    with ExitStack() as stack:
        yield shared_store_settings(request.param, stack, tmp_path)


def test_renewal_happens_once_across_processes(shared_store: dict[str, str],
                                               make_gateway: GatewayFactory) -> None:
    """Two gateways sharing balances, both crossing the boundary at once."""
    clock = ManualClock(ts(BEFORE))
    gws = [make_gateway(clock=clock, **shared_store) for _ in range(2)]
    ws, key = gws[0].workspace("free", anchor_date="2030-01-01")
    assert all(r.status_code == 200 for r in fire(gws, key, 10))
    clock.set(ts(AFTER))
    responses = fire(gws, key, 40, workers=40)
    assert [r.status_code for r in responses] == [200] * 40
    renewals = [r for r in entries(gws[0], ws, "allotment") if r["period_start"] == "2030-02-01"]
    assert len(renewals) == 1
    for gw in gws:
        assert gw.balance(key)["allotment_remaining"] == 60
    assert ledger_balance(gws[0], ws, "2030-02-01") == (60, 0)
    assert reconcile(gws[0], ws) == []
