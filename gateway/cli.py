"""The `bookbag-gateway` command: serve, and the operator commands on the same database.

Every command reads the same settings as the server (environment, then
flags) and prints a readable table, or JSON with `--json`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine

from gateway import migrate
from gateway.catalog import CatalogError, load
from gateway.cli_caps import register as register_caps
from gateway.cli_lifecycle import Helpers
from gateway.cli_lifecycle import register as register_lifecycle
from gateway.cli_usage import register as register_usage
from gateway.clock import SystemClock
from gateway.database import create_schema, make_engine
from gateway.reconcile import ReconcileError, SqlBalances, reconcile_all, rows
from gateway.settings import Settings, SettingsError, export_env
from gateway.types import EntryKind
from gateway.workspaces import AccountError, Accounts

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Bookbag Gateway: an OpenAI-compatible proxy that meters credits.")
workspace_app = typer.Typer(no_args_is_help=True, help="Create and inspect workspaces.")
key_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys.")
app.add_typer(workspace_app, name="workspace")
app.add_typer(key_app, name="key")
db_app = typer.Typer(no_args_is_help=True, help="Schema migrations (SQLite and PostgreSQL).")
app.add_typer(db_app, name="db")

console = Console()
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DbFlag = Annotated[str | None, typer.Option("--database-url", help="Overrides BOOKBAG_DATABASE_URL.")]
PricingFlag = Annotated[str | None, typer.Option("--pricing", help="Overrides BOOKBAG_PRICING.")]


def fail(message: str) -> None:
    Console(stderr=True).print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def _settings(database_url: str | None = None, pricing: str | None = None,
              **overrides: Any) -> Settings:
    try:
        return Settings.from_env(database_url=database_url, pricing_path=pricing, **overrides)
    except SettingsError as exc:
        fail(str(exc))
        raise  # unreachable: fail exits


def _accounts(database_url: str | None, pricing: str | None = None) -> Accounts:
    settings = _settings(database_url, pricing)
    try:
        catalog = load(settings.pricing_path)
    except CatalogError as exc:
        fail(str(exc))
    return Accounts(_engine(settings.database_url), catalog, SystemClock())


def _engine(database_url: str) -> Engine:
    """An engine on a database at the schema's head (an empty one gets the schema)."""
    engine = make_engine(database_url)
    try:
        create_schema(engine)
    except migrate.SchemaError as exc:
        engine.dispose()
        fail(str(exc))
    return engine


def emit(data: Any, as_json: bool, title: str | None = None) -> None:
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    if isinstance(data, dict):  # one record: a field per line, values never cut short
        table = Table(title=title, show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for name, value in data.items():
            table.add_row(str(name), "" if value is None else str(value))
        console.print(table)
        return
    if not data:
        console.print("(none)")
        return
    table = Table(title=title)
    for column in data[0]:
        table.add_column(str(column), overflow="fold")  # wrapped, never an ellipsis
    for row in data:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    console.print(table)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Overrides BOOKBAG_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Overrides BOOKBAG_PORT.")] = None,
    workers: Annotated[int, typer.Option(help="Gateway processes.")] = 1,
    database_url: DbFlag = None,
    pricing: PricingFlag = None,
    redis_url: Annotated[str | None, typer.Option(help="Overrides BOOKBAG_REDIS_URL.")] = None,
    metering: Annotated[str | None, typer.Option(help="on | off (BOOKBAG_METERING).")] = None,
) -> None:
    """Run the gateway (creates the schema of an empty database)."""
    import uvicorn

    from gateway.http_protocol import GatewayHttpProtocol

    flags = {"BOOKBAG_HOST": host, "BOOKBAG_PORT": port, "BOOKBAG_DATABASE_URL": database_url,
             "BOOKBAG_PRICING": pricing, "BOOKBAG_REDIS_URL": redis_url,
             "BOOKBAG_METERING": metering}
    export_env(flags)
    settings = _settings()
    if workers > 1 and not settings.redis_url and settings.meter in ("auto", "memory"):
        # One process owns balances in the embedded meter; several share SQL rows instead.
        export_env({"BOOKBAG_METER": "sql"})
        settings = _settings()
    try:
        load(settings.pricing_path)
    except CatalogError as exc:
        fail(str(exc))
    _engine(settings.database_url).dispose()  # refuses an outdated schema before forking
    uvicorn.run(
        "gateway.cli:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers if workers > 1 else None,
        loop="uvloop",
        http=GatewayHttpProtocol,  # httptools; malformed HTTP refused in the OpenAI error shape
        access_log=False,
        proxy_headers=False,  # no client address is read; the dashboard reads X-Forwarded-Proto itself
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_grace),
    )


def app_from_env() -> Any:
    """The ASGI app as uvicorn builds it in each worker process."""
    from gateway.app import create_app

    return create_app(Settings.from_env(), tune_gc=True)


