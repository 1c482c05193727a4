"""`bookbag-gateway key create | list | revoke`: API keys (the spend caps are in `caps.py`)."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer

from gateway.accounts.workspaces import AccountError
from gateway.cli.context import fail, open_accounts
from gateway.cli.options import DbFlag, JsonFlag, cli_message
from gateway.cli.records import emit, key_record


def scopes_of(given: list[str] | None) -> tuple[str, ...]:
    """`--scope inference --scope read` or `--scope inference,read`."""
    if not given:
        return ("inference", "read")
    return tuple(part.strip() for item in given for part in item.split(",") if part.strip())


def create(
    workspace: Annotated[str, typer.Option(help="The workspace id.")],
    agent: Annotated[str | None, typer.Option(help="Bind the key to this agent.")] = None,
    scope: Annotated[list[str] | None, typer.Option(
        help="inference and/or read: repeat it or give a comma list (default both).")] = None,
    rate_limit: Annotated[str | None, typer.Option(help='This key\'s own limit, e.g. "100/10s".')] = None,
    expires_at: Annotated[str | None, typer.Option(
        help="The key stops working then: ISO 8601 (2027-01-31T00:00:00Z) or Unix seconds.")] = None,
    as_json: JsonFlag = False,
    database_url: DbFlag = None,
) -> None:
    """Create a key (printed once; stored as a SHA-256 hash)."""
    try:
        key = open_accounts(database_url).create_key(
            workspace, agent_id=agent, scopes=scopes_of(scope),
            rate_limit=rate_limit, expires_at=expires_at)
    except AccountError as exc:
        fail(cli_message(exc))
    emit(dataclasses.asdict(key), as_json, "key created: shown once")


def list_(workspace: Annotated[str, typer.Option()], as_json: JsonFlag = False,
          database_url: DbFlag = None) -> None:
    """List a workspace's keys (never the keys themselves)."""
    accounts = open_accounts(database_url)
    try:
        accounts.workspace(workspace)
    except AccountError as exc:
        fail(cli_message(exc))
    emit([key_record(k) for k in accounts.keys(workspace)], as_json, "keys")


def revoke(key_id: str, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
    """Revoke a key; running gateways refuse it within seconds."""
    try:
        row = open_accounts(database_url).revoke_key(key_id)
    except AccountError as exc:
        fail(cli_message(exc))
    emit({"key_id": row.id, "revoked_ms": row.revoked_ms}, as_json, "key revoked")


def register(key_app: typer.Typer) -> None:
    """The `key` group's own commands, in the order `--help` lists them."""
    key_app.command("create")(create)
    key_app.command("list")(list_)
    key_app.command("revoke")(revoke)
