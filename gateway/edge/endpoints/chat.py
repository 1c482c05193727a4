"""POST /v1/chat/completions and its preview."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.dialects.chat.parse import chat_request, parse_json
from gateway.edge.request import (
    authenticate,
    endpoint,
    gateway,
    headers_of,
    json_response,
    read_body,
    resolve_key,
)
from gateway.flow.admission import dry_run
from gateway.idempotency.service import key_of
from gateway.observability.logs import record_of


@endpoint
async def completions(request: Request, headers: dict[str, str]) -> Response:
    caller = await authenticate(request, "inference")  # from the headers, before the body
    raw = await read_body(request)
    body = parse_json(raw)
    given = headers_of(request)
    idempotency_key = key_of(given, body)  # hashed before Bookbag's metadata leaves it
    req = chat_request(body, given, caller)
    return await gateway(request).pipeline.chat(caller, req, given, headers,
                                                idempotency_key, record=record_of(request))


@endpoint
async def preview(request: Request, headers: dict[str, str]) -> Response:
    # From the headers, before the body; counts nothing (the dry-run reports verdicts instead).
    caller = await resolve_key(request, "inference")
    raw = await read_body(request)
    given = headers_of(request)
    req = chat_request(parse_json(raw), given, caller)
    gw = gateway(request)
    estimate = await gw.pipeline.preview(caller, req, given)
    return json_response(await dry_run(gw, caller, estimate), headers=headers)
