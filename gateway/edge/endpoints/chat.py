"""POST /v1/chat/completions and its preview: the wire in, the flow, the outcome out."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.dialects.chat.parse import chat_request, parse_json
from gateway.dialects.chat.stream import CHAT_STREAM
from gateway.edge.completion import complete
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
from gateway.flow.decide import PROVIDER_KEY_HEADER


@endpoint
async def completions(request: Request, headers: dict[str, str]) -> Response:
    caller = await authenticate(request, "inference")  # from the headers, before the body
    return await complete(request, headers, caller, chat_request, lambda _: CHAT_STREAM)


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
