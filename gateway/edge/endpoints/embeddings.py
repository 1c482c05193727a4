"""POST /v1/embeddings: passed to the provider, never charged."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.dialects.chat.parse import parse_json
from gateway.edge.request import authenticate, endpoint, gateway, read_body


@endpoint
async def create(request: Request, headers: dict[str, str]) -> Response:
    caller = await authenticate(request, "inference")  # from the headers, before the body
    raw = await read_body(request)
    body = await gateway(request).pipeline.embeddings(caller, parse_json(raw), request.headers)
    return Response(body, 200, headers=headers, media_type="application/json")
