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
from rich.markup import escape
from sqlalchemy import Engine

from gateway.accounts.reconcile import ReconcileError, SqlBalances, reconcile_all, rows
from gateway.accounts.workspaces import AccountError, Accounts
from gateway.catalog import CatalogError, load
from gateway.cli.caps import register as register_caps
from gateway.cli.lifecycle import Helpers, cli_message
from gateway.cli.lifecycle import register as register_lifecycle
from gateway.cli.records import WORKSPACE_COLUMNS, console, emit, key_record, workspace_record
from gateway.cli.serve import register as register_serve
from gateway.cli.serve import shown_url
from gateway.cli.usage import register as register_usage
from gateway.clock import SystemClock
from gateway.settings import Settings, SettingsError
from gateway.storage import migrate
from gateway.storage.database import create_schema, make_engine
from gateway.types import EntryKind

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Bookbag Gateway: an OpenAI-compatible proxy that meters credits.")
workspace_app = typer.Typer(no_args_is_help=True, help="Create and inspect workspaces.")
key_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys.")
app.add_typer(workspace_app, name="workspace")
app.add_typer(key_app, name="key")
db_app = typer.Typer(no_args_is_help=True, help="Schema migrations (SQLite and PostgreSQL).")
app.add_typer(db_app, name="db")



def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"bookbag-gateway {version('bookbag-gateway')}")
        raise typer.Exit()


@app.callback()
def root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
         ) -> None:
    """Bookbag Gateway: an OpenAI-compatible proxy that meters credits."""
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DbFlag = Annotated[str | None, typer.Option("--database-url", help="Overrides BOOKBAG_DATABASE_URL.")]
PricingFlag = Annotated[str | None, typer.Option("--pricing", help="Overrides BOOKBAG_PRICING.")]


def fail(message: str) -> None:
    """One line on stderr (never wrapped, never read as markup), exit 2."""
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(message)}")
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


def _engine_new(database_url: str) -> tuple[Engine, bool]:
    """An engine on a database at the schema's head, and whether it was empty (now created)."""
    engine = make_engine(database_url)
    try:
        created = create_schema(engine)
    except migrate.SchemaError as exc:
        engine.dispose()
        fail(str(exc))
        raise  # unreachable: fail exits
    return engine, created


def _engine(database_url: str) -> Engine:
    """As `_engine_new`; a new, empty database is said on stderr (a command run elsewhere
    than intended, or with BOOKBAG_DATABASE_URL unset, would otherwise show nothing)."""
    engine, created = _engine_new(database_url)
    if created:
        Console(stderr=True, soft_wrap=True).print(
            f"note: {escape(shown_url(database_url))} was a new, empty database: "
            "its schema was just created (set BOOKBAG_DATABASE_URL or --database-url to use another)")
    return engine


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
        fail(cli_message(exc, plan="--plan"))
    data = {"workspace_id": ws.id, "name": ws.name, "plan": ws.plan,
            "anchor_date": ws.anchor_date, "key_id": key.id, "key": key.key}
    emit(data, as_json, "workspace created: the key is shown once")


@workspace_app.command("list")
def workspace_list(as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
    """List workspaces."""
    rows = [workspace_record(ws) for ws in _accounts(database_url).workspaces()]
    if not as_json:  # the columns that tell workspaces apart; `show` has every field
        rows = [{k: row[k] for k in WORKSPACE_COLUMNS} for row in rows]
    emit(rows, as_json, "workspaces")


def scopes_of(given: list[str] | None) -> tuple[str, ...]:
    """`--scope inference --scope read` or `--scope inference,read`."""
    if not given:
        return ("inference", "read")
    return tuple(part.strip() for item in given for part in item.split(",") if part.strip())


@key_app.command("create")
def key_create(
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
        key = _accounts(database_url).create_key(
            workspace, agent_id=agent, scopes=scopes_of(scope),
            rate_limit=rate_limit, expires_at=expires_at)
    except AccountError as exc:
        fail(cli_message(exc))
    emit(dataclasses.asdict(key), as_json, "key created: shown once")


@key_app.command("list")
def key_list(workspace: Annotated[str, typer.Option()], as_json: JsonFlag = False,
             database_url: DbFlag = None) -> None:
    """List a workspace's keys (never the keys themselves)."""
    accounts = _accounts(database_url)
    try:
        accounts.workspace(workspace)
    except AccountError as exc:
        fail(cli_message(exc))
    emit([key_record(k) for k in accounts.keys(workspace)], as_json, "keys")


@key_app.command("revoke")
def key_revoke(key_id: str, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
    """Revoke a key; running gateways refuse it within seconds."""
    try:
        row = _accounts(database_url).revoke_key(key_id)
    except AccountError as exc:
        fail(cli_message(exc))
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
        fail(cli_message(exc))
    emit(data, as_json, "balance")


@app.command()
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
    accounts = _accounts(database_url)
    kind = EntryKind.ADJUSTMENT if adjustment else EntryKind.TOPUP
    try:
        entry = accounts.topup_entry(workspace, credits, kind=kind, ref=ref, actor="cli")
    except AccountError as exc:
        fail(cli_message(exc, credits="CREDITS"))
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
    """(Developers) write the next migration from the change to gateway/storage/schema.py."""
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
    # balances are reconciled by its meter's own BalanceStore (gateway.accounts.reconcile).
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


# plan changes, suspension, BYO keys, auto-recharge, webhooks (gateway/cli/lifecycle.py)
HELPERS = Helpers(fail=fail, emit=emit, settings=_settings, engine=_engine, engine_new=_engine_new)
register_lifecycle(app, workspace_app, HELPERS)
# spend caps: key cap / key caps (gateway/cli/caps.py)
register_caps(key_app, _accounts, fail, emit)
# usage and ledger export (gateway/cli/usage.py)
register_usage(app, HELPERS)
# serve: its checks and startup summary (gateway/cli/serve.py)
register_serve(app, HELPERS)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
