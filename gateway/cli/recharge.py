"""`bookbag-gateway recharge set | show | delete`: a workspace's auto-recharge."""

from __future__ import annotations

from typing import Annotated

import typer

from gateway.cli.context import attempt, open_operations
from gateway.cli.options import DbFlag, JsonFlag, Ws
from gateway.cli.records import emit


def set_(
    workspace: Ws,
    threshold: Annotated[int, typer.Option(help="Recharge when the balance falls below this.")],
    amount: Annotated[int, typer.Option(help="Credits per recharge.")],
    cap: Annotated[int, typer.Option(help="At most this many recharges per period.")],
    disabled: Annotated[bool, typer.Option(help="Store the settings but keep them off.")] = False,
    as_json: JsonFlag = False, database_url: DbFlag = None,
) -> None:
    """Set auto-recharge for a workspace."""
    o = open_operations(database_url)
    attempt(lambda: o.recharges.configure(workspace, threshold=threshold, amount=amount,
                                          monthly_cap=cap, enabled=not disabled))
    ws = o.accounts.workspace(workspace)
    emit(o.recharges.status(workspace, ws.anchor_date), as_json, "auto-recharge")


def show(workspace: Ws, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
    """Show auto-recharge settings and this period's recharges."""
    o = open_operations(database_url)
    ws = attempt(lambda: o.accounts.workspace(workspace))
    emit(o.recharges.status(workspace, ws.anchor_date), as_json, "auto-recharge")


def delete(workspace: Ws, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
    """Turn auto-recharge off (removes its settings)."""
    o = open_operations(database_url)
    attempt(lambda: o.accounts.workspace(workspace))
    emit({"workspace_id": workspace, "deleted": o.recharges.disable(workspace)}, as_json,
         "auto-recharge")


def register(recharge_app: typer.Typer) -> None:
    """The `recharge` group's commands, in the order `--help` lists them."""
    recharge_app.command("set")(set_)
    recharge_app.command("show")(show)
    recharge_app.command("delete")(delete)
