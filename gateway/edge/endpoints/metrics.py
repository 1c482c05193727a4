"""GET /metrics: the gateway's Prometheus metrics (text format), an open route."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.edge.request import services
from gateway.observability.metrics import CONTENT_TYPE


async def scrape(request: Request) -> Response:
    body = await services(request).ops.metrics.render()
    return Response(body, 200, headers={"cache-control": "no-store"}, media_type=CONTENT_TYPE)
