"""`bookbag-gateway serve`: checks before forking, one startup summary, then uvicorn.

The summary (on stderr) says what this gateway will run with: the database,
the meter, metering, the admin API, the secret key, the provider keys found,
and a warning naming each model no key reaches. A second gateway on a
database whose balances an embedded meter already owns is refused with that
message alone, before uvicorn starts (no traceback).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from gateway.catalog import Catalog, CatalogError, load
from gateway.cli.context import fail, load_settings, open_new_engine, shown_url
from gateway.cli.options import DbFlag, PricingFlag
from gateway.clock import SystemClock
from gateway.flow.provider_keys import HOUSE_KEY_ENV, unavailable
from gateway.settings import Settings, export_env


def meter_of(settings: Settings) -> str:
    from gateway.app import meter_kind  # noqa: TID251 -- the summary names the meter it builds

    return meter_kind(settings)


def meter_note(settings: Settings, meter: str, workers: int) -> str:
    """What the meter line adds: where the balances live and who shares them."""
    sqlite = settings.database_url.startswith("sqlite")
    if meter == "memory":
        return "  (embedded: this process owns the balances)"
    if meter == "sql" and sqlite:
        return (f"  (balances in the SQLite file, shared by the {workers} workers; each groups "
                "its reserves and settles into one commit per loop turn)" if workers > 1
                else "  (balances in the SQLite file, shared with any other process on it)")
    if meter == "sql":
        return "  (balances as PostgreSQL rows, shared by every process)"
    return "  (balances in Redis, shared by every process and host)" if meter == "redis" else ""


def summary(settings: Settings, catalog: Catalog, *, created: bool, workers: int) -> list[str]:
    """The startup summary's lines (`serve` prints them; tests read them)."""
    meter = meter_of(settings)
    found = sorted({HOUSE_KEY_ENV.get(k, k) for k in settings.provider_keys})
    lines = [
        f"bookbag-gateway on http://{settings.host}:{settings.port} ({workers} worker"
        f"{'s' if workers > 1 else ''})",
        f"  database       {shown_url(settings.database_url)}"
        + ("  (new and empty: schema created)" if created else ""),
        f"  meter          {meter}" + meter_note(settings, meter, workers),
        f"  metering       {'on' if settings.metering else 'off (no reply is charged)'}",
        f"  admin API      {'on' if settings.admin_token else 'off (BOOKBAG_ADMIN_TOKEN not set)'}",
        "  secret key     " + ("set" if settings.secret_key
                                else "not set (BYO keys and webhooks need BOOKBAG_SECRET_KEY)"),
        f"  provider keys  {', '.join(found) if found else 'none'}",
        f"  pricing        {settings.pricing_path}",
    ]
    if workers > 1 and not settings.redis_url:
        lines.insert(-1, f"  per worker     rate limits and the in-flight cap (without Redis each of the "
                         f"{workers} workers counts its own share of a key's traffic)")
    missing = unavailable([m for m in catalog.models.values()], settings)
    if missing:
        lines.append(f"warning: no provider key for {', '.join(missing)}: these models answer "
                     "400 provider_key_missing unless the caller sends a BYO key")
    return lines


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

    from gateway.accounts.reconcile import SqlBalances

    export_env({"BOOKBAG_HOST": host, "BOOKBAG_PORT": port,
                "BOOKBAG_DATABASE_URL": database_url, "BOOKBAG_PRICING": pricing,
                "BOOKBAG_REDIS_URL": redis_url, "BOOKBAG_METERING": metering})
    settings = load_settings()
    if workers > 1 and not settings.redis_url and settings.meter in ("auto", "memory"):
        # One process owns balances in the embedded meter; several share SQL rows instead
        # (docs/architecture.md, "Many workers on one SQLite file").
        export_env({"BOOKBAG_METER": "sql"})
        settings = load_settings()
    try:
        catalog = load(settings.pricing_path)
    except CatalogError as exc:
        fail(str(exc))
    engine, created = open_new_engine(settings.database_url)  # refuses an outdated schema
    try:
        owner = SqlBalances(engine, SystemClock()).embedded_owner() \
            if meter_of(settings) == "memory" else None
    finally:
        engine.dispose()
    if owner:
        fail(f"another gateway process ({owner}) owns the balances of this database "
             "(the embedded meter allows one process): stop it, or use another database, "
             "or set BOOKBAG_REDIS_URL or BOOKBAG_METER=sql to run several")
    err = Console(stderr=True, soft_wrap=True)
    for line in summary(settings, catalog, created=created, workers=workers):
        err.print(escape(line), style="yellow" if line.startswith("warning") else None)
    uvicorn.run(
        "gateway.cli.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers if workers > 1 else None,
        loop="uvloop",
        # httptools; malformed HTTP and oversized heads refused in the OpenAI error shape
        http="gateway.edge.protocol:EnvHttpProtocol",
        access_log=False,
        proxy_headers=False,  # no client address is read; the dashboard reads X-Forwarded-Proto itself
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_grace),
    )


def register(app: typer.Typer) -> None:
    app.command()(serve)
