"""`bookbag-gateway key cap` and `key caps`: spend caps per billing period (spend controls)."""

from __future__ import annotations

from typing import Annotated

import typer

from gateway.accounts.workspaces import AccountError
from gateway.cli.context import fail, open_accounts
from gateway.cli.options import DbFlag, JsonFlag
from gateway.cli.records import emit


def cap(
    workspace: Annotated[str, typer.Option(help="The workspace id.")],
    key: Annotated[str | None, typer.Option(help="Cap this key (its id, key_...).")] = None,
    agent: Annotated[str | None, typer.Option(help="Cap this agent (through its bound keys).")] = None,
    credits: Annotated[int | None, typer.Option(help="Credits per billing period.")] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Remove the cap.")] = False,
    as_json: JsonFlag = False,
    database_url: DbFlag = None,
) -> None:
    """Set, change or remove a spend cap per billing period on a key or an agent."""
    if (key is None) == (agent is None) or (credits is None) == (not remove):
        fail("give one of --key or --agent, and either --credits N or --remove")
    kind, ident = ("key", key) if key is not None else ("agent", agent)
    assert ident is not None
    try:
        open_accounts(database_url).set_cap(workspace, kind, ident, None if remove else credits)
    except AccountError as exc:
        fail(str(exc))
    emit({"workspace_id": workspace, "kind": kind, "id": ident,
          "credits": None if remove else credits}, as_json, "cap removed" if remove else "cap set")


def caps(workspace: Annotated[str, typer.Option()], as_json: JsonFlag = False,
         database_url: DbFlag = None) -> None:
    """List a workspace's spend caps."""
    try:
        emit(open_accounts(database_url).caps(workspace), as_json, "caps")
    except AccountError as exc:
        fail(str(exc))


def register(key_app: typer.Typer) -> None:
    """`key cap` and `key caps`, after the `key` group's own commands."""
    key_app.command("cap")(cap)
    key_app.command("caps")(caps)
