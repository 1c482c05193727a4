"""GET /openapi.json: the gateway's OpenAPI document, an open route."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.endpoints.http import json_response
from gateway.openapi import document


async def show(request: Request) -> Response:
    return json_response(document())
