"""The operator API (`/admin/...`) and the same operations from the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from gateway.accounts.keyring import generate_key
from gateway.cli.app import app as cli
from tests.conftest import GatewayFactory
from tests.harness import RunningGateway
from tests.lifecycle_support import ADMIN_TOKEN, admin, chat, wait_for


def test_the_admin_api_needs_the_admin_token(gateway: RunningGateway) -> None:
    ws, key = gateway.workspace("free")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {key}"},
                    {"Authorization": f"Basic {ADMIN_TOKEN}"}):
        r = httpx.get(gateway.url + "/admin/workspaces", headers=headers)
        assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_api_key"), headers
        r = httpx.post(gateway.url + f"/admin/workspaces/{ws}/topups", headers=headers,
                       json={"credits": 1000})
        assert r.status_code == 401
    assert gateway.balance(key)["balance"] == 100
    # ...and the admin token is no workspace key.
    r = httpx.get(gateway.url + "/v1/balance", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 401


def test_without_an_admin_token_the_api_is_off(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(BOOKBAG_ADMIN_TOKEN="")
    r = httpx.get(gw.url + "/admin/workspaces", headers={"Authorization": "Bearer anything"})
    assert r.status_code == 403 and "BOOKBAG_ADMIN_TOKEN" in r.json()["error"]["message"]


def test_workspaces_keys_and_suspension(gateway: RunningGateway) -> None:
    with admin(gateway) as c:
        r = c.post("/admin/workspaces", json={"name": "Acme", "plan": "hobby", "id": "ws_acme",
                                              "agent_id": "planner"})
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["workspace"]["id"] == "ws_acme" and created["key"]["key"].startswith("bk_")
        assert created["key"]["agent_id"] == "planner"
        assert c.post("/admin/workspaces", json={"name": "Acme", "id": "ws_acme"}).status_code == 400
        assert c.post("/admin/workspaces", json={"plan": "free"}).status_code == 400
        assert c.post("/admin/workspaces", json={"name": "x", "plan": "gold"}).status_code == 400
        assert c.post("/admin/workspaces", content=b"{nope").status_code == 400
        listed = c.get("/admin/workspaces").json()["data"]
        assert [w["id"] for w in listed] == ["ws_acme"]
        shown = c.get("/admin/workspaces/ws_acme").json()
        assert (shown["plan"], shown["balance"]["balance"], shown["recharge"]["enabled"]) == (
            "hobby", 2000, False)
        assert c.get("/admin/workspaces/ws_nope").status_code == 404

        key = c.post("/admin/workspaces/ws_acme/keys", json={"scopes": ["read"]}).json()
        assert key["scopes"] == ["read"]
        keys = c.get("/admin/workspaces/ws_acme/keys").json()["data"]
        assert len(keys) == 2 and all("key_hash" not in k and "key" not in k for k in keys)
        assert c.post("/admin/workspaces/ws_acme/keys", json={"scopes": ["root"]}).status_code == 400

        agent_key = created["key"]["key"]
        assert chat(gateway, agent_key).status_code == 200
        assert c.post("/admin/workspaces/ws_acme/suspend").json()["suspended"] is True
        wait_for(lambda: chat(gateway, agent_key).status_code == 403, what="the suspension")
        r = chat(gateway, agent_key)
        assert r.json()["error"]["code"] == "workspace_suspended"
        assert c.post("/admin/workspaces/ws_acme/resume").json()["suspended"] is False
        wait_for(lambda: chat(gateway, agent_key).status_code == 200, what="the resumption")

        assert c.delete(f"/admin/keys/{created['key']['id']}").json()["revoked_ms"] > 0
        wait_for(lambda: chat(gateway, agent_key).status_code == 401, what="the revocation")
        assert c.delete("/admin/keys/key_nope").status_code == 404

        r = c.patch("/admin/workspaces/ws_acme", json={"name": "Acme Inc", "low_fractions": "0.5"})
        assert (r.json()["name"], r.json()["low_fractions"]) == ("Acme Inc", "0.5")
        assert c.patch("/admin/workspaces/ws_acme", json={"low_fractions": [2]}).status_code == 400
        assert c.patch("/admin/workspaces/ws_acme", json={"suspended": "yes"}).status_code == 400


def test_top_ups_and_adjustments(gateway: RunningGateway) -> None:
    ws, key = gateway.workspace("free")
    with admin(gateway) as c:
        r = c.post(f"/admin/workspaces/{ws}/topups", json={"credits": 500, "ref": "inv-42"})
        assert (r.status_code, r.json()["applied"]) == (201, True)
        assert r.json()["request_id"] == f"topup:{ws}:inv-42"
        r = c.post(f"/admin/workspaces/{ws}/topups", json={"credits": 500, "ref": "inv-42"})
        assert (r.status_code, r.json()["applied"]) == (200, False)  # the same grant, once
        r = c.post(f"/admin/workspaces/{ws}/adjustments",
                   json={"credits": -120, "ref": "refund-7", "actor": "alice"})
        assert r.status_code == 201
        for bad in ({"credits": 0}, {"credits": -5}, {"credits": "5"}, {}, {"credits": True}):
            r = c.post(f"/admin/workspaces/{ws}/topups", json=bad)
            assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_request"), bad
        assert c.post(f"/admin/workspaces/{ws}/adjustments", json={"credits": 0}).status_code == 400
        assert c.post("/admin/workspaces/ws_nope/topups", json={"credits": 5}).status_code == 404
    balance = gateway.balance(key)
    assert (balance["allotment_remaining"], balance["topups_remaining"]) == (100, 380)
    adjustments = gateway.ledger(ws, kind="adjustment")
    assert [(a["topup_delta"], a["ref"], a["actor"]) for a in adjustments] == [
        (-120, "refund-7", "alice")]
    [topup] = gateway.ledger(ws, kind="topup")
    assert (topup["credits"], topup["actor"]) == (500, "admin-api")


def test_webhook_endpoints_crud(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(BOOKBAG_SECRET_KEY=generate_key())
    ws, _ = gw.workspace("free")
    with admin(gw) as c:
        r = c.post(f"/admin/workspaces/{ws}/webhooks",
                   json={"url": "https://billing.example/hooks", "events": ["credits.recharged"]})
        assert r.status_code == 201
        endpoint = r.json()
        assert endpoint["secret"].startswith("whsec_") and endpoint["events"] == ["credits.recharged"]
        shown = c.get(f"/admin/webhooks/{endpoint['id']}").json()
        assert endpoint["secret"] not in json.dumps(shown)
        r = c.patch(f"/admin/webhooks/{endpoint['id']}",
                    json={"events": ["credits.low", "credits.exhausted"]})
        assert r.json()["events"] == ["credits.exhausted", "credits.low"]
        assert c.patch(f"/admin/webhooks/{endpoint['id']}", json={"events": ["nope"]}).status_code == 400
        assert c.post(f"/admin/workspaces/{ws}/webhooks", json={"url": "ftp://x"}).status_code == 400
        assert c.delete(f"/admin/webhooks/{endpoint['id']}").json()["deleted"] is True
        assert c.get(f"/admin/webhooks/{endpoint['id']}").status_code == 404
        assert c.get(f"/admin/workspaces/{ws}/webhooks").json()["data"] == []


def test_unknown_admin_routes_and_methods(gateway: RunningGateway) -> None:
    with admin(gateway) as c:
        assert c.get("/admin/nothing").status_code == 404
        r = c.put("/admin/workspaces")
        assert (r.status_code, r.json()["error"]["code"]) == (405, "method_not_allowed")


# --- the CLI ---------------------------------------------------------------------------


@pytest.fixture
def run(gateway: RunningGateway, pricing: Path) -> Any:
    env = {"BOOKBAG_DATABASE_URL": gateway.settings.database_url, "BOOKBAG_PRICING": str(pricing),
           "BOOKBAG_SECRET_KEY": generate_key()}
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Any:
        result = runner.invoke(cli, list(args), env=env, input=input)
        assert result.exit_code == 0, result.output
        return json.loads(result.output) if "--json" in args else result.output

    return invoke


def test_the_cli_runs_the_lifecycle(gateway: RunningGateway, run: Any) -> None:
    created = run("workspace", "create", "Beta", "--plan", "free", "--json")
    ws, key = created["workspace_id"], created["key"]
    assert run("topup", "--workspace", ws, "40", "--ref", "po-1", "--json")["applied"] is True
    change = run("workspace", "plan", ws, "hobby", "--json")
    assert (change["change"], change["credits_granted"]) == ("upgrade", 1900)
    assert run("workspace", "plan", ws, "free", "--json")["change"] == "downgrade"
    shown = run("workspace", "show", ws, "--json")
    assert (shown["plan"], shown["pending_plan"]) == ("hobby", "free")
    wait_for(lambda: gateway.balance(key)["balance"] == 2040, what="the grants")

    assert run("workspace", "suspend", ws, "--json")["suspended"] is True
    wait_for(lambda: chat(gateway, key).status_code == 403, what="the suspension")
    assert run("workspace", "resume", ws, "--json")["suspended"] is False
    wait_for(lambda: chat(gateway, key).status_code == 200, what="the resumption")

    settings = run("workspace", "set", ws, "--rate-limit", "3/60s", "--low-fractions", "0.3,0.05",
                   "--json")
    assert (settings["rate_limit"], settings["low_fractions"]) == ("3/60s", "0.3,0.05")
    assert settings["responses_store"] is False
    assert run("workspace", "set", ws, "--responses-store", "--json")["responses_store"] is True
    assert run("workspace", "show", ws, "--json")["responses_store"] is True
    assert run("workspace", "set", ws, "--no-responses-store", "--json")["responses_store"] is False
    limited = run("key", "create", "--workspace", ws, "--rate-limit", "1/60s", "--json")["key"]
    assert [chat(gateway, limited, "bookbag-local").status_code for _ in range(2)] == [200, 429]

    recharge = run("recharge", "set", ws, "--threshold", "10", "--amount", "50", "--cap", "2",
                   "--json")
    assert (recharge["enabled"], recharge["amount"], recharge["recharges_this_period"]) == (
        True, 50, 0)
    assert run("recharge", "show", ws, "--json")["monthly_cap"] == 2
    assert run("recharge", "delete", ws, "--json")["deleted"] is True

    hook = run("webhook", "create", ws, "https://billing.example/h", "--event", "credits.low",
               "--json")
    assert hook["secret"].startswith("whsec_")
    [listed] = run("webhook", "list", ws, "--json")
    assert listed["events"] == ["credits.low"] and hook["secret"] not in json.dumps(listed)
    assert run("webhook", "update", hook["id"], "--disable", "--json")["enabled"] is False
    assert run("webhook", "events", ws, "--json") == []
    assert run("webhook", "delete", hook["id"], "--json")["deleted"] is True

    assert len(run("byo", "generate-key").strip()) == 44


def test_cli_errors_are_readable(run: Any, gateway: RunningGateway, pricing: Path) -> None:
    env = {"BOOKBAG_DATABASE_URL": gateway.settings.database_url, "BOOKBAG_PRICING": str(pricing)}
    runner = CliRunner()
    result = runner.invoke(cli, ["workspace", "plan", "ws_nope", "hobby"], env=env)
    assert result.exit_code == 2 and "no workspace" in result.output
    ws, _ = gateway.workspace("free")
    result = runner.invoke(cli, ["recharge", "set", ws, "--threshold", "0", "--amount", "1",
                                 "--cap", "1"], env=env)
    assert result.exit_code == 2 and "threshold" in result.output
    result = runner.invoke(cli, ["byo", "set", ws, "openai", "--key", "sk-x"],
                           env={**env, "BOOKBAG_SECRET_KEY": "not-a-fernet-key"})
    assert result.exit_code == 2 and "generate-key" in result.output


def test_a_key_printed_as_a_table_is_never_cut_short(gateway: RunningGateway, run: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The key is shown once: a narrow terminal wraps it, never replaces its end with '…'."""
    from gateway.cli import app as cli_module

    monkeypatch.setattr(cli_module.console, "width", 50)
    out = run("workspace", "create", "Gamma", "--plan", "free")
    assert "…" not in out
    cells = [line.split("│")[2].strip() for line in out.splitlines() if line.count("│") == 3]
    key = "".join(cells[cells.index(next(c for c in cells if c.startswith("bk_"))):])
    with gateway.client(key) as c:  # the key as printed works
        assert c.get("/v1/balance").status_code == 200, key
