"""POST /v1/embeddings: passed to the provider, never charged."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.dialects.chat.parse import parse_json
from gateway.edge.request import authenticate, endpoint, headers_of, read_body, services
from gateway.flow.decide import PROVIDER_KEY_HEADER


@endpoint
async def create(request: Request, headers: dict[str, str]) -> Response:
    caller = await authenticate(request, "inference")  # from the headers, before the body
    raw = await read_body(request)
    provider_key = headers_of(request).get(PROVIDER_KEY_HEADER)
    body = await services(request).inference.pipeline.embeddings(caller, parse_json(raw), provider_key)
    return Response(body, 200, headers=headers, media_type="application/json")
