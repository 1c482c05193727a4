"""`bookbag-gateway workspace ...`: create, list, show, change the plan, suspend, resume, set."""

from __future__ import annotations

from typing import Annotated

import typer

from gateway.accounts.alerts import parse_alerts, store_alerts
from gateway.accounts.thresholds import parse_fractions, store_low_fractions
from gateway.accounts.workspaces import AccountError
from gateway.cli.context import attempt, fail, open_accounts, open_operations
from gateway.cli.options import DbFlag, JsonFlag, PricingFlag, Ws, cli_message
from gateway.cli.records import WORKSPACE_COLUMNS, emit, workspace_record, workspace_view


def create(
    name: Annotated[str, typer.Argument(help="A display name.")],
    plan: Annotated[str, typer.Option(help="free, hobby, standard, pro or enterprise.")] = "free",
    credits: Annotated[int | None, typer.Option(help="Monthly credits (custom plans).")] = None,
    anchor: Annotated[str | None, typer.Option(help="Billing anchor date YYYY-MM-DD.")] = None,
    agent: Annotated[str | None, typer.Option(help="Bind the first key to an agent.")] = None,
    as_json: JsonFlag = False,
    database_url: DbFlag = None,
    pricing: PricingFlag = None,
) -> None:
    """Create a workspace on a plan and print its first key (shown once)."""
    accounts = open_accounts(database_url, pricing)
    try:
        ws = accounts.create_workspace(name, plan, custom_allotment=credits, anchor_date=anchor)
        key = accounts.create_key(ws.id, agent_id=agent)
    except AccountError as exc:
        fail(cli_message(exc, plan="--plan"))
    data = {"workspace_id": ws.id, "name": ws.name, "plan": ws.plan,
            "anchor_date": ws.anchor_date, "key_id": key.id, "key": key.key}
    emit(data, as_json, "workspace created: the key is shown once")


def list_(as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
    """List workspaces."""
    rows = [workspace_record(ws) for ws in open_accounts(database_url).workspaces()]
    if not as_json:  # the columns that tell workspaces apart; `show` has every field
        rows = [{k: row[k] for k in WORKSPACE_COLUMNS} for row in rows]
    emit(rows, as_json, "workspaces")


def plan(
    workspace: Ws, plan: Annotated[str, typer.Argument(help="The new plan.")],
    credits: Annotated[int | None, typer.Option(help="Monthly credits (custom plans).")] = None,
    as_json: JsonFlag = False, database_url: DbFlag = None, pricing: PricingFlag = None,
) -> None:
    """Change the plan: an upgrade applies now (the difference is granted), a downgrade
    at the next period."""
    o = open_operations(database_url, pricing)
    change = attempt(lambda: o.plans.change(workspace, plan, custom=credits, actor="cli"))
    emit(change.as_dict(), as_json, f"plan change: {change.kind}")


def show(workspace: Ws, as_json: JsonFlag = False, database_url: DbFlag = None,
         pricing: PricingFlag = None) -> None:
    """Show one workspace as GET /admin/workspaces/{id} does: settings, balance, recharge, BYO."""
    o = open_operations(database_url, pricing)
    ws = attempt(lambda: o.accounts.workspace(workspace))
    byo = [{"provider": k.provider, "fingerprint": k.fingerprint} for k in o.byo.keys(ws.id)]
    emit(workspace_view(ws, o.accounts.balance(ws.id), o.recharges.status(ws.id, ws.anchor_date),
                        byo), as_json, "workspace")


def _set_suspended(workspace: str, suspended: bool, as_json: bool, database_url: str | None) -> None:
    o = open_operations(database_url)
    ws = attempt(lambda: o.accounts.update_workspace(workspace, suspended=suspended))
    emit({"workspace_id": ws.id, "suspended": ws.suspended}, as_json, "workspace")


def suspend(workspace: Ws, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
    """Suspend a workspace: its keys get 403 workspace_suspended within seconds."""
    _set_suspended(workspace, True, as_json, database_url)


def resume(workspace: Ws, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
    """Lift a suspension."""
    _set_suspended(workspace, False, as_json, database_url)


def set_(
    workspace: Ws,
    name: Annotated[str | None, typer.Option(help="A new display name.")] = None,
    rate_limit: Annotated[str | None, typer.Option(help='Per-key limit, e.g. "100/10s".')] = None,
    clear_rate_limit: Annotated[bool, typer.Option(help="Back to the plan's limit.")] = False,
    low_fractions: Annotated[str | None, typer.Option(
        help='credits.low fractions of the allotment, e.g. "0.2,0.1".')] = None,
    alerts: Annotated[str | None, typer.Option(
        help='credits.threshold alerts: credits left or % used, e.g. "500,80%"; "" clears.')
    ] = None,
    responses_store: Annotated[bool | None, typer.Option(
        "--responses-store/--no-responses-store",
        help="Pass the Responses API's `store` on to the provider on the house's keys "
             "(stored responses then live in the house's provider account).")] = None,
    as_json: JsonFlag = False, database_url: DbFlag = None,
) -> None:
    """Rename a workspace, set its rate limit, its low-balance fractions, its alerts, or
    whether its Responses requests may be stored by the provider."""
    o = open_operations(database_url)
    if alerts is not None:
        attempt(lambda: parse_alerts(alerts))  # before any change
    ws = attempt(lambda: o.accounts.update_workspace(
        workspace, name=name, rate_limit=rate_limit, clear_rate_limit=clear_rate_limit,
        responses_store=responses_store))
    if low_fractions is not None:
        attempt(lambda: store_low_fractions(o.engine, workspace, low_fractions))
    if alerts is not None:
        attempt(lambda: store_alerts(o.engine, workspace, alerts))
    data = workspace_record(o.accounts.workspace(ws.id))
    data["low_fractions"] = ",".join(parse_fractions(data["low_fractions"]))
    emit(data, as_json, "workspace")


def register(workspace_app: typer.Typer) -> None:
    """The `workspace` group's commands, in the order `--help` lists them."""
    workspace_app.command("create")(create)
    workspace_app.command("list")(list_)
    workspace_app.command("plan")(plan)
    workspace_app.command("show")(show)
    workspace_app.command("suspend")(suspend)
    workspace_app.command("resume")(resume)
    workspace_app.command("set")(set_)
