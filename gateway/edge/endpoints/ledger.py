"""GET /v1/ledger: entries in a window, cursor-paginated, streamed as JSON lines or CSV.

The response carries `X-Bookbag-Next-Cursor` (pass it back as `cursor` for
the next page; it is there on the last page too, to poll for entries added
later) and `X-Bookbag-Has-More`. Rows stream in batches, so `limit` may be
as large as a whole export.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.accounts.operator_input import InputError, choice
from gateway.edge.endpoints.usage import agent_filter, model_filter
from gateway.edge.request import authenticate, endpoint, services
from gateway.errors import InvalidRequest
from gateway.ledger.export import (
    FORMATS,
    KINDS,
    MAX_LIMIT,
    ExportQuery,
    LedgerExport,
    Page,
    csv_header,
    csv_rows,
    decode_cursor,
    jsonl,
)
from gateway.ledger.window import window
from gateway.storage.offload import run_db

DEFAULT_LIMIT = 1000
EPOCH_START = "0"


def _choice(value: str | None, allowed: tuple[str, ...], param: str) -> str | None:
    """The operator's shared check (gateway/accounts/operator_input.py), answered as a 400."""
    if value is None:
        return None
    try:
        return choice(value, allowed, param)
    except InputError as exc:
        raise InvalidRequest(str(exc), param=param) from None


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise InvalidRequest(f"`limit` must be between 1 and {MAX_LIMIT}.", param="limit")
    return value


async def stream(export: LedgerExport, page: Page, fmt: str) -> AsyncIterator[bytes]:
    """The page's rows as bytes, one database batch at a time."""
    if fmt == "csv":
        yield csv_header()
    rows = export.rows(page)
    while True:
        batch = await run_db(next, rows, None)
        if batch is None:
            return
        yield csv_rows(batch) if fmt == "csv" else jsonl(batch)


@endpoint
async def export(request: Request, headers: dict[str, str]) -> Response:
    caller = await authenticate(request, "read")
    svc = services(request)
    params = request.query_params
    fmt = _choice(params.get("format", "jsonl"), tuple(FORMATS), "format") or "jsonl"
    span = window(params.get("start") or EPOCH_START, params.get("end"), params.get("tz"),
                  svc.reads.clock.now(), max_days=None)
    cursor = params.get("cursor")
    query = ExportQuery(
        workspace_id=caller.workspace_id, start_ms=span.start_ms, end_ms=span.end_ms,
        after=decode_cursor(cursor) if cursor else None, limit=_limit(params.get("limit")),
        descending=_choice(params.get("order", "asc"), ("asc", "desc"), "order") == "desc",
        agent=agent_filter(caller, params.get("agent")),
        model=model_filter(request, params.get("model")),
        kind=_choice(params.get("kind"), KINDS, "kind"),
    )
    page = await run_db(svc.reads.export.page, query)
    headers["x-bookbag-has-more"] = "true" if page.has_more else "false"
    if page.next_cursor:
        headers["x-bookbag-next-cursor"] = page.next_cursor
    headers["cache-control"] = "no-store"
    return StreamingResponse(stream(svc.reads.export, page, fmt), headers=headers, media_type=FORMATS[fmt])
