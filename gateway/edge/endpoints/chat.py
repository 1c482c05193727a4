"""POST /v1/chat/completions and its preview: the wire in, the flow, the outcome out."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.dialects.chat.parse import chat_request, parse_json
from gateway.dialects.chat.stream import CHAT_STREAM
from gateway.edge.render import render
from gateway.edge.request import (
    authenticate,
    endpoint,
    headers_of,
    json_response,
    read_body,
    resolve_key,
    services,
)
from gateway.flow.admission import dry_run
from gateway.flow.call import ChatCall
from gateway.flow.decide import PROVIDER_KEY_HEADER
from gateway.idempotency.service import HEADER as IDEMPOTENCY_HEADER
from gateway.observability.logs import record_of


@endpoint
async def completions(request: Request, headers: dict[str, str]) -> Response:
    caller = await authenticate(request, "inference")  # from the headers, before the body
    raw = await read_body(request)
    body = parse_json(raw)
    given = headers_of(request)
    idempotency_key = given.get(IDEMPOTENCY_HEADER)
    # The key's hash covers the body as sent: a shallow copy keeps it, since parsing
    # replaces (never edits) the top-level `metadata` it takes Bookbag's fields out of.
    sent = dict(body) if idempotency_key is not None else None
    req = chat_request(body, given, caller)
    call = ChatCall(req, headers["x-request-id"], given.get(PROVIDER_KEY_HEADER),
                    idempotency_key, sent)
    try:
        outcome = await services(request).inference.pipeline.chat(caller, call)
    finally:
        record = record_of(request)
        if record is not None:  # the log line is the edge's: it copies what the flow learnt
            record.model, record.entry = call.report.model, call.report.entry
    return render(outcome, headers, CHAT_STREAM)


@endpoint
async def preview(request: Request, headers: dict[str, str]) -> Response:
    # From the headers, before the body; counts nothing (the dry-run reports verdicts instead).
    caller = await resolve_key(request, "inference")
    raw = await read_body(request)
    given = headers_of(request)
    req = chat_request(parse_json(raw), given, caller)
    svc = services(request)
    estimate = await svc.inference.pipeline.preview(caller, req, given.get(PROVIDER_KEY_HEADER))
    return json_response(await dry_run(svc.inference.pipeline, caller, estimate), headers=headers)