@workspace_app.command("create")
def workspace_create(
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
    accounts = _accounts(database_url, pricing)
    try:
        ws = accounts.create_workspace(name, plan, custom_allotment=credits, anchor_date=anchor)
        key = accounts.create_key(ws.id, agent_id=agent)
    except AccountError as exc:
        fail(str(exc))
    data = {"workspace_id": ws.id, "name": ws.name, "plan": ws.plan,
            "anchor_date": ws.anchor_date, "key_id": key.id, "key": key.key}
    emit(data, as_json, "workspace created: the key is shown once")


@workspace_app.command("list")
def workspace_list(as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
    """List workspaces."""
    rows = [ws.model_dump() for ws in _accounts(database_url).workspaces()]
    emit(rows, as_json, "workspaces")


@workspace_app.command("show")
def workspace_show(workspace: str, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
    """Show one workspace."""
    try:
        emit(_accounts(database_url).workspace(workspace).model_dump(), as_json, "workspace")
    except AccountError as exc:
        fail(str(exc))


@key_app.command("create")
def key_create(
    workspace: Annotated[str, typer.Option(help="The workspace id.")],
    agent: Annotated[str | None, typer.Option(help="Bind the key to this agent.")] = None,
    scope: Annotated[list[str] | None, typer.Option(help="inference and/or read.")] = None,
    rate_limit: Annotated[str | None, typer.Option(help='This key\'s own limit, e.g. "100/10s".')] = None,
    expires_at: Annotated[str | None, typer.Option(
        help="The key stops working then: ISO 8601 (2027-01-31T00:00:00Z) or Unix seconds.")] = None,
    as_json: JsonFlag = False,
    database_url: DbFlag = None,
) -> None:
    """Create a key (printed once; stored as a SHA-256 hash)."""
    try:
        key = _accounts(database_url).create_key(
            workspace, agent_id=agent, scopes=tuple(scope or ("inference", "read")),
            rate_limit=rate_limit, expires_at=expires_at)
    except AccountError as exc:
        fail(str(exc))
    emit(dataclasses.asdict(key), as_json, "key created: shown once")


@key_app.command("list")
def key_list(workspace: Annotated[str, typer.Option()], as_json: JsonFlag = False,
             database_url: DbFlag = None) -> None:
    """List a workspace's keys (never the keys themselves)."""
    rows = [k.model_dump(exclude={"key_hash"}) for k in _accounts(database_url).keys(workspace)]
    emit(rows, as_json, "keys")


@key_app.command("revoke")
def key_revoke(key_id: str, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
    """Revoke a key; running gateways refuse it within seconds."""
    try:
        row = _accounts(database_url).revoke_key(key_id)
    except AccountError as exc:
        fail(str(exc))
    emit({"key_id": row.id, "revoked_ms": row.revoked_ms}, as_json, "key revoked")


@app.command()
def balance(
    workspace: Annotated[str, typer.Option(help="The workspace id.")],
    as_json: JsonFlag = False,
    database_url: DbFlag = None,
    pricing: PricingFlag = None,
) -> None:
    """Show a workspace's balance (settled; holds in flight live in the server)."""
    try:
        data = _accounts(database_url, pricing).balance(workspace)
    except AccountError as exc:
        fail(str(exc))
    emit(data, as_json, "balance")


@app.command()
def topup(
    workspace: Annotated[str, typer.Option(help="The workspace id.")],
    credits: Annotated[int, typer.Argument(help="Credits to add to the top-up bucket.")],
    ref: Annotated[str | None, typer.Option(help="Your reference (makes the grant idempotent).")] = None,
    adjustment: Annotated[bool, typer.Option(help="Record as an adjustment (may be negative).")] = False,
    as_json: JsonFlag = False,
    database_url: DbFlag = None,
) -> None:
    """Grant purchased credits (carried over between periods, spent after the allotment)."""
    accounts = _accounts(database_url)
    kind = EntryKind.ADJUSTMENT if adjustment else EntryKind.TOPUP
    try:
        entry = accounts.topup_entry(workspace, credits, kind=kind, ref=ref, actor="cli")
    except AccountError as exc:
        fail(str(exc))
    inserted = accounts.apply(entry)
    emit({"workspace_id": workspace, "kind": str(kind), "credits": credits, "ref": entry.ref,
          "applied": inserted}, as_json, "granted" if inserted else "already granted")


@db_app.command("upgrade")
def db_upgrade(as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
    """Apply the schema migrations (creates the schema of an empty database)."""
    engine = make_engine(_settings(database_url).database_url)
    try:
        before, after = migrate.upgrade(engine)
    except migrate.SchemaError as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    emit({"from": before, "to": after, "changed": before != after}, as_json,
         "schema upgraded" if before != after else "schema already at head")


@db_app.command("current")
def db_current(as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
    """Show the database's schema revision and the one this gateway needs."""
    engine = make_engine(_settings(database_url).database_url)
    try:
        data = {"revision": migrate.current(engine), "head": migrate.head(),
                "state": str(migrate.state(engine))}
    except migrate.SchemaError as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    emit(data, as_json, "schema")


@db_app.command("revision", hidden=True)
def db_revision(message: Annotated[str, typer.Argument(help="What changed.")]) -> None:
    """(Developers) write the next migration from the change to gateway/schema.py."""
    console.print(f"wrote {migrate.revision(message)}: review it, then run the migration tests")


@app.command()
def reconcile(
    workspace: Annotated[str | None, typer.Option(help="Only this workspace.")] = None,
    fix: Annotated[bool, typer.Option("--fix", help="Rewrite the balances from the ledger.")] = False,
    as_json: JsonFlag = False,
    database_url: DbFlag = None,
) -> None:
    """Recompute every balance from the ledger and print the differences (exit 1 if any).

    With --fix, rewrite the differing balances from the ledger.
    """
    settings = _settings(database_url)
    # The `balances` rows of the embedded and sql meters. A Redis deployment's live
    # balances are reconciled by its meter's own BalanceStore (gateway.reconcile).
    engine = _engine(settings.database_url)
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


# plan changes, suspension, BYO keys, auto-recharge, webhooks (gateway/cli_lifecycle.py)
register_lifecycle(app, workspace_app, Helpers(fail=fail, emit=emit, settings=_settings,
                                               engine=_engine))
# spend caps: key cap / key caps (gateway/cli_caps.py)
register_caps(key_app, _accounts, fail, emit)
# usage and ledger export (gateway/cli_usage.py)
register_usage(app, Helpers(fail=fail, emit=emit, settings=_settings, engine=_engine))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
