"""One renderer for the failures no endpoint answered: unknown routes, wrong methods, bugs.

Used by Starlette's exception handlers and by the ASGI app's direct dispatch
(gateway/edge/asgi.py) alike, so both ways into a route answer the same:
404 / 405 in the OpenAI error shape, and any other exception as a logged 500
whose body says nothing of the bug.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.edge.request import error_response
from gateway.errors import GatewayError, MethodNotAllowed, NotFound

log = logging.getLogger("bookbag")


async def failure(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException) and exc.status_code in (404, 405):
        return not_found(request, exc)
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return error_response(GatewayError("The gateway failed to handle this request."))


def not_found(request: Request, exc: HTTPException) -> Response:
    path = request.url.path
    if exc.status_code == 405:
        return error_response(MethodNotAllowed(f"Method {request.method} is not allowed on {path}."))
    if path.startswith("/v1/"):
        return error_response(NotFound(f"The route {path} is not supported by this gateway."))
    return error_response(NotFound(f"No route {path}."))
