"""`bookbag-gateway usage` (a table, or `--json`) and `bookbag-gateway ledger export` (JSON lines or CSV).

They read the database directly with the same code as `GET /v1/usage` and
`GET /v1/ledger`; `gateway/cli/app.py` registers them (`register`). The export
streams page after page to a file or stdout and prints the cursor to resume
from on stderr.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import IO, Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine

from gateway.accounts.operator_input import InputError, choice
from gateway.catalog import CatalogError, load
from gateway.cli.context import fail, load_settings, open_engine
from gateway.cli.options import DbFlag, JsonFlag, PricingFlag, cli_message
from gateway.cli.records import emit
from gateway.clock import SystemClock
from gateway.errors import GatewayError, ModelNotFound
from gateway.ledger.export import (
    FORMATS,
    KINDS,
    MAX_LIMIT,
    ExportQuery,
    LedgerExport,
    csv_header,
    csv_rows,
    decode_cursor,
    jsonl,
)
from gateway.ledger.usage import Usage, UsageQuery, parse_group_by
from gateway.ledger.window import window
from gateway.settings import Settings
from gateway.storage.database import snapshot

WsOpt = Annotated[str, typer.Option("--workspace", help="The workspace id.")]
Start = Annotated[str | None, typer.Option(help="YYYY-MM-DD (local day), ISO date-time or epoch s.")]
End = Annotated[str | None, typer.Option(help="Exclusive; a date includes that whole day.")]
Tz = Annotated[str | None, typer.Option(help="IANA time zone of dates and days (default UTC).")]
Agent = Annotated[str | None, typer.Option(help="Only this agent.")]
Model = Annotated[str | None, typer.Option(help="Only this model (an id or an alias).")]


def flagged(exc: GatewayError) -> str:
    """The API's message with its parameter named as the CLI's flag (`group_by` -> --group-by)."""
    if not exc.param:
        return exc.message
    return exc.message.replace(f"`{exc.param}`", "--" + exc.param.replace("_", "-"))


def _model_id(settings: Settings, model: str | None) -> str | None:
    """A model id or alias -> the ledger's canonical id, as the API resolves it."""
    if model is None:
        return None
    try:
        return load(settings.pricing_path).resolve(model).id
    except ModelNotFound:
        return model  # a model no longer listed: its id as given
    except CatalogError as exc:
        fail(str(exc))


def _workspace_exists(engine: Engine, workspace: str) -> None:
    with snapshot(engine) as (cur, sql):
        cur.execute(sql("SELECT 1 FROM workspaces WHERE id = ?"), (workspace,))
        if cur.fetchone() is None:
            fail(f"no workspace {workspace!r}")


def usage(
    workspace: WsOpt,
    start: Start = None,
    end: End = None,
    tz: Tz = None,
    group_by: Annotated[str, typer.Option(
        "--group-by", help="Up to three of day, agent, model, conversation, billing_mode, "
        "key, requested_model, dialect.")] = "day",
    agent: Agent = None,
    model: Model = None,
    as_json: JsonFlag = False,
    database_url: DbFlag = None,
    pricing: PricingFlag = None,
) -> None:
    """Credits and replies in a window (default: the last 7 days), grouped."""
    settings = load_settings(database_url, pricing)
    engine = open_engine(settings.database_url)
    _workspace_exists(engine, workspace)
    try:
        query = UsageQuery(workspace, window(start, end, tz, time.time()), parse_group_by(group_by),
                           agent, _model_id(settings, model))
    except GatewayError as exc:
        fail(flagged(exc))
    report = Usage(engine, SystemClock()).query(query)
    if as_json:
        emit(report.as_json(), True, None)
        return
    table = Table(title=f"usage of {workspace}: {query.window.iso(query.window.start_ms)} → "
                        f"{query.window.iso(query.window.end_ms)} ({query.window.tz.key})")
    for name in query.group_by:
        table.add_column(name)
    for name in ("credits", "replies", "requests"):
        table.add_column(name, justify="right")
    for row in report.rows():
        table.add_row(*(str(row[n] or "(none)") for n in query.group_by),
                      f"{row['credits']:,}", f"{row['replies']:,}", f"{row['requests']:,}")
    total = report.total
    table.add_section()
    table.add_row("total", *([""] * (len(query.group_by) - 1)), f"{total.credits:,}",
                  f"{total.replies:,}", f"{total.requests:,}")
    Console().print(table)


def export(
    workspace: WsOpt,
    start: Start = None,
    end: End = None,
    tz: Tz = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
    output: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
    kind: Annotated[str | None, typer.Option(help="reply, allotment, topup or adjustment.")] = None,
    agent: Agent = None,
    model: Model = None,
    cursor: Annotated[str | None, typer.Option(help="Resume after this cursor.")] = None,
    database_url: DbFlag = None,
    pricing: PricingFlag = None,
) -> None:
    """Every ledger entry of a window (default: all), streamed in batches."""
    try:
        choice(fmt, FORMATS, "format")
        if kind is not None:
            choice(kind, KINDS, "kind")
    except InputError as exc:
        fail(cli_message(exc, format="--format"))
    settings = load_settings(database_url, pricing)
    engine = open_engine(settings.database_url)
    _workspace_exists(engine, workspace)
    try:
        span = window(start or "0", end, tz, time.time(), max_days=None)
        after = decode_cursor(cursor) if cursor else None
    except GatewayError as exc:
        fail(flagged(exc))
    ledger = LedgerExport(engine)
    query = ExportQuery(workspace, span.start_ms, span.end_ms, after=after, limit=MAX_LIMIT,
                        agent=agent, model=_model_id(settings, model), kind=kind)
    count, last = 0, cursor
    with contextlib.ExitStack() as stack:
        out: IO[bytes] = stack.enter_context(output.open("wb")) if output else sys.stdout.buffer
        if fmt == "csv":
            out.write(csv_header())
        while True:
            page = ledger.page(query)
            for rows in ledger.rows(page):
                out.write(csv_rows(rows) if fmt == "csv" else jsonl(rows))
                count += len(rows)
            last = page.next_cursor or last
            if not page.has_more or page.query.through is None:
                break
            query = replace(query, after=page.query.through)
        out.flush()
    Console(stderr=True).print(f"{count:,} entries; resume with --cursor {last or '(none)'}")


def register(app: typer.Typer, ledger_app: typer.Typer) -> None:
    """`usage` on the root, `export` in the `ledger` group."""
    app.command()(usage)
    ledger_app.command("export")(export)
