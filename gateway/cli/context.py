"""What every operator command shares: its settings, its database, its account services,
and one way to fail.

Settings are the server's (environment, then the command's flags). A failure
is one line on stderr and exit 2, never a traceback. Like every operator
command, the services write to the database directly; running gateways pick
the change up within seconds (their caches' TTL, the embedded meter's sync
interval).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy import Engine, make_url

from gateway.accounts.byo import ByoKeys
from gateway.accounts.keyring import Keyring, KeyringError
from gateway.accounts.plans import Plans
from gateway.accounts.recharge import Recharges
from gateway.accounts.workspaces import AccountError, Accounts
from gateway.catalog import Catalog, CatalogError, load
from gateway.cli.options import cli_message
from gateway.clock import SystemClock
from gateway.settings import Settings, SettingsError
from gateway.storage import migrate
from gateway.storage.database import create_schema, make_engine
from gateway.webhooks.registry import Webhooks

T = TypeVar("T")


def fail(message: str) -> NoReturn:
    """One line on stderr (never wrapped, never read as markup), exit 2."""
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(2)


def attempt(fn: Callable[[], T]) -> T:
    """`fn()`, with an account or keyring error turned into `fail` (in the CLI's words)."""
    try:
        return fn()
    except (AccountError, KeyringError) as exc:
        fail(cli_message(exc))


def load_settings(database_url: str | None = None, pricing: str | None = None,
                  **overrides: Any) -> Settings:
    try:
        return Settings.from_env(database_url=database_url, pricing_path=pricing, **overrides)
    except SettingsError as exc:
        fail(str(exc))


def shown_url(url: str) -> str:
    """The database URL without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL fails later with its own message
        return url


def open_new_engine(database_url: str) -> tuple[Engine, bool]:
    """An engine on a database at the schema's head, and whether it was empty (now created)."""
    engine = make_engine(database_url)
    try:
        created = create_schema(engine)
    except migrate.SchemaError as exc:
        engine.dispose()
        fail(str(exc))
    return engine, created


def open_engine(database_url: str) -> Engine:
    """As `open_new_engine`; a new, empty database is said on stderr (a command run elsewhere
    than intended, or with BOOKBAG_DATABASE_URL unset, would otherwise show nothing)."""
    engine, created = open_new_engine(database_url)
    if created:
        Console(stderr=True, soft_wrap=True).print(
            f"note: {escape(shown_url(database_url))} was a new, empty database: "
            "its schema was just created (set BOOKBAG_DATABASE_URL or --database-url to use another)")
    return engine


def open_accounts(database_url: str | None, pricing: str | None = None) -> Accounts:
    settings = load_settings(database_url, pricing)
    try:
        catalog = load(settings.pricing_path)
    except CatalogError as exc:
        fail(str(exc))
    return Accounts(open_engine(settings.database_url), catalog, SystemClock())


@dataclass(frozen=True)
class Operations:
    """The account services of the lifecycle commands, on one engine."""

    accounts: Accounts
    plans: Plans
    byo: ByoKeys
    webhooks: Webhooks
    recharges: Recharges
    engine: Engine


def open_operations(database_url: str | None, pricing: str | None = None) -> Operations:
    settings = load_settings(database_url, pricing)
    try:
        catalog: Catalog = load(settings.pricing_path)
        keyring = Keyring(settings.secret_key)
    except (CatalogError, KeyringError) as exc:
        fail(str(exc))
    engine = open_engine(settings.database_url)
    clock = SystemClock()
    webhooks = Webhooks(engine, keyring, clock, allow_private=settings.webhook_allow_private)
    recharges = Recharges(engine, clock, webhooks)
    providers = frozenset({"openai", "anthropic"}
                          | {m.provider for m in catalog.models.values() if m.byo})
    return Operations(Accounts(engine, catalog, clock), Plans(engine, catalog, clock),
                      ByoKeys(engine, keyring, clock, providers=providers), webhooks, recharges,
                      engine)
