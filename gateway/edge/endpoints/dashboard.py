"""/dashboard: the page, its static assets, and signing in and out (an HttpOnly session cookie).

The page is static HTML, CSS and JS (no build step) that reads the same
JSON API as any client; after sign-in its calls carry the session cookie
instead of a key. Signing in posts the key in the body (never a URL); the
response sets `bookbag_session` (HttpOnly, SameSite=Strict, Secure over
HTTPS) and the key is dropped.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from gateway.accounts.auth import require_scope
from gateway.accounts.workspaces import AccountError
from gateway.dashboard.sessions import COOKIE
from gateway.edge.request import endpoint, json_response, read_body, services
from gateway.errors import Forbidden, InvalidApiKey, InvalidRequest

STATIC = Path(__file__).resolve().parents[2] / "dashboard" / "static"
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
assets = StaticFiles(directory=STATIC)


async def page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers=SECURITY_HEADERS, media_type="text/html")


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("content-type", "") or \
        "application/json" in request.headers.get("accept", "")


def _key_from(request: Request, raw: bytes) -> str:
    if "application/json" in request.headers.get("content-type", ""):
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidRequest("The body is not valid JSON.") from None
        key = body.get("key") if isinstance(body, dict) else None
    else:
        key = next(iter(parse_qs(raw.decode("utf-8", "replace")).get("key", [])), None)
    if not isinstance(key, str) or not key.strip():
        raise InvalidRequest("Send the workspace key as `key`.", param="key")
    return key.strip()


def same_origin(request: Request) -> None:
    """Refuse a browser's cross-site form post (login CSRF): a present `Origin` must be this
    host, and `Sec-Fetch-Site` must not say cross-site. Clients that are not browsers send
    neither and are not at risk."""
    origin = request.headers.get("origin")
    host = request.headers.get("x-forwarded-host") or request.headers.get("host") or ""
    cross = request.headers.get("sec-fetch-site") == "cross-site"
    if origin is not None:
        parts = urlsplit(origin)
        cross = cross or parts.scheme not in ("http", "https") or \
            parts.netloc.lower() != host.lower()
    if cross:
        raise Forbidden("Sign in from the dashboard's own page: this form was posted from "
                        "another site.", code="cross_origin")


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


@endpoint
async def sign_in(request: Request, headers: dict[str, str]) -> Response:
    same_origin(request)
    raw = await read_body(request)
    svc = services(request)
    caller = await svc.inference.keys.authenticate(f"Bearer {_key_from(request, raw)}")
    require_scope(caller, "read")
    token = await svc.sessions.create(caller)
    response: Response
    if _wants_json(request):
        response = json_response({"object": "dashboard.session", "signed_in": True,
                                  "workspace_id": caller.workspace_id,
                                  "workspace_name": await _name(request, caller.workspace_id),
                                  "expires_in": int(svc.sessions.ttl)}, headers=headers)
    else:
        response = RedirectResponse("/dashboard", status_code=303, headers=headers)
    response.set_cookie(COOKIE, token, max_age=int(svc.sessions.ttl), path="/", httponly=True,
                        samesite="strict", secure=_secure(request))
    response.headers["cache-control"] = "no-store"
    return response


async def _name(request: Request, workspace_id: str) -> str:
    try:
        workspace = await asyncio.to_thread(services(request).admin.accounts.workspace, workspace_id)
    except AccountError:
        return workspace_id
    return workspace.name


@endpoint
async def session(request: Request, headers: dict[str, str]) -> Response:
    """Who the page is signed in as, 200 either way: the page asks this first, so a visitor
    who has not signed in causes no 401s (nor console errors) before the form."""
    token = request.cookies.get(COOKIE)
    caller = None
    if token:
        try:
            caller = await services(request).sessions.authenticate(token)
        except (InvalidApiKey, Forbidden):
            caller = None
    if caller is None:
        return json_response({"object": "dashboard.session", "signed_in": False}, headers=headers)
    return json_response({"object": "dashboard.session", "signed_in": True,
                          "workspace_id": caller.workspace_id,
                          "workspace_name": await _name(request, caller.workspace_id)},
                         headers=headers)


@endpoint
async def sign_out(request: Request, headers: dict[str, str]) -> Response:
    same_origin(request)
    token = request.cookies.get(COOKIE)
    if token:
        await services(request).sessions.end(token)
    response = Response(status_code=204, headers=headers)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(request))
    return response
