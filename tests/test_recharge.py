"""Auto-recharge: one recharge per crossing under real concurrency, the monthly cap, the event."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.accounts.recharge import recharge_id
from gateway.clock import ManualClock
from gateway.webhooks.registry import CREDITS_RECHARGED, event_id
from tests.conftest import GatewayFactory
from tests.harness import RunningGateway
from tests.lifecycle_support import (
    admin,
    chat,
    entries,
    fire,
    query,
    reconcile,
    shared_store_settings,
    ts,
    wait_for,
)


def configure(gw: RunningGateway, ws: str, **settings: Any) -> dict[str, Any]:
    with admin(gw) as c:
        r = c.put(f"/admin/workspaces/{ws}/recharge", json=settings)
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data


def recharges(gw: RunningGateway, ws: str) -> list[dict[str, Any]]:
    return [r for r in entries(gw, ws, "topup") if r["request_id"].startswith("recharge:")]


def events(gw: RunningGateway, ws: str, type_: str) -> list[dict[str, Any]]:
    rows = query(gw, "SELECT id, payload FROM webhook_events WHERE workspace_id = ? AND type = ?",
                 ws, type_)
    return [{"id": r[0], **orjson.loads(r[1])} for r in rows]


def test_100_concurrent_requests_crossing_the_threshold_recharge_once(gateway: RunningGateway) -> None:
    ws, key = gateway.workspace("free")
    configure(gateway, ws, threshold=50, amount=100, monthly_cap=3)
    responses = fire([gateway], key, 100, workers=100)
    assert [r.status_code for r in responses] == [200] * 100
    wait_for(lambda: recharges(gateway, ws), what="the recharge")
    period = gateway.balance(key)["period_start"]
    found = recharges(gateway, ws)
    assert [(r["request_id"], r["credits"], r["topup_delta"], r["actor"]) for r in found] == [
        (recharge_id(ws, period, 1), 100, 100, "gateway:auto-recharge")]
    balance = gateway.balance(key)
    assert (balance["balance"], balance["topups_remaining"]) == (100, 100)
    [event] = events(gateway, ws, CREDITS_RECHARGED)
    assert event["id"] == event_id(CREDITS_RECHARGED, ws, recharge_id(ws, period, 1))
    assert event["data"]["credits"] == 100 and event["data"]["number"] == 1
    with admin(gateway) as c:
        shown = c.get(f"/admin/workspaces/{ws}/recharge").json()
    assert shown["recharges_this_period"] == 1
    assert reconcile(gateway, ws) == []


def test_the_monthly_cap_holds(gateway: RunningGateway) -> None:
    ws, key = gateway.workspace("free")
    configure(gateway, ws, threshold=50, amount=10, monthly_cap=2)
    fire([gateway], key, 80, workers=40)
    wait_for(lambda: len(recharges(gateway, ws)) == 2, what="two recharges")
    # Spend what is left, one at a time, until the gateway refuses: 100 + 2 x 10 in all.
    while chat(gateway, key).status_code == 200:
        pass
    replies = gateway.wait_ledger(ws, 120)
    assert sum(r["credits"] for r in replies) == 120
    assert len(recharges(gateway, ws)) == 2
    assert gateway.balance(key)["balance"] == 0
    assert chat(gateway, key).status_code == 402
    assert len(recharges(gateway, ws)) == 2
    assert len(events(gateway, ws, CREDITS_RECHARGED)) == 2
    assert reconcile(gateway, ws) == []


@pytest.fixture(params=["sql", "postgres", "redis"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    with ExitStack() as stack:
        yield shared_store_settings(request.param, stack, tmp_path)


def test_one_recharge_across_processes(shared_store: dict[str, str],
                                       make_gateway: GatewayFactory) -> None:
    gws = [make_gateway(**shared_store) for _ in range(2)]
    ws, key = gws[0].workspace("free")
    configure(gws[0], ws, threshold=50, amount=100, monthly_cap=5)
    configure(gws[1], ws, threshold=50, amount=100, monthly_cap=5)  # clears its cached settings
    responses = fire(gws, key, 100, workers=100)
    assert [r.status_code for r in responses] == [200] * 100
    wait_for(lambda: recharges(gws[0], ws), what="the recharge")
    assert len(recharges(gws[0], ws)) == 1
    assert gws[1].balance(key)["balance"] == 100
    assert len(events(gws[0], ws, CREDITS_RECHARGED)) == 1
    assert reconcile(gws[0], ws) == []


def test_the_cap_starts_again_each_period(make_gateway: GatewayFactory) -> None:
    clock = ManualClock(ts("2030-01-20T00:00:00"))
    gw = make_gateway(clock=clock)
    ws, key = gw.workspace("free", anchor_date="2030-01-01")
    configure(gw, ws, threshold=95, amount=3, monthly_cap=1)
    assert all(r.status_code == 200 for r in fire([gw], key, 10))
    wait_for(lambda: len(recharges(gw, ws)) == 1, what="January's recharge")
    clock.set(ts("2030-02-01T00:00:01"))
    assert all(r.status_code == 200 for r in fire([gw], key, 10))
    wait_for(lambda: len(recharges(gw, ws)) == 2, what="February's recharge")
    assert sorted(r["request_id"] for r in recharges(gw, ws)) == [
        recharge_id(ws, "2030-01-01", 1), recharge_id(ws, "2030-02-01", 1)]
    # Top-ups carry over: January's recharge is still there in February.
    assert gw.balance(key)["balance"] == 100 - 10 + 3 + 3
    assert reconcile(gw, ws) == []


def test_settings_are_validated_and_removable(gateway: RunningGateway) -> None:
    ws, _key = gateway.workspace("free")
    with admin(gateway) as c:
        for bad in ({"threshold": 0, "amount": 10, "monthly_cap": 1},
                    {"threshold": 10, "amount": 0, "monthly_cap": 1},
                    {"threshold": 10, "amount": 10, "monthly_cap": 0},
                    {"threshold": 10, "amount": 10},
                    {"threshold": "10", "amount": 10, "monthly_cap": 1}):
            r = c.put(f"/admin/workspaces/{ws}/recharge", json=bad)
            assert (r.status_code, r.json()["error"]["type"]) == (400, "invalid_request_error"), bad
        assert c.put("/admin/workspaces/nope/recharge",
                     json={"threshold": 1, "amount": 1, "monthly_cap": 1}).status_code == 404
        configure(gateway, ws, threshold=10, amount=20, monthly_cap=4, enabled=False)
        shown = c.get(f"/admin/workspaces/{ws}/recharge").json()
        assert (shown["enabled"], shown["threshold"], shown["amount"], shown["monthly_cap"]) == (
            False, 10, 20, 4)
        assert c.delete(f"/admin/workspaces/{ws}/recharge").json()["deleted"] is True
        assert c.get(f"/admin/workspaces/{ws}/recharge").json()["enabled"] is False


def test_a_disabled_recharge_never_fires(gateway: RunningGateway) -> None:
    ws, key = gateway.workspace("free")
    configure(gateway, ws, threshold=99, amount=10, monthly_cap=4, enabled=False)
    assert all(r.status_code == 200 for r in fire([gateway], key, 5))
    assert gateway.balance(key)["balance"] == 95
    assert recharges(gateway, ws) == []
