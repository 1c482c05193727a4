"""The ASGI app: Starlette, with a direct lane for the one route that carries the traffic.

Every request to `POST /v1/chat/completions` would otherwise pass through
Starlette's server-error middleware, its exception middleware, the router
and two exception wrappers, each adding a coroutine frame and a `send`
wrapper (about a tenth of the CPU of a relayed request; docs/performance.md).
`GatewayApp` sends that route straight to its handler, under the same
`RequestObserver` (metrics and the log line) and with the same answers: a
`GatewayError` in the OpenAI error shape (the handler's `endpoint` wrapper)
and any other exception as the same 500 body `_server_error` renders.
Every other request, and every other method on this path, goes through
Starlette as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.observability.logs import RequestObserver, record_of

ServerError = Callable[[Request, Exception], Awaitable[Response]]


class GatewayApp(Starlette):
    def __init__(self, *, direct: Route, server_error: ServerError, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._direct = direct
        self._direct_path = direct.path
        self._server_error = server_error
        self._handler: Callable[[Request], Awaitable[Response]] = direct.endpoint
        self._direct_app = RequestObserver(self._run_direct)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self._direct_path \
                and scope["method"] == "POST":
            scope["app"] = self
            await self._direct_app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def _run_direct(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self._direct  # the metrics' route label, as the router would set it
        request = Request(scope, receive, send)
        try:
            response = await self._handler(request)
            await response(scope, receive, send)
        except Exception as exc:
            record = record_of(request)
            if record is not None and record.status:  # the response had started: nothing to add
                raise
            await (await self._server_error(request, exc))(scope, receive, send)
