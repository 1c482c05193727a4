"""The ASGI app: Starlette, with a direct dispatch for every route on a fixed path.

Starlette sends each request through its server-error middleware, its
exception middleware, the router (a regex match per route until one fits)
and two exception wrappers, each adding a coroutine frame and a `send`
wrapper (about a tenth of the CPU of a relayed request; docs/performance.md).
`GatewayApp` builds one table, `(method, path) -> route`, from the route
list for every route whose path has no parameters and whose handler is a
coroutine function, and runs a match straight under the same
`RequestObserver` (metrics and the log line), with the same answers: the
handler renders its own `GatewayError`s (the `endpoint` wrapper) and any
other exception goes to the one failure renderer Starlette uses too
(gateway/edge/failures.py). Parametrised paths, mounts, HEAD and methods a
path does not have (405) go through Starlette as before.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.observability.logs import RequestObserver, record_of

Failure = Callable[[Request, Exception], Awaitable[Response]]
Lanes = dict[tuple[str, str], Route]


def lanes_of(routes: list[Any]) -> Lanes:
    """The direct dispatch table: every static-path route with a coroutine handler."""
    table: Lanes = {}
    for route in routes:
        if not isinstance(route, Route) or route.param_convertors or route.methods is None:
            continue
        if not inspect.iscoroutinefunction(route.endpoint):
            continue
        for method in route.methods:
            if method != "HEAD":  # answered without a body by Starlette's GET route
                table.setdefault((method, route.path), route)
    return table


class GatewayApp(Starlette):
    def __init__(self, *, failure: Failure, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._failure = failure
        self.lanes = lanes_of(self.router.routes)
        self._direct = RequestObserver(self._run_direct)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = self.lanes.get((scope["method"], scope["path"]))
            if route is not None:
                scope["app"] = self
                # As the router would set them: the metrics' route label and the handler.
                scope["route"] = route
                scope["endpoint"] = route.endpoint
                scope["path_params"] = {}
                await self._direct(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _run_direct(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await scope["endpoint"](request)
            await response(scope, receive, send)
        except Exception as exc:
            record = record_of(request)
            if record is not None and record.status:  # the response had started: nothing to add
                raise
            await (await self._failure(request, exc))(scope, receive, send)
