"""The operator commands of the workspace lifecycle: plans, suspension, BYO keys, auto-recharge,
webhooks. `gateway/cli/app.py` registers them (`register`); they share its settings and output.

Like every operator command they write to the database directly; running
gateways pick the change up within seconds (their caches' TTL, the embedded
meter's sync interval).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

import typer
from sqlalchemy import Engine

from gateway.accounts.alerts import parse_alerts, store_alerts
from gateway.accounts.byo import ByoKeys
from gateway.accounts.keyring import Keyring, KeyringError, generate_key
from gateway.accounts.operator_input import InputError
from gateway.accounts.plans import Plans
from gateway.accounts.recharge import Recharges
from gateway.accounts.thresholds import parse_fractions, store_low_fractions
from gateway.accounts.workspaces import AccountError, Accounts
from gateway.catalog import Catalog, CatalogError, load
from gateway.cli.records import workspace_record, workspace_view
from gateway.clock import SystemClock
from gateway.settings import Settings
from gateway.webhooks.registry import Webhooks

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DbFlag = Annotated[str | None, typer.Option("--database-url", help="Overrides BOOKBAG_DATABASE_URL.")]
PricingFlag = Annotated[str | None, typer.Option("--pricing", help="Overrides BOOKBAG_PRICING.")]
Ws = Annotated[str, typer.Argument(help="The workspace id.")]

# The API's field names as the CLI's flags say them (errors speak the CLI's language).
FLAGS = {"name": "NAME", "anchor_date": "--anchor", "credits": "--credits", "plan": "PLAN",
         "threshold": "--threshold", "amount": "--amount", "monthly_cap": "--cap",
         "events": "--event", "scopes": "--scope", "kind": "--kind", "agent_id": "--agent",
         "model": "--model", "rate_limit": "--rate-limit", "ref": "--ref"}


def cli_message(exc: Exception, **flags: str) -> str:
    """An operator error as one line; a bad input names the CLI flag, not the API field."""
    if isinstance(exc, InputError):
        base, _, index = exc.field.partition("[")
        flag = flags.get(base) or FLAGS.get(base) or exc.field
        return exc.for_flag(flag + (f" (item {int(index.rstrip(']')) + 1})" if index else ""))
    return str(exc)


@dataclass(frozen=True)
class Helpers:
    fail: Callable[[str], None]
    emit: Callable[[Any, bool, str | None], None]
    settings: Callable[..., Settings]
    engine: Callable[[str], Engine]
    engine_new: Callable[[str], tuple[Engine, bool]]


@dataclass(frozen=True)
class _Ops:
    accounts: Accounts
    plans: Plans
    byo: ByoKeys
    webhooks: Webhooks
    recharges: Recharges
    engine: Engine


def delivery_text(d: dict[str, Any]) -> str:
    """`wh_1: failed after 12 attempts (last error: HTTP 500)`."""
    attempts = f"{d['attempts']} attempt{'s' if d['attempts'] != 1 else ''}"
    text = f"{d['endpoint_id']}: {d['status']} after {attempts}"
    if d["status"] != "delivered" and d.get("last_error"):
        text += f" (last error: {d['last_error']})"
    return text


def register(app: typer.Typer, workspace_app: typer.Typer, h: Helpers) -> None:
    byo_app = typer.Typer(no_args_is_help=True, help="Workspace BYO provider keys and toggle.")
    recharge_app = typer.Typer(no_args_is_help=True, help="Auto-recharge settings.")
    webhook_app = typer.Typer(no_args_is_help=True, help="Webhook endpoints and events.")
    app.add_typer(byo_app, name="byo")
    app.add_typer(recharge_app, name="recharge")
    app.add_typer(webhook_app, name="webhook")

    def die(message: str) -> NoReturn:
        h.fail(message)
        raise typer.Exit(2)  # unreachable: fail exits

    def ops(database_url: str | None, pricing: str | None = None) -> _Ops:
        settings = h.settings(database_url, pricing)
        try:
            catalog: Catalog = load(settings.pricing_path)
            keyring = Keyring(settings.secret_key)
        except (CatalogError, KeyringError) as exc:
            die(str(exc))
        engine = h.engine(settings.database_url)
        clock = SystemClock()
        webhooks = Webhooks(engine, keyring, clock, allow_private=settings.webhook_allow_private)
        recharges = Recharges(engine, clock, webhooks)
        providers = frozenset({"openai", "anthropic"}
                              | {m.provider for m in catalog.models.values() if m.byo})
        return _Ops(Accounts(engine, catalog, clock), Plans(engine, catalog, clock),
                    ByoKeys(engine, keyring, clock, providers=providers), webhooks, recharges,
                    engine)

    def attempt(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (AccountError, KeyringError) as exc:
            die(cli_message(exc))

    # --- workspace plan / suspend / resume / set ----------------------------------------

    @workspace_app.command("plan")
    def workspace_plan(
        workspace: Ws, plan: Annotated[str, typer.Argument(help="The new plan.")],
        credits: Annotated[int | None, typer.Option(help="Monthly credits (custom plans).")] = None,
        as_json: JsonFlag = False, database_url: DbFlag = None, pricing: PricingFlag = None,
    ) -> None:
        """Change the plan: an upgrade applies now (the difference is granted), a downgrade
        at the next period."""
        o = ops(database_url, pricing)
        change = attempt(lambda: o.plans.change(workspace, plan, custom=credits, actor="cli"))
        h.emit(change.as_dict(), as_json, f"plan change: {change.kind}")

    @workspace_app.command("show")
    def workspace_show(workspace: Ws, as_json: JsonFlag = False, database_url: DbFlag = None,
                       pricing: PricingFlag = None) -> None:
        """Show one workspace as GET /admin/workspaces/{id} does: settings, balance, recharge, BYO."""
        o = ops(database_url, pricing)
        ws = attempt(lambda: o.accounts.workspace(workspace))
        byo = [{"provider": k.provider, "fingerprint": k.fingerprint} for k in o.byo.keys(ws.id)]
        h.emit(workspace_view(ws, o.accounts.balance(ws.id), o.recharges.status(ws.id, ws.anchor_date),
                              byo), as_json, "workspace")

    def set_suspended(workspace: str, suspended: bool, as_json: bool, database_url: str | None) -> None:
        o = ops(database_url)
        ws = attempt(lambda: o.accounts.update_workspace(workspace, suspended=suspended))
        h.emit({"workspace_id": ws.id, "suspended": ws.suspended}, as_json, "workspace")

    @workspace_app.command("suspend")
    def workspace_suspend(workspace: Ws, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
        """Suspend a workspace: its keys get 403 workspace_suspended within seconds."""
        set_suspended(workspace, True, as_json, database_url)

    @workspace_app.command("resume")
    def workspace_resume(workspace: Ws, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
        """Lift a suspension."""
        set_suspended(workspace, False, as_json, database_url)

    @workspace_app.command("set")
    def workspace_set(
        workspace: Ws,
        name: Annotated[str | None, typer.Option(help="A new display name.")] = None,
        rate_limit: Annotated[str | None, typer.Option(help='Per-key limit, e.g. "100/10s".')] = None,
        clear_rate_limit: Annotated[bool, typer.Option(help="Back to the plan's limit.")] = False,
        low_fractions: Annotated[str | None, typer.Option(
            help='credits.low fractions of the allotment, e.g. "0.2,0.1".')] = None,
        alerts: Annotated[str | None, typer.Option(
            help='credits.threshold alerts: credits left or % used, e.g. "500,80%"; "" clears.')
        ] = None,
        as_json: JsonFlag = False, database_url: DbFlag = None,
    ) -> None:
        """Rename a workspace, set its rate limit or its low-balance fractions."""
        o = ops(database_url)
        if alerts is not None:
            attempt(lambda: parse_alerts(alerts))  # before any change
        ws = attempt(lambda: o.accounts.update_workspace(
            workspace, name=name, rate_limit=rate_limit, clear_rate_limit=clear_rate_limit))
        if low_fractions is not None:
            attempt(lambda: store_low_fractions(o.engine, workspace, low_fractions))
        if alerts is not None:
            attempt(lambda: store_alerts(o.engine, workspace, alerts))
        data = workspace_record(o.accounts.workspace(ws.id))
        data["low_fractions"] = ",".join(parse_fractions(data["low_fractions"]))
        h.emit(data, as_json, "workspace")

    # --- byo ------------------------------------------------------------------------------

    @byo_app.command("set")
    def byo_set(
        workspace: Ws, provider: Annotated[str, typer.Argument(help="openai, anthropic, ...")],
        key: Annotated[str, typer.Option(prompt="Provider key", hide_input=True,
                                         help="Prompted for (hidden) when omitted.")],
        as_json: JsonFlag = False, database_url: DbFlag = None, pricing: PricingFlag = None,
    ) -> None:
        """Store the workspace's key for a provider (encrypted; only its fingerprint is shown)."""
        o = ops(database_url, pricing)
        stored = attempt(lambda: o.byo.set_key(workspace, provider, key, actor="cli"))
        h.emit({"workspace_id": workspace, "provider": stored.provider,
                "fingerprint": stored.fingerprint}, as_json, "BYO key stored")

    @byo_app.command("delete")
    def byo_delete(workspace: Ws, provider: str, as_json: JsonFlag = False,
                   database_url: DbFlag = None) -> None:
        """Delete the workspace's key for a provider."""
        o = ops(database_url)
        deleted = attempt(lambda: o.byo.delete_key(workspace, provider))
        h.emit({"workspace_id": workspace, "provider": provider, "deleted": deleted}, as_json,
               "BYO key")

    @byo_app.command("list")
    def byo_list(workspace: Ws, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
        """The toggle and the stored keys' fingerprints."""
        o = ops(database_url)
        status = attempt(lambda: o.byo.status(workspace))
        if as_json:
            h.emit(status, True, None)
        else:
            h.emit({"workspace_id": workspace, "enabled": status["enabled"]}, False, "BYO")
            h.emit(status["keys"], False, "stored keys")

    @byo_app.command("enable")
    def byo_enable(workspace: Ws, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
        """Turn BYO on: replies on models of providers with a stored key use it, uncharged."""
        o = ops(database_url)
        attempt(lambda: o.byo.set_enabled(workspace, True))
        h.emit(attempt(lambda: o.byo.status(workspace)), as_json, "BYO")

    @byo_app.command("disable")
    def byo_disable(workspace: Ws, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
        """Turn BYO off (the stored keys are kept)."""
        o = ops(database_url)
        attempt(lambda: o.byo.set_enabled(workspace, False))
        h.emit(attempt(lambda: o.byo.status(workspace)), as_json, "BYO")

    @byo_app.command("rotate")
    def byo_rotate(as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
        """Re-encrypt every stored secret under the first key of BOOKBAG_SECRET_KEY."""
        o = ops(database_url)
        keys = attempt(o.byo.rotate)
        secrets = attempt(o.webhooks.rotate)
        h.emit({"byo_keys": keys, "webhook_secrets": secrets}, as_json, "re-encrypted")

    @byo_app.command("generate-key")
    def byo_generate_key() -> None:
        """Print a new key for BOOKBAG_SECRET_KEY."""
        print(generate_key())

    # --- recharge -----------------------------------------------------------------------

    @recharge_app.command("set")
    def recharge_set(
        workspace: Ws,
        threshold: Annotated[int, typer.Option(help="Recharge when the balance falls below this.")],
        amount: Annotated[int, typer.Option(help="Credits per recharge.")],
        cap: Annotated[int, typer.Option(help="At most this many recharges per period.")],
        disabled: Annotated[bool, typer.Option(help="Store the settings but keep them off.")] = False,
        as_json: JsonFlag = False, database_url: DbFlag = None,
    ) -> None:
        """Set auto-recharge for a workspace."""
        o = ops(database_url)
        attempt(lambda: o.recharges.configure(workspace, threshold=threshold, amount=amount,
                                              monthly_cap=cap, enabled=not disabled))
        ws = o.accounts.workspace(workspace)
        h.emit(o.recharges.status(workspace, ws.anchor_date), as_json, "auto-recharge")

    @recharge_app.command("show")
    def recharge_show(workspace: Ws, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
        """Show auto-recharge settings and this period's recharges."""
        o = ops(database_url)
        ws = attempt(lambda: o.accounts.workspace(workspace))
        h.emit(o.recharges.status(workspace, ws.anchor_date), as_json, "auto-recharge")

    @recharge_app.command("delete")
    def recharge_delete(workspace: Ws, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
        """Turn auto-recharge off (removes its settings)."""
        o = ops(database_url)
        attempt(lambda: o.accounts.workspace(workspace))
        h.emit({"workspace_id": workspace, "deleted": o.recharges.disable(workspace)}, as_json,
               "auto-recharge")

    # --- webhook -----------------------------------------------------------------------

    @webhook_app.command("create")
    def webhook_create(
        workspace: Ws, url: Annotated[str, typer.Argument(help="Where events are POSTed.")],
        event: Annotated[list[str] | None, typer.Option(help="Only these event types.")] = None,
        as_json: JsonFlag = False, database_url: DbFlag = None,
    ) -> None:
        """Add an endpoint; prints its signing secret once."""
        o = ops(database_url)
        created = attempt(lambda: o.webhooks.create(workspace, url, event))
        h.emit({"id": created.id, "workspace_id": workspace, "url": created.url,
                "events": created.events, "secret": created.secret}, as_json,
               "webhook endpoint created: the secret is shown once")

    @webhook_app.command("list")
    def webhook_list(workspace: Ws, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
        """List a workspace's endpoints (secrets as fingerprints)."""
        o = ops(database_url)
        attempt(lambda: o.accounts.workspace(workspace))
        h.emit(o.webhooks.endpoints(workspace), as_json, "webhook endpoints")

    @webhook_app.command("update")
    def webhook_update(
        endpoint: Annotated[str, typer.Argument(help="The endpoint id (wh_...).")],
        url: Annotated[str | None, typer.Option()] = None,
        event: Annotated[list[str] | None, typer.Option(help="Only these event types.")] = None,
        enabled: Annotated[bool | None, typer.Option("--enable/--disable")] = None,
        as_json: JsonFlag = False, database_url: DbFlag = None,
    ) -> None:
        """Change an endpoint's URL, event types, or pause it."""
        o = ops(database_url)
        h.emit(attempt(lambda: o.webhooks.update(endpoint, url=url, events=event, enabled=enabled)),
               as_json, "webhook endpoint")

    @webhook_app.command("delete")
    def webhook_delete(endpoint: str, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
        """Remove an endpoint (its pending deliveries are dropped)."""
        o = ops(database_url)
        h.emit({"id": endpoint, "deleted": o.webhooks.delete(endpoint)}, as_json, "webhook endpoint")

    @webhook_app.command("events")
    def webhook_events(workspace: Ws, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
        """The newest events of a workspace and how their deliveries stand."""
        o = ops(database_url)
        attempt(lambda: o.accounts.workspace(workspace))
        events = o.webhooks.events(workspace)
        if as_json:
            h.emit(events, True, None)
            return
        h.emit([{"id": e["id"], "type": e["type"], "created_ms": e["created_ms"],
                 "deliveries": "; ".join(delivery_text(d) for d in e["deliveries"]) or "(none)"}
                for e in events], False, "webhook events")

