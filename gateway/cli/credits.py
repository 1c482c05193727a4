"""`bookbag-gateway balance | topup | reconcile`: a workspace's credits, and the balances
checked (or rewritten) against the ledger."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

from gateway.accounts.reconcile import ReconcileError, SqlBalances, reconcile_all, rows
from gateway.accounts.workspaces import AccountError
from gateway.cli.context import fail, load_settings, open_accounts, open_engine
from gateway.cli.options import DbFlag, JsonFlag, PricingFlag, cli_message
from gateway.cli.records import console, emit
from gateway.clock import SystemClock
from gateway.types import EntryKind


def balance(
    workspace: Annotated[str, typer.Option(help="The workspace id.")],
    as_json: JsonFlag = False,
    database_url: DbFlag = None,
    pricing: PricingFlag = None,
) -> None:
    """Show a workspace's balance (settled; holds in flight live in the server)."""
    try:
        data = open_accounts(database_url, pricing).balance(workspace)
    except AccountError as exc:
        fail(cli_message(exc))
    emit(data, as_json, "balance")


def topup(
    workspace: Annotated[str, typer.Option(help="The workspace id.")],
    credits: Annotated[int, typer.Argument(help="Credits to add to the top-up bucket.")],
    ref: Annotated[str | None, typer.Option(help="Your reference (makes the grant idempotent).")] = None,
    adjustment: Annotated[bool, typer.Option(
        "--adjustment", help="Record as an adjustment (either sign, not 0; put a negative amount "
        "after --, e.g. `-- -300`).")] = False,
    as_json: JsonFlag = False,
    database_url: DbFlag = None,
) -> None:
    """Grant purchased credits (carried over between periods, spent after the allotment)."""
    accounts = open_accounts(database_url)
    kind = EntryKind.ADJUSTMENT if adjustment else EntryKind.TOPUP
    try:
        entry = accounts.topup_entry(workspace, credits, kind=kind, ref=ref, actor="cli")
    except AccountError as exc:
        fail(cli_message(exc, credits="CREDITS"))
    inserted = accounts.apply(entry)
    emit({"workspace_id": workspace, "kind": str(kind), "credits": credits, "ref": entry.ref,
          "applied": inserted}, as_json, "granted" if inserted else "already granted")


def reconcile(
    workspace: Annotated[str | None, typer.Option(help="Only this workspace.")] = None,
    fix: Annotated[bool, typer.Option("--fix", help="Rewrite the balances from the ledger.")] = False,
    as_json: JsonFlag = False,
    database_url: DbFlag = None,
) -> None:
    """Recompute every balance from the ledger and print the differences (exit 1 if any).

    With --fix, rewrite the differing balances from the ledger.
    """
    settings = load_settings(database_url)
    # The `balances` rows of the embedded and sql meters. A Redis deployment's live
    # balances are reconciled by its meter's own BalanceStore (gateway.accounts.reconcile).
    engine = open_engine(settings.database_url)
    store = SqlBalances(engine, SystemClock())
    try:
        if fix and (owner := store.embedded_owner()):
            fail(f"a running gateway ({owner}) holds these balances in memory (the embedded "
                 "meter); stop it, run `reconcile --fix`, then start it again")
        reports = reconcile_all(store, fix=fix, workspace_id=workspace)
    except ReconcileError as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    differing = [r for r in reports if r.differences]
    if settings.redis_url:
        Console(stderr=True).print("note: these are the database's balances (which seed Redis); "
                                   "the live Redis balances are not compared (docs/deployment.md)")
    if as_json:
        print(json.dumps({"workspaces": len(reports), "differing": len(differing),
                          "fixed": fix and bool(differing),
                          "reports": [r.as_dict() for r in differing]}, indent=2))
    elif differing:
        emit(rows(differing), False,
             "balances rewritten from the ledger" if fix else "balances differ from the ledger")
    else:
        console.print(f"all {len(reports)} workspace balances match the ledger")
    if differing and not fix:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """The root's credit commands, in the order `--help` lists them."""
    app.command()(balance)
    app.command()(topup)
    app.command()(reconcile)
