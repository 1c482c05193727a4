"""GET /openapi.json: the gateway's OpenAPI document, an open route."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.edge.openapi import document
from gateway.edge.request import json_response


async def show(request: Request) -> Response:
    return json_response(document())
