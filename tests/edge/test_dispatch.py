"""One way into every route: the direct dispatch table and Starlette answer alike."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.edge.asgi import GatewayApp, lanes_of
from gateway.edge.failures import failure
from gateway.edge.routes import ROUTES
from gateway.observability.logs import RequestObserver, RequestRecord


def test_every_static_route_is_in_the_table_and_no_parametrised_one() -> None:
    lanes = lanes_of(ROUTES)
    assert ("POST", "/v1/chat/completions") in lanes
    assert ("POST", "/v1/embeddings") in lanes
    assert ("GET", "/v1/balance") in lanes
    assert ("POST", "/admin/workspaces") in lanes
    assert all("{" not in path for _, path in lanes)
    assert all(method != "HEAD" for method, _ in lanes)
    static = {(m, r.path) for r in ROUTES if isinstance(r, Route) and not r.param_convertors
              for m in (r.methods or ()) if m != "HEAD"}
    assert set(lanes) == static


async def _ok(request: Request) -> Response:
    return JSONResponse({"route": request.scope["route"].path,
                         "params": request.path_params})


async def _bug(request: Request) -> Response:
    raise RuntimeError("a bug")


async def test_direct_and_routed_requests_are_observed_and_fail_the_same() -> None:
    seen: list[RequestRecord] = []
    app = GatewayApp(failure=failure, routes=[
        Route("/fixed", _ok, methods=["POST"]),
        Route("/bug", _bug, methods=["POST"]),
        Route("/item/{name}", _ok, methods=["GET"]),
        Route("/item/{name}/bug", _bug, methods=["GET"]),
    ], middleware=[Middleware(RequestObserver)],
        exception_handlers={404: failure, 405: failure, Exception: failure})
    app.state.observe_request = seen.append
    assert set(app.lanes) == {("POST", "/fixed"), ("POST", "/bug")}
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        direct = await client.post("/fixed")
        routed = await client.get("/item/x")
        wrong_method = await client.get("/fixed")
        missing = await client.get("/v1/nothing")
        bugs: list[Any] = [await client.post("/bug"), await client.get("/item/x/bug")]
    assert direct.json() == {"route": "/fixed", "params": {}}
    assert routed.json() == {"route": "/item/{name}", "params": {"name": "x"}}
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["message"] == "Method GET is not allowed on /fixed."
    assert missing.status_code == 404
    for bug in bugs:
        assert bug.status_code == 500
        assert bug.json()["error"]["code"] == "internal_error"
        assert "a bug" not in bug.text
    assert [(r.route, r.status) for r in seen] == [
        ("/fixed", 200), ("/item/{name}", 200), ("/fixed", 405), ("unmatched", 404),
        ("/bug", 500), ("/item/{name}/bug", 500)]
