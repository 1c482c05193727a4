"""Allotments, top-ups and plan changes: allotment first, no rollover, upgrades now,
downgrades at the next period, and the balance equation under a random mix of everything."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from gateway.accounts.plans import Plans
from gateway.catalog import load
from gateway.cli.app import app as cli
from gateway.clock import ManualClock
from tests.conftest import GatewayFactory
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway
from tests.lifecycle_support import (
    admin,
    chat,
    entries,
    fire,
    ledger_balance,
    reconcile,
    ts,
    wait_for,
)

JAN = "2030-01-10T12:00:00"
FEB = "2030-02-01T00:00:01"
PLANS = {"free": 100, "hobby": 2000, "pro": 40000}


def change_plan(gw: RunningGateway, ws: str, plan: str, **extra: Any) -> dict[str, Any]:
    with admin(gw) as c:
        r = c.post(f"/admin/workspaces/{ws}/plan", json={"plan": plan, **extra})
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data


def test_the_allotment_is_spent_before_top_ups(gateway: RunningGateway) -> None:
    ws, key = gateway.workspace("free")
    with admin(gateway) as c:
        assert c.post(f"/admin/workspaces/{ws}/topups",
                      json={"credits": 50, "ref": "inv-1"}).status_code == 201
    assert all(r.status_code == 200 for r in fire([gateway], key, 19, "gpt-4o"))  # 95 credits
    balance = gateway.balance(key)
    assert (balance["allotment_remaining"], balance["topups_remaining"]) == (5, 50)
    assert chat(gateway, key, "gpt-4o").status_code == 200  # the last 5 of the allotment
    assert chat(gateway, key).status_code == 200  # now from the top-ups
    assert chat(gateway, key, "gpt-4o").status_code == 200
    balance = gateway.balance(key)
    assert (balance["allotment_remaining"], balance["topups_remaining"]) == (0, 44)
    last = sorted(gateway.ledger(ws), key=lambda r: r["seq"])[-3:]
    assert [(r["allotment_delta"], r["topup_delta"]) for r in last] == [(-5, 0), (0, -1), (0, -5)]


def test_a_reply_straddling_the_buckets_takes_the_allotment_first(gateway: RunningGateway) -> None:
    ws, key = gateway.workspace("free")
    gateway.accounts.apply(gateway.accounts.topup_entry(ws, 10, ref="x"))
    assert all(r.status_code == 200 for r in fire([gateway], key, 97))  # 3 left in the allotment
    assert chat(gateway, key, "gpt-4o").status_code == 200
    last = max(gateway.ledger(ws), key=lambda r: r["seq"])
    assert (last["credits"], last["allotment_delta"], last["topup_delta"]) == (5, -3, -2)
    assert gateway.balance(key)["balance"] == 8


def test_unused_allotment_does_not_roll_over_but_top_ups_do(make_gateway: GatewayFactory) -> None:
    clock = ManualClock(ts(JAN))
    gw = make_gateway(clock=clock)
    ws, key = gw.workspace("free", anchor_date="2030-01-01")
    gw.accounts.apply(gw.accounts.topup_entry(ws, 25, ref="carry"))
    assert all(r.status_code == 200 for r in fire([gw], key, 30))
    clock.set(ts(FEB))
    balance = gw.balance(key)
    assert (balance["period_start"], balance["allotment"], balance["allotment_remaining"],
            balance["topups_remaining"]) == ("2030-02-01", 100, 100, 25)
    wait_for(lambda: ledger_balance(gw, ws, "2030-02-01") == (100, 25), what="the renewal entry")
    assert reconcile(gw, ws) == []


def test_an_upgrade_grants_the_difference_at_once(gateway: RunningGateway) -> None:
    ws, key = gateway.workspace("free")
    gateway.accounts.apply(gateway.accounts.topup_entry(ws, 7, ref="t"))
    assert all(r.status_code == 200 for r in fire([gateway], key, 30))
    change = change_plan(gateway, ws, "hobby")
    assert (change["change"], change["credits_granted"], change["effective_from"]) == (
        "upgrade", 1900, change["period_start"])
    balance = gateway.balance(key)
    assert (balance["allotment"], balance["allotment_remaining"], balance["topups_remaining"]) == (
        2000, 1970, 7)
    grant = [r for r in entries(gateway, ws, "allotment") if r["ref"] == "plan:free->hobby"]
    assert len(grant) == 1 and grant[0]["allotment_delta"] == 1900
    assert grant[0]["actor"] == "admin-api"
    # The same change again is no change: nothing is granted twice.
    assert change_plan(gateway, ws, "hobby")["change"] == "unchanged"
    assert gateway.balance(key)["allotment_remaining"] == 1970
    wait_for(lambda: gateway.balance(key)["plan"] == "hobby", what="the plan to show")
    assert reconcile(gateway, ws) == []


def test_a_downgrade_waits_for_the_next_period(make_gateway: GatewayFactory) -> None:
    clock = ManualClock(ts(JAN))
    gw = make_gateway(clock=clock)
    ws, key = gw.workspace("hobby", anchor_date="2030-01-01")
    assert chat(gw, key).status_code == 200
    change = change_plan(gw, ws, "free")
    assert (change["change"], change["effective_from"], change["credits_granted"]) == (
        "downgrade", "2030-02-01", 0)
    with admin(gw) as c:
        shown = c.get(f"/admin/workspaces/{ws}").json()
    assert (shown["plan"], shown["pending_plan"], shown["pending_from"]) == (
        "hobby", "free", "2030-02-01")
    balance = gw.balance(key)
    assert (balance["plan"], balance["allotment"], balance["allotment_remaining"]) == (
        "hobby", 2000, 1999)
    clock.set(ts(FEB))
    wait_for(lambda: gw.balance(key)["allotment"] == 100, what="the downgraded renewal")
    balance = gw.balance(key)
    assert (balance["plan"], balance["allotment_remaining"]) == ("free", 100)
    renewal = [r for r in entries(gw, ws, "allotment") if r["period_start"] == "2030-02-01"]
    assert [r["allotment_delta"] for r in renewal] == [100]
    # An upgrade after the downgrade took effect compares with the plan now in force.
    assert change_plan(gw, ws, "hobby")["credits_granted"] == 1900
    assert reconcile(gw, ws) == []


def test_an_upgrade_cancels_a_pending_downgrade(gateway: RunningGateway) -> None:
    ws, key = gateway.workspace("hobby")
    assert change_plan(gateway, ws, "free")["change"] == "downgrade"
    change = change_plan(gateway, ws, "pro")
    assert (change["change"], change["old_plan"], change["credits_granted"]) == (
        "upgrade", "hobby", 38000)
    with admin(gateway) as c:
        shown = c.get(f"/admin/workspaces/{ws}").json()
    assert (shown["plan"], shown["pending_plan"]) == ("pro", None)
    assert gateway.balance(key)["allotment_remaining"] == 40000


def test_enterprise_takes_a_custom_allotment(gateway: RunningGateway) -> None:
    ws, key = gateway.workspace("enterprise", custom_allotment=1000)
    assert gateway.balance(key)["allotment"] == 1000
    change = change_plan(gateway, ws, "enterprise", credits=5000)
    assert (change["change"], change["credits_granted"]) == ("upgrade", 4000)
    assert change_plan(gateway, ws, "enterprise", credits=2000)["change"] == "downgrade"
    assert gateway.balance(key)["allotment_remaining"] == 5000
    with admin(gateway) as c:
        r = c.post(f"/admin/workspaces/{ws}/plan", json={"plan": "enterprise"})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_request")
        r = c.post(f"/admin/workspaces/{ws}/plan", json={"plan": "hobby", "credits": 5})
        assert r.status_code == 400
        r = c.post(f"/admin/workspaces/{ws}/plan", json={"plan": "platinum"})
        assert r.status_code == 400 and "unknown plan" in r.json()["error"]["message"]


def test_a_cli_upgrade_reaches_the_running_gateway(
    gateway: RunningGateway, pricing: Any,
) -> None:
    ws, key = gateway.workspace("free")
    assert chat(gateway, key).status_code == 200
    env = {"BOOKBAG_DATABASE_URL": gateway.settings.database_url, "BOOKBAG_PRICING": str(pricing)}
    result = CliRunner().invoke(cli, ["workspace", "plan", ws, "hobby", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert '"credits_granted": 1900' in result.output
    wait_for(lambda: gateway.balance(key)["allotment_remaining"] == 1999, what="the grant")
    result = CliRunner().invoke(cli, ["workspace", "plan", ws, "free"], env=env)
    assert result.exit_code == 0 and "downgrade" in result.output
    assert reconcile(gateway, ws) == []


def test_a_direct_upgrade_before_a_lazy_renewal_renews_first(make_gateway: GatewayFactory) -> None:
    """The SQL path of a plan change (the CLI's) when the period turned with no traffic yet."""
    clock = ManualClock(ts(JAN))
    gw = make_gateway(clock=clock)
    ws, key = gw.workspace("free", anchor_date="2030-01-01")
    assert all(r.status_code == 200 for r in fire([gw], key, 10))
    clock.set(ts(FEB))
    plans = Plans(gw.engine, load(gw.settings.pricing_path), clock)
    change = plans.change(ws, "hobby", actor="test")
    assert (change.kind, change.old_allotment, change.entry and change.entry.credits) == (
        "upgrade", 100, 1900)
    wait_for(lambda: gw.balance(key)["allotment_remaining"] == 2000, what="the running meter")
    assert [r["allotment_delta"] for r in entries(gw, ws, "allotment")
            if r["period_start"] == "2030-02-01"] == [100, 1900]
    assert chat(gw, key).status_code == 200
    assert gw.balance(key)["allotment_remaining"] == 1999
    assert reconcile(gw, ws) == []


# --- the balance equation under a random mix ---------------------------------------

Op = tuple[str, Any]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("reply"), st.sampled_from(["gpt-4o-mini", "gpt-4o"])),
        st.tuples(st.just("fail"), st.sampled_from(["gpt-4o-mini", "gpt-4o"])),
        st.tuples(st.just("topup"), st.integers(1, 60)),
        st.tuples(st.just("adjust"), st.integers(-20, 20).filter(bool)),
        st.tuples(st.just("plan"), st.sampled_from(sorted(PLANS))),
        st.tuples(st.just("renew"), st.integers(1, 2)),
        st.tuples(st.just("burst"), st.integers(2, 12)),
    ),
    min_size=1, max_size=12,
)


