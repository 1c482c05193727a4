"""Operator input: one validation for the CLI and the admin API (issue 18 points 1-3, issue 12.10)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway.accounts.keyring import generate_key
from gateway.accounts.operator_input import MAX_CREDITS
from gateway.cli.app import app as cli
from tests.harness import RunningGateway
from tests.lifecycle_support import admin, chat


@pytest.fixture
def cli_env(gateway: RunningGateway, pricing: Path) -> dict[str, str]:
    return {"BOOKBAG_DATABASE_URL": gateway.settings.database_url, "BOOKBAG_PRICING": str(pricing),
            "BOOKBAG_SECRET_KEY": generate_key()}


def invoke(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(cli, list(args), env=env)


def refused(env: dict[str, str], *args: str) -> str:
    """The command exits 2 with one line naming the problem, never a traceback."""
    result = invoke(env, *args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and result.output.strip().count("\n") == 0, result.output
    return str(result.output)


def test_the_cli_resolves_model_aliases_like_the_api(gateway: RunningGateway,
                                                     cli_env: dict[str, str]) -> None:
    ws, key = gateway.workspace("free")
    for _ in range(3):
        assert chat(gateway, key, "bookbag-local").status_code == 200
    for alias in ("Bookbag Local", "bookbag local", "bookbag-local"):
        result = invoke(cli_env, "usage", "--workspace", ws, "--model", alias, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["total"]["replies"] == 3, alias
        result = invoke(cli_env, "ledger", "export", "--workspace", ws, "--model", alias,
                        "--kind", "reply")
        assert result.exit_code == 0, result.output
        assert "3 entries" in result.output, (alias, result.output)


def test_an_impossible_anchor_date_is_one_line_and_a_400(gateway: RunningGateway,
                                                         cli_env: dict[str, str]) -> None:
    out = refused(cli_env, "workspace", "create", "A", "--anchor", "2026-02-31")
    assert "--anchor" in out and "2026-02-31" in out
    refused(cli_env, "workspace", "create", "A", "--anchor", "tomorrow")
    with admin(gateway) as c:
        r = c.post("/admin/workspaces", json={"name": "A", "anchor_date": "2026-02-31"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "anchor_date"
        assert c.get("/admin/workspaces").json()["data"] == []


def test_the_cli_and_the_api_refuse_the_same_inputs(gateway: RunningGateway,
                                                    cli_env: dict[str, str]) -> None:
    ws, key = gateway.workspace("free")
    assert "CREDITS" in refused(cli_env, "topup", "--workspace", ws, "0", "--adjustment")
    assert "--kind" in refused(cli_env, "ledger", "export", "--workspace", ws, "--kind", "refund")
    assert "NAME" in refused(cli_env, "workspace", "create", "  ")
    assert "--plan" in refused(cli_env, "workspace", "create", "B", "--plan", "platinum")
    assert "--rate-limit must look like" in refused(cli_env, "key", "create", "--workspace", ws,
                                                    "--rate-limit", "abc")
    assert "--group-by takes" in refused(cli_env, "usage", "--workspace", ws, "--group-by", "x")
    assert "--scope (item 2)" in refused(cli_env, "key", "create", "--workspace", ws,
                                         "--scope", "read,write")
    with admin(gateway) as c:
        r = c.post(f"/admin/workspaces/{ws}/adjustments", json={"credits": 0})
        assert (r.status_code, r.json()["error"]["param"]) == (400, "credits")
        r = c.post("/admin/workspaces", json={"name": ""})
        assert (r.status_code, r.json()["error"]["param"]) == (400, "name")
        r = c.patch(f"/admin/workspaces/{ws}", json={"name": " "})
        assert (r.status_code, r.json()["error"]["param"]) == (400, "name")
        r = c.post(f"/admin/workspaces/{ws}/keys", json={"rate_limit": "abc"})
        assert (r.status_code, r.json()["error"]["param"]) == (400, "rate_limit")
    with gateway.client(key) as c:
        r = c.get("/v1/ledger", params={"kind": "refund"})
        assert (r.status_code, r.json()["error"]["param"]) == (400, "kind")
    assert [w["name"] for w in json.loads(invoke(cli_env, "workspace", "list", "--json").output)] == [
        "test"]
    assert gateway.balance(key)["balance"] == 100


def test_credit_amounts_are_bounded_everywhere(gateway: RunningGateway,
                                               cli_env: dict[str, str]) -> None:
    ws, key = gateway.workspace("free")
    huge = 9_000_000_000_000_000_000
    refused(cli_env, "topup", "--workspace", ws, str(MAX_CREDITS + 1))
    refused(cli_env, "topup", "--workspace", ws, "--adjustment", "--", str(-MAX_CREDITS - 1))
    refused(cli_env, "workspace", "create", "E", "--plan", "enterprise", "--credits", str(huge))
    refused(cli_env, "recharge", "set", ws, "--threshold", "1", "--amount", str(MAX_CREDITS + 1),
            "--cap", "1")
    with admin(gateway) as c:
        for path, body in [
            (f"/admin/workspaces/{ws}/topups", {"credits": huge}),
            (f"/admin/workspaces/{ws}/adjustments", {"credits": -huge}),
            ("/admin/workspaces", {"name": "E", "plan": "enterprise", "credits": huge}),
            (f"/admin/workspaces/{ws}/plan", {"plan": "enterprise", "credits": huge}),
            (f"/admin/workspaces/{ws}/recharge",
             {"threshold": huge, "amount": 10, "monthly_cap": 1}),
        ]:
            method = c.put if path.endswith("/recharge") else c.post
            r = method(path, json=body)
            assert r.status_code == 400, (path, r.text)
            assert "1,000,000,000,000,000" in r.json()["error"]["message"], r.text
        # the bound itself is accepted, twice: still an exact integer
        for ref in ("a", "b"):
            r = c.post(f"/admin/workspaces/{ws}/topups", json={"credits": MAX_CREDITS, "ref": ref})
            assert r.status_code == 201, r.text
    balance = gateway.balance(key)
    assert balance["topups_remaining"] == 2 * MAX_CREDITS
    assert isinstance(balance["topups_remaining"], int)
    shown = invoke(cli_env, "balance", "--workspace", ws, "--json")
    assert json.loads(shown.output)["topups_remaining"] == 2 * MAX_CREDITS


def test_list_items_are_validated_one_by_one(gateway: RunningGateway,
                                             cli_env: dict[str, str]) -> None:
    ws, _ = gateway.workspace("free")
    with admin(gateway) as c:
        for body in ({"url": "https://h.example/x", "events": [[1]]},
                     {"url": "https://h.example/x", "events": [1]},
                     {"url": "https://h.example/x", "events": ["credits.low", "nope"]}):
            r = c.post(f"/admin/workspaces/{ws}/webhooks", json=body)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["param"].startswith("events["), r.text
        r = c.post(f"/admin/workspaces/{ws}/keys", json={"scopes": [["read"]]})
        assert (r.status_code, r.json()["error"]["param"]) == (400, "scopes[0]")
        r = c.post(f"/admin/workspaces/{ws}/keys", json={"scopes": ["read", {"a": 1}]})
        assert (r.status_code, r.json()["error"]["param"]) == (400, "scopes[1]")
        assert c.get(f"/admin/workspaces/{ws}/webhooks").json()["data"] == []
    out = refused(cli_env, "webhook", "create", ws, "https://h.example/x", "--event", "nope")
    assert "--event" in out


def test_refs_actors_and_ids_fit_their_columns(gateway: RunningGateway,
                                               cli_env: dict[str, str]) -> None:
    """Longer values would be a database error (a 500) on PostgreSQL, not a 400."""
    ws, key = gateway.workspace("free")
    with admin(gateway) as c:
        for path, body, param in [
            (f"/admin/workspaces/{ws}/topups", {"credits": 5, "ref": "r" * 65}, "ref"),
            (f"/admin/workspaces/{ws}/topups", {"credits": 5, "ref": ""}, "ref"),
            (f"/admin/workspaces/{ws}/topups", {"credits": 5, "actor": "a" * 101}, "actor"),
            ("/admin/workspaces", {"name": "X", "id": "w" * 41}, "id"),
        ]:
            r = c.post(path, json=body)
            assert (r.status_code, r.json()["error"]["param"]) == (400, param), r.text
        assert c.post(f"/admin/workspaces/{ws}/topups",
                      json={"credits": 5, "ref": "r" * 64}).status_code == 201
    assert "--ref" in refused(cli_env, "topup", "--workspace", ws, "5", "--ref", "r" * 65)
    assert gateway.balance(key)["balance"] == 105
