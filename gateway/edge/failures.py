"""One renderer for the failures no endpoint answered: unknown routes, wrong methods, bugs.

Used by Starlette's exception handlers and by the ASGI app's direct dispatch
(gateway/edge/asgi.py) alike, so both ways into a route answer the same:
404 / 405 in the OpenAI error shape (Anthropic's under /v1/messages), and any other exception as a logged 500
whose body says nothing of the bug.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.dialects.messages.errors import error_body
from gateway.edge.request import error_response
from gateway.errors import GatewayError, MethodNotAllowed, NotFound

log = logging.getLogger("bookbag")
MESSAGES_PREFIX = "/v1/messages"


def _render(request: Request) -> Callable[[GatewayError], Response]:
    """The Messages routes answer in Anthropic's shape, every other in OpenAI's."""
    if request.url.path.startswith(MESSAGES_PREFIX):
        return lambda error: Response(error_body(error), error.status,
                                      media_type="application/json")
    return error_response


async def failure(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException) and exc.status_code in (404, 405):
        return not_found(request, exc)
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return _render(request)(GatewayError("The gateway failed to handle this request."))


def not_found(request: Request, exc: HTTPException) -> Response:
    path = request.url.path
    render = _render(request)
    if exc.status_code == 405:
        return render(MethodNotAllowed(f"Method {request.method} is not allowed on {path}."))
    if path.startswith("/v1/"):
        return render(NotFound(f"The route {path} is not supported by this gateway."))
    return render(NotFound(f"No route {path}."))