class Model:
    """What the balance must be, from the billing rules alone."""

    def __init__(self) -> None:
        self.plan, self.pending = "free", None
        self.allotment, self.topups = 100, 0

    def charge(self, cost: int) -> bool:
        if cost > self.allotment + self.topups:
            return False
        from_allotment = min(cost, self.allotment)
        self.allotment -= from_allotment
        self.topups -= cost - from_allotment
        return True

    def change(self, plan: str) -> None:
        if PLANS[plan] > PLANS[self.plan]:
            self.allotment += PLANS[plan] - PLANS[self.plan]
            self.plan, self.pending = plan, None
        elif PLANS[plan] < PLANS[self.plan]:
            self.pending = plan
        else:
            self.pending = None

    def renew(self) -> None:
        self.plan, self.pending = self.pending or self.plan, None
        self.allotment = PLANS[self.plan]


@pytest.fixture
def mixed(make_gateway: GatewayFactory) -> tuple[RunningGateway, ManualClock]:
    clock = ManualClock(ts("2030-01-01T00:00:00"))
    return make_gateway(clock=clock), clock


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sequence=ops)
def test_the_balance_equation_holds_after_any_mix(
    mixed: tuple[RunningGateway, ManualClock], provider: FakeProvider, sequence: list[Op],
) -> None:
    gw, clock = mixed
    anchor = f"{int(clock.now() // 86400) % 28 + 1:02d}"
    ws, key = gw.workspace("free", anchor_date=f"2030-01-{anchor}")
    model = Model()
    cost = {"gpt-4o-mini": 1, "gpt-4o": 5}
    with admin(gw) as c:
        for i, (op, arg) in enumerate(sequence):
            if op == "reply":
                r = chat(gw, key, arg)
                assert r.status_code == (200 if model.charge(cost[arg]) else 402), r.text
            elif op == "fail":
                provider.fail("status", status=500, path="/v1/chat/completions")
                r = chat(gw, key, arg)
                assert r.status_code in (402, 502)
                provider.reset()
            elif op == "burst":
                codes = sorted(x.status_code for x in fire([gw], key, arg, workers=arg))
                granted = sum(model.charge(1) for _ in range(arg))
                assert codes == [200] * granted + [402] * (arg - granted)
            elif op in ("topup", "adjust"):
                if op == "adjust" and model.topups + arg < 0:
                    continue
                path = "topups" if op == "topup" else "adjustments"
                r = c.post(f"/admin/workspaces/{ws}/{path}", json={"credits": arg, "ref": f"op{i}"})
                assert r.status_code == 201, r.text
                model.topups += arg
            elif op == "plan":
                change_plan(gw, ws, arg)
                model.change(arg)
            elif op == "renew":
                for _ in range(arg):
                    _, end = (gw.balance(key)["period_start"], gw.balance(key)["period_end"])
                    clock.set(ts(end + "T00:00:00") + 1)
                    model.renew()
            balance = gw.balance(key)
            assert (balance["allotment_remaining"], balance["topups_remaining"]) == (
                model.allotment, model.topups), (i, op, arg)
    period = gw.balance(key)["period_start"]
    wait_for(lambda: ledger_balance(gw, ws, period) == (model.allotment, model.topups),
             what="the ledger to catch up")
    assert reconcile(gw, ws) == []
