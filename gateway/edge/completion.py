"""One completion on any dialect's route: the body read and parsed, the call handed to the
flow, the log record filled from what the flow learnt, the outcome rendered.

Each route supplies its dialect's two parts: `parse` (the body and headers into the
shared `ChatRequest`, Bookbag's metadata taken out) and `stream` (how its events are
written: output, usage, the end marker and the in-band error). The caller was
authenticated from the headers before the body is read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.dialects.chat.parse import parse_json
from gateway.edge.render import render
from gateway.edge.request import headers_of, read_body, services
from gateway.edge.sse import StreamDialect
from gateway.flow.call import ChatCall
from gateway.flow.decide import PROVIDER_KEY_HEADER
from gateway.idempotency.service import HEADER as IDEMPOTENCY_HEADER
from gateway.observability.logs import record_of
from gateway.types import Caller, ChatRequest

Parse = Callable[[dict[str, Any], dict[str, str], Caller], ChatRequest]


async def complete(request: Request, headers: dict[str, str], caller: Caller, parse: Parse,
                   stream: Callable[[ChatRequest], StreamDialect]) -> Response:
    body = parse_json(await read_body(request))
    given = headers_of(request)
    idempotency_key = given.get(IDEMPOTENCY_HEADER)
    # The key's hash covers the body as sent: a shallow copy keeps it, since parsing
    # replaces (never edits) the top-level `metadata` it takes Bookbag's fields out of.
    sent = dict(body) if idempotency_key is not None else None
    req = parse(body, given, caller)
    call = ChatCall(req, headers["x-request-id"], given.get(PROVIDER_KEY_HEADER),
                    idempotency_key, sent)
    try:
        outcome = await services(request).inference.pipeline.chat(caller, call)
    finally:
        record = record_of(request)
        if record is not None:  # the log line is the edge's: it copies what the flow learnt
            record.model, record.entry = call.report.model, call.report.entry
    return render(outcome, headers, stream(req))
