"""What every endpoint shares: the state, reading a bounded body, auth, error responses."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.auth import is_admin_token, require_scope
from gateway.dashboard.sessions import COOKIE as SESSION_COOKIE
from gateway.errors import (
    GatewayError,
    InvalidApiKey,
    InvalidRequest,
    RequestTimeout,
    RequestTooLarge,
    render,
)
from gateway.logs import record_of
from gateway.pipeline import new_request_id
from gateway.types import Caller

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("bookbag.http")
Handler = Callable[[Request, dict[str, str]], Awaitable[Response]]
LIMIT_HEADERS_KEY = "bookbag.rate_limit_headers"  # in the ASGI scope: a dict lookup, not State's getattr


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(value), status, headers=headers, media_type="application/json")


def error_response(error: GatewayError, headers: dict[str, str] | None = None) -> Response:
    return Response(render(error), error.status, headers={**(headers or {}), **error.headers},
                    media_type="application/json")


async def read_body(request: Request) -> bytes:
    """The whole body, refused past the size limit or when it does not arrive in time."""
    settings = gateway(request).settings
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise RequestTooLarge(f"The request body is larger than {limit} bytes.")
        except ValueError:
            raise InvalidRequest("Content-Length must be a number.") from None
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(settings.body_timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestTooLarge(f"The request body is larger than {limit} bytes.")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout("The request body did not arrive in time.") from None
    except ClientDisconnect:
        raise RequestTimeout("The client closed the connection before sending the body.") from None
    return b"".join(chunks)


async def authenticate(request: Request, scope: str) -> Caller:
    """The caller of a Bearer key; for `read`, without a header, a dashboard session cookie."""
    header = request.headers.get("authorization")
    gw = gateway(request)
    session = request.cookies.get(SESSION_COOKIE) if header is None and scope == "read" else None
    if session is not None:
        caller = await gw.sessions.authenticate(session)
    else:
        if is_admin_token(header, gw.settings.admin_token):
            raise InvalidApiKey("The admin token is not accepted on /v1 routes; use a workspace key.")
        caller = await gw.keys.authenticate(header)
    record = record_of(request)
    if record is not None:
        record.caller = caller  # for the request's log line
    require_scope(caller, scope)
    # The per-key rate limit: after auth, before idempotency and reserve (429 past it).
    caller, limit_headers = await gw.limiter.admit(caller)
    if limit_headers:
        request.scope[LIMIT_HEADERS_KEY] = limit_headers
    return caller


def _rate_limit_headers(request: Request) -> dict[str, str]:
    found: dict[str, str] = request.scope.get(LIMIT_HEADERS_KEY) or {}
    return found


def endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Give the handler a fresh X-Request-Id and render any GatewayError in OpenAI shape."""

    @functools.wraps(handler)
    async def run(request: Request) -> Response:
        headers = {"x-request-id": new_request_id()}
        client_id = request.headers.get("x-request-id")
        if client_id and len(client_id) <= 200 and client_id.isprintable():
            headers["x-client-request-id"] = client_id
        try:
            response = await handler(request, headers)
        except GatewayError as exc:
            return error_response(exc, {**headers, **_rate_limit_headers(request)})
        limit_headers = _rate_limit_headers(request)
        if limit_headers:
            response.headers.update(limit_headers)
        return response

    return run
