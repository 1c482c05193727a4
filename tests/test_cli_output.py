"""The CLI as a tool people read: stable columns, dates, plain lists, `show` as the API,
flag names in help, `--version` (issue 18 points 8 and 10)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from gateway.accounts.keyring import generate_key
from gateway.cli.app import app as cli
from tests.harness import RunningGateway
from tests.lifecycle_support import admin

# Commands whose output is not a record: the server, the export (JSON lines or CSV by
# --format) and the key generator (one line, the key).
NO_JSON = {"serve", "ledger export", "byo generate-key"}


@pytest.fixture
def env(gateway: RunningGateway, pricing: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    from gateway.cli import app as cli_module

    monkeypatch.setattr(cli_module.console, "width", 200)  # wide enough that no cell wraps
    return {"BOOKBAG_DATABASE_URL": gateway.settings.database_url, "BOOKBAG_PRICING": str(pricing),
            "BOOKBAG_SECRET_KEY": generate_key()}


def run(env: dict[str, str], *args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "--json" in args else result.output


def header(table: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith("┃") and " id " in line)
    return [cell.strip() for cell in line.strip("┃").split("┃")]


def test_tables_have_stable_columns_dates_and_plain_lists(gateway: RunningGateway,
                                                          env: dict[str, str]) -> None:
    created = run(env, "workspace", "create", "Acme support", "--json")
    ws = created["workspace_id"]
    run(env, "key", "create", "--workspace", ws, "--scope", "read", "--agent", "bot-1")
    for _ in range(3):  # the same columns every run
        table = run(env, "workspace", "list")
        assert header(table)[:3] == ["id", "name", "plan"]
        assert "created" in header(table) and "created_ms" not in header(table)
        assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", table)
        assert not re.search(r"\b1\d{12}\b", table)  # no epoch milliseconds
        assert ws in table  # an id is never wrapped over lines
        assert list(run(env, "workspace", "show", ws, "--json"))[:2] == ["id", "name"]
    keys = run(env, "key", "list", "--workspace", ws)
    assert header(keys)[:2] == ["id", "workspace_id"] and "revoked" in header(keys)
    made = run(env, "key", "create", "--workspace", ws, "--scope", "inference,read")
    for text in (keys, made, run(env, "webhook", "create", ws, "https://h.example/x")):
        assert "('" not in text and "['" not in text, text
    assert "inference, read" in made
    assert "key create --workspace" not in keys


def test_show_is_what_the_admin_api_returns(gateway: RunningGateway, env: dict[str, str]) -> None:
    ws = run(env, "workspace", "create", "Beta", "--plan", "hobby", "--json")["workspace_id"]
    run(env, "topup", "--workspace", ws, "250", "--ref", "po-9")
    run(env, "recharge", "set", ws, "--threshold", "10", "--amount", "50", "--cap", "2")
    run(env, "byo", "set", ws, "openai", "--key", "sk-test-123")
    shown = run(env, "workspace", "show", ws, "--json")
    with admin(gateway) as c:
        api = c.get(f"/admin/workspaces/{ws}").json()
    assert shown == api
    assert list(shown) == list(api)
    assert shown["balance"]["balance"] == 2250 and shown["recharge"]["amount"] == 50
    assert [k["provider"] for k in shown["byo_keys"]] == ["openai"]
    table = run(env, "workspace", "show", ws)
    assert "allotment_remaining 2000" in table and "topups_remaining 250" in table
    assert "{" not in table and "'" not in table


def _commands(group: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for name, command in group.commands.items():
        if command.hidden:
            continue
        if hasattr(command, "commands"):
            out += _commands(command, f"{prefix}{name} ")
        else:
            out.append((f"{prefix}{name}", command))
    return out


def test_help_and_flags_speak_the_cli_language(env: dict[str, str]) -> None:
    root = typer.main.get_command(cli)
    commands = dict(_commands(root))
    assert {"workspace show", "key list", "usage", "webhook events"} <= set(commands)
    for name, command in commands.items():
        flags = {opt for p in command.params for opt in getattr(p, "opts", [])}
        assert ("--json" in flags) == (name not in NO_JSON), name
        text = run(env, *name.split(), "--help")
        assert "<bool>" not in text, (name, text)
    assert run(env, "--version").startswith("bookbag-gateway ")
    assert "comma list" in run(env, "key", "create", "--help")
    docs = (Path(__file__).resolve().parent.parent / "docs" / "operators.md").read_text()
    assert "Every command takes `--json`" not in docs or all(
        name in docs for name in NO_JSON)
