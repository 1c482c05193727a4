"""`bookbag-gateway reconcile`: balances recomputed from the ledger alone, compared, repaired."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway.cli.app import app
from gateway.storage.database import transaction
from tests.conftest import GatewayFactory
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway
from tests.postgres import fresh_database
from tests.relay_pricing import relay_only_pricing

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
runner = CliRunner()


@pytest.fixture
def pricing(tmp_path: Path, provider: FakeProvider) -> Path:
    """No litellm route: nothing to import in the background, so gateways stop at once."""
    path = tmp_path / "pricing.toml"
    path.write_text(relay_only_pricing(provider))
    return path


def reconcile(gw: RunningGateway, *args: str) -> tuple[int, dict[str, Any]]:
    url = gw.engine.url.render_as_string(hide_password=False)
    result = runner.invoke(app, ["reconcile", "--json", "--database-url", url, *args])
    return result.exit_code, json.loads(result.stdout)


def tamper(gw: RunningGateway, workspace: str, sql: str) -> None:
    with transaction(gw.engine) as (cur, s):
        cur.execute(s(sql + " WHERE workspace_id = ?"), (workspace,))


def spend(gw: RunningGateway, key: str, replies: int) -> None:
    with gw.client(key) as c:
        for _ in range(replies):
            assert c.post("/v1/chat/completions", json=CHAT).status_code == 200


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_gateway(request: pytest.FixtureRequest, make_gateway: GatewayFactory) -> Iterator[RunningGateway]:
    if request.param == "sqlite":
        yield make_gateway(BOOKBAG_METER="sql")
        return
    with fresh_database() as url:
        gw = make_gateway(BOOKBAG_DATABASE_URL=url)
        yield gw
        gw.stop()


def test_tampered_balance_is_reported_fixed_and_then_clean(sql_gateway: RunningGateway) -> None:
    gw = sql_gateway
    ws, key = gw.workspace("free")
    _, other_key = gw.workspace("hobby")
    gw.accounts.apply(gw.accounts.topup_entry(ws, 50, ref="order-1"))
    spend(gw, key, 3)
    spend(gw, other_key, 1)
    assert reconcile(gw) == (0, {"workspaces": 2, "differing": 0, "fixed": False, "reports": []})

    tamper(gw, ws, "UPDATE balances SET allotment_remaining = allotment_remaining + 40, "
                   "topups_remaining = 0")
    code, report = reconcile(gw)
    assert code == 1 and report["differing"] == 1
    [found] = report["reports"]
    assert found["workspace_id"] == ws
    assert {d["field"]: (d["ledger"], d["store"]) for d in found["differences"]} == {
        "allotment_remaining": (97, 137), "topups_remaining": (50, 0)}

    code, fixed = reconcile(gw, "--fix")
    assert code == 0 and fixed["fixed"] is True and fixed["differing"] == 1
    assert reconcile(gw) == (0, {"workspaces": 2, "differing": 0, "fixed": False, "reports": []})
    balance = gw.balance(key)
    assert (balance["allotment_remaining"], balance["topups_remaining"]) == (97, 50)
    spend(gw, key, 1)  # the repaired row is the one the meter reserves from
    assert gw.balance(key)["balance"] == 146


def test_holds_in_flight_are_part_of_the_balance(sql_gateway: RunningGateway) -> None:
    gw = sql_gateway
    ws, _ = gw.workspace("free")
    gw.accounts.apply(gw.accounts.topup_entry(ws, 5, ref="order-2"))
    hold = gw.run(gw.gw.meter.reserve(ws, 102, "req_reconcile_hold"))  # 100 allotment + 2 top-up
    assert (hold.from_allotment, hold.from_topups) == (100, 2)
    code, report = reconcile(gw, "--workspace", ws)
    assert (code, report["differing"]) == (0, 0)

    tamper(gw, ws, "UPDATE balances SET topups_remaining = 7")
    code, report = reconcile(gw, "--workspace", ws, "--fix")
    [found] = report["reports"]
    assert (found["holds_allotment"], found["holds_topups"]) == (100, 2)
    assert found["differences"] == [{"field": "topups_remaining", "ledger": 5, "store": 9}]
    gw.run(gw.gw.meter.void(hold))
    assert reconcile(gw, "--workspace", ws)[0] == 0
    with gw.client(gw.key(ws)) as c:
        assert c.get("/v1/balance").json()["balance"] == 105


def test_fix_refuses_while_an_embedded_meter_owns_the_balances(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()  # the embedded (memory) meter: balances live in the process
    _, key = gw.workspace("free")
    spend(gw, key, 2)
    assert reconcile(gw)[0] == 0  # checking is fine: its settles keep the rows exact
    url = gw.engine.url.render_as_string(hide_password=False)
    result = runner.invoke(app, ["reconcile", "--fix", "--database-url", url])
    assert result.exit_code == 2
    assert "holds these balances in memory" in " ".join(result.stderr.split())


def test_cap_usage_is_reconciled_with_the_ledger(sql_gateway: RunningGateway) -> None:
    """Spend caps: the sql meter's cap_usage rows against the ledger, repaired by --fix."""
    gw = sql_gateway
    ws, _ = gw.workspace("hobby")
    created = gw.accounts.create_key(ws)
    gw.accounts.set_cap(ws, "key", created.id, 10)
    with gw.client(created.key) as c:  # wait for the cap to reach the key cache
        deadline = time.monotonic() + 10
        while "caps" not in c.get("/v1/balance").json():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    spend(gw, created.key, 3)
    assert reconcile(gw)[0] == 0
    tamper(gw, ws, "UPDATE cap_usage SET used = 9")
    code, report = reconcile(gw)
    assert code == 1
    [found] = report["reports"]
    assert [(d["field"], d["ledger"], d["store"]) for d in found["differences"]] == [
        (f"cap_usage key:{created.id}", 3, 9)]
    assert reconcile(gw, "--fix")[0] == 0
    assert reconcile(gw)[1]["differing"] == 0
    spend(gw, created.key, 7)  # 10: the repaired usage is the one the meter checks
    with gw.client(created.key) as c:
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 402
