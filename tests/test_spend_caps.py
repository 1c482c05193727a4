"""Spend caps end to end: set through the admin API and the CLI, enforced on a real gateway
(402 spend_cap_reached, balance wins, unmetered untouched), shown on /v1/balance."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway.cli.app import app as cli
from tests.conftest import GatewayFactory
from tests.harness import RunningGateway
from tests.lifecycle_support import admin, chat, wait_for
from tests.redis_server import RedisServer
from tests.test_errors import assert_error

runner = CliRunner()


def caps_shown(gw: RunningGateway, key: str) -> list[dict[str, Any]]:
    shown: list[dict[str, Any]] = gw.balance(key).get("caps", [])
    return shown


@pytest.mark.parametrize("meter", ["memory", "sql"])
def test_a_key_cap_refuses_past_it_and_shows_on_the_balance(
        make_gateway: GatewayFactory, meter: str) -> None:
    check_key_cap(make_gateway(BOOKBAG_METER=meter))


def test_a_key_cap_on_the_redis_meter(redis_server: RedisServer,
                                      make_gateway: GatewayFactory) -> None:
    check_key_cap(make_gateway(BOOKBAG_METER="redis", BOOKBAG_REDIS_URL=redis_server.url))


def check_key_cap(gw: RunningGateway) -> None:
    ws, _ = gw.workspace("hobby")
    created = gw.accounts.create_key(ws)
    with admin(gw) as c:
        r = c.put(f"/admin/workspaces/{ws}/caps/key/{created.id}", json={"credits": 3})
        assert r.status_code == 200, r.text
        assert c.get(f"/admin/workspaces/{ws}/caps").json()["data"] == [
            {"kind": "key", "id": created.id, "credits": 3}]
    wait_for(lambda: caps_shown(gw, created.key), what="the cap reaching the key cache")
    with ThreadPoolExecutor(8) as pool:  # concurrent requests: exactly the cap goes through
        codes = sorted(pool.map(lambda _: chat(gw, created.key).status_code, range(8)))
    assert codes == [200] * 3 + [402] * 5
    r = chat(gw, created.key)
    body = assert_error(r, 402, "spend_cap_reached", type_="insufficient_quota")
    assert r.headers["x-should-retry"] == "false"
    assert created.id in body["message"] and "3" in body["message"] and "resets on" in body["message"]
    [shown] = caps_shown(gw, created.key)
    balance = gw.balance(created.key)
    assert (shown["credits"], shown["used"], shown["remaining"]) == (3, 3, 0)
    assert shown["resets_on"] == balance["period_end"] and balance["balance"] == 1997
    assert sum(e["credits"] for e in gw.wait_ledger(ws, 3)) == 3
    # Unmetered requests never meet a cap; other keys of the workspace neither.
    assert chat(gw, created.key, model="bookbag-local").status_code == 200
    assert chat(gw, gw.key(ws)).status_code == 200


def test_the_balance_refusal_wins_over_a_cap(gateway: RunningGateway) -> None:
    ws, _ = gateway.workspace("free")  # 100 credits
    created = gateway.accounts.create_key(ws)
    gateway.accounts.set_cap(ws, "key", created.id, 2)
    wait_for(lambda: caps_shown(gateway, created.key), what="the cap")
    assert_error(chat(gateway, created.key, model="gpt-4o", n=21), 402, "insufficient_credits")
    assert_error(chat(gateway, created.key, model="gpt-4o"), 402, "spend_cap_reached")


def test_an_agent_cap_through_the_cli_binds_its_agent_bound_keys(
        make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    ws, _ = gw.workspace("hobby")
    one, two = gw.key(ws, agent_id="planner"), gw.key(ws, agent_id="planner")
    url = gw.settings.database_url
    r = runner.invoke(cli, ["key", "cap", "--workspace", ws, "--agent", "planner", "--credits", "2",
                            "--json", "--database-url", url])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["credits"] == 2
    wait_for(lambda: caps_shown(gw, one) and caps_shown(gw, two), what="the agent cap")
    assert [chat(gw, k).status_code for k in (one, two, one)] == [200, 200, 402]
    listed = runner.invoke(cli, ["key", "caps", "--workspace", ws, "--json", "--database-url", url])
    assert json.loads(listed.output) == [{"kind": "agent", "id": "planner", "credits": 2}]
    r = runner.invoke(cli, ["key", "cap", "--workspace", ws, "--agent", "planner", "--remove",
                            "--database-url", url])
    assert r.exit_code == 0, r.output
    wait_for(lambda: not caps_shown(gw, one), what="the cap removed")
    assert chat(gw, one).status_code == 200


def test_bad_caps_are_400_and_change_nothing(gateway: RunningGateway) -> None:
    ws, _ = gateway.workspace("free")
    key_id = gateway.accounts.keys(ws)[0].id
    with admin(gateway) as c:
        for path, payload in ((f"key/{key_id}", {"credits": -1}),
                              (f"key/{key_id}", {"credits": True}),
                              (f"key/{key_id}", {"credits": "5"}),
                              (f"key/{key_id}", {}),
                              ("key/key_nope", {"credits": 5}),
                              ("agent/nobody", {"credits": 5}),
                              (f"team/{key_id}", {"credits": 5})):
            r = c.put(f"/admin/workspaces/{ws}/caps/{path}", json=payload)
            assert_error(r, 400, r.json()["error"]["code"])
        assert c.put("/admin/workspaces/ws_nope/caps/key/x", json={"credits": 1}).status_code == 404
        assert c.get(f"/admin/workspaces/{ws}/caps").json()["data"] == []
    url = gateway.settings.database_url
    for args in (["--key", key_id, "--credits", "-5"], ["--agent", "nobody", "--credits", "5"],
                 ["--key", key_id], ["--key", key_id, "--agent", "a", "--credits", "1"]):
        r = runner.invoke(cli, ["key", "cap", "--workspace", ws, *args, "--database-url", url])
        assert r.exit_code != 0, args
    assert gateway.accounts.caps(ws) == []


@pytest.mark.parametrize("meter", ["memory", "sql"])
def test_a_restarted_gateway_remembers_what_a_cap_used(make_gateway: GatewayFactory,
                                                       meter: str) -> None:
    first = make_gateway(BOOKBAG_METER=meter)
    ws, _ = first.workspace("hobby")
    created = first.accounts.create_key(ws)
    first.accounts.set_cap(ws, "key", created.id, 3)
    wait_for(lambda: caps_shown(first, created.key), what="the cap")
    assert [chat(first, created.key).status_code for _ in range(2)] == [200, 200]
    first.stop()
    second = make_gateway(BOOKBAG_METER=meter)  # the same database
    assert [chat(second, created.key).status_code for _ in range(2)] == [200, 402]
    assert caps_shown(second, created.key)[0]["used"] == 3


def cap_set_mid_period(gw: RunningGateway) -> None:
    ws, _ = gw.workspace("hobby")
    created = gw.accounts.create_key(ws)
    assert [chat(gw, created.key).status_code for _ in range(2)] == [200, 200]
    gw.wait_ledger(ws, 2)
    gw.accounts.set_cap(ws, "key", created.id, 3)
    wait_for(lambda: caps_shown(gw, created.key), what="the cap")
    assert caps_shown(gw, created.key)[0]["used"] == 2  # what the key spent before counts
    assert [chat(gw, created.key).status_code for _ in range(2)] == [200, 402]


@pytest.mark.parametrize("meter", ["memory", "sql"])
def test_a_cap_set_mid_period_counts_what_was_spent_before(make_gateway: GatewayFactory,
                                                           meter: str) -> None:
    cap_set_mid_period(make_gateway(BOOKBAG_METER=meter))


def test_a_cap_set_mid_period_on_the_redis_meter(redis_server: RedisServer,
                                                 make_gateway: GatewayFactory) -> None:
    cap_set_mid_period(make_gateway(BOOKBAG_METER="redis", BOOKBAG_REDIS_URL=redis_server.url))
