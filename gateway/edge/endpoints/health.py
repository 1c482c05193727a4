"""GET /healthz (liveness) and /readyz (200 while any route can serve; lists degraded parts)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.edge.request import json_response, services


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    svc = services(request)
    checks = await svc.ops.readiness()
    degraded = sorted(name for name, ok in checks.items() if not ok)
    # The built-in model needs nothing, so the gateway can always serve some route.
    return json_response({"status": "degraded" if degraded else "ok", "checks": checks,
                          "degraded": degraded, "spool_backlog": await svc.ops.spool_backlog()})
