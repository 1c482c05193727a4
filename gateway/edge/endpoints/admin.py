"""The operator API, `/admin/...` (Bearer BOOKBAG_ADMIN_TOKEN): workspaces, plans, keys, grants.

BYO keys, auto-recharge and webhooks are in `admin_settings.py`. Every
handler checks the admin token first; operator errors become OpenAI-shaped
400s (404 for an unknown workspace, key or endpoint), a database failure a 503
(`gateway.storage.offload`). Grants and plan changes
go through the running meter, so balances move at once on this server (and
within the sync interval on the others).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.accounts.alerts import parse_alerts
from gateway.accounts.auth import check_admin
from gateway.accounts.key_expiry import iso_ms
from gateway.accounts.keyring import KeyringError
from gateway.accounts.operator_input import InputError
from gateway.accounts.workspaces import AccountError, UnknownAccount
from gateway.cli.records import key_record, workspace_record, workspace_view
from gateway.dialects.chat.parse import parse_json
from gateway.edge.request import endpoint, json_response, read_body, services
from gateway.errors import GatewayError, InvalidRequest, NotFound
from gateway.storage.offload import is_database_error, run_db, unavailable
from gateway.types import EntryKind

AdminHandler = Callable[[Request], Awaitable[Any]]
ACTOR = "admin-api"


def admin(status: int = 200) -> Callable[[AdminHandler], Callable[[Request], Awaitable[Response]]]:
    """Check the admin token, translate operator errors, render the result as JSON."""

    def wrap(handler: AdminHandler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def run(request: Request, headers: dict[str, str]) -> Response:
            svc = services(request)
            check_admin(request.headers.get("authorization"), svc.settings.admin_token)
            try:
                result = await handler(request)
            except UnknownAccount as exc:
                raise NotFound(str(exc)) from None
            except InputError as exc:
                raise InvalidRequest(str(exc), param=exc.field) from None
            except (AccountError, KeyringError) as exc:
                raise InvalidRequest(str(exc)) from None
            except Exception as exc:
                # A service that offloads its own database calls (plan changes, say):
                # its database failing is a 503 here too, like every `run_sync`.
                if is_database_error(exc):
                    raise unavailable() from exc
                raise
            if isinstance(result, Response):
                result.headers.update(headers)
                return result
            return json_response(result, status, headers=headers)

        return endpoint(run)

    return wrap


async def body(request: Request) -> dict[str, Any]:
    return parse_json(await read_body(request))


def field(data: dict[str, Any], name: str, kind: type | tuple[type, ...], *,
          required: bool = False) -> Any:
    value = data.get(name)
    if value is None:
        if required:
            raise InvalidRequest(f"Missing required field {name!r}.", param=name)
        return None
    if (isinstance(value, bool) and kind is int) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InvalidRequest(f"Field {name!r} must be a {names}.", param=name)
    return value


def run_sync(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
    """An account operation off the loop; its database failing is a 503."""
    return run_db(functools.partial(fn, *args, **kwargs))


def ws_id(request: Request) -> str:
    value: str = request.path_params["workspace_id"]
    return value


# --- workspaces ----------------------------------------------------------------


async def describe(request: Request, workspace_id: str) -> dict[str, Any]:
    svc = services(request)
    workspace = await run_sync(svc.admin.accounts.workspace, workspace_id)
    shown: dict[str, Any] | None
    try:
        balance = await svc.admin.meter.balance(workspace_id)
        shown = {
            "plan": balance.plan, "allotment": balance.allotment,
            "allotment_remaining": balance.allotment_remaining,
            "topups_remaining": balance.topups_remaining, "balance": balance.available,
            "reserved": balance.reserved, "period_start": balance.period_start,
            "period_end": balance.period_end,
        }
    except GatewayError:
        shown = None  # the balance store is down; the rest is still useful
    recharge = await run_sync(svc.admin.recharges.status, workspace_id, workspace.anchor_date)
    byo_keys = [{"provider": k.provider, "fingerprint": k.fingerprint}
                for k in await run_sync(svc.admin.byo.keys, workspace_id)]
    return workspace_view(workspace, shown, recharge, byo_keys)


@admin()
async def list_workspaces(request: Request) -> Any:
    rows = await run_sync(services(request).admin.accounts.workspaces)
    return {"object": "list", "data": [workspace_record(ws) for ws in rows]}


@admin(201)
async def create_workspace(request: Request) -> Any:
    data = await body(request)
    svc = services(request)
    workspace = await run_sync(
        svc.admin.accounts.create_workspace, field(data, "name", str, required=True),
        field(data, "plan", str) or "free", custom_allotment=field(data, "credits", int),
        anchor_date=field(data, "anchor_date", str), workspace_id=field(data, "id", str))
    out: dict[str, Any] = {"workspace": workspace_record(workspace)}
    if data.get("create_key", True):
        key = await run_sync(svc.admin.accounts.create_key, workspace.id,
                             agent_id=field(data, "agent_id", str))
        out["key"] = {"id": key.id, "key": key.key, "agent_id": key.agent_id,
                      "scopes": list(key.scopes)}
    return out


@admin()
async def show_workspace(request: Request) -> Any:
    return await describe(request, ws_id(request))


@admin()
async def update_workspace(request: Request) -> Any:
    data = await body(request)
    svc = services(request)
    workspace_id = ws_id(request)
    rate_limit = field(data, "rate_limit", str)
    alerts = field(data, "alert_thresholds", (list, str))
    parse_alerts(alerts)  # spend controls: a bad threshold is a 400 before anything changes
    await run_sync(svc.admin.accounts.update_workspace, workspace_id, name=field(data, "name", str),
                   suspended=field(data, "suspended", bool), rate_limit=rate_limit,
                   clear_rate_limit="rate_limit" in data and rate_limit is None,
                   responses_store=field(data, "responses_store", bool))
    if "low_fractions" in data:
        await run_sync(svc.admin.thresholds.set_low_fractions, workspace_id,
                       field(data, "low_fractions", (list, str)))
    if "alert_thresholds" in data:
        await run_sync(svc.admin.thresholds.set_alerts, workspace_id, alerts)
    return await describe(request, workspace_id)


async def _suspend(request: Request, suspended: bool) -> Any:
    svc = services(request)
    workspace = await run_sync(svc.admin.accounts.update_workspace, ws_id(request), suspended=suspended)
    return {"workspace_id": workspace.id, "suspended": workspace.suspended}


@admin()
async def suspend_workspace(request: Request) -> Any:
    return await _suspend(request, True)


@admin()
async def resume_workspace(request: Request) -> Any:
    return await _suspend(request, False)


@admin()
async def change_plan(request: Request) -> Any:
    data = await body(request)
    svc = services(request)
    admin = svc.admin
    change = await admin.plans.change_live(admin.meter, ws_id(request),
                                           field(data, "plan", str, required=True),
                                           custom=field(data, "credits", int), actor=ACTOR)
    svc.admin.thresholds.forget(ws_id(request))
    return change.as_dict()


# --- keys ------------------------------------------------------------------------


@admin()
async def list_keys(request: Request) -> Any:
    rows = await run_sync(services(request).admin.accounts.keys, ws_id(request))
    return {"object": "list", "data": [key_record(k) for k in rows]}


@admin(201)
async def create_key(request: Request) -> Any:
    data = await body(request)
    scopes = field(data, "scopes", list)
    scopes = ["inference", "read"] if scopes is None else scopes
    key = await run_sync(services(request).admin.accounts.create_key, ws_id(request),
                         agent_id=field(data, "agent_id", str), scopes=tuple(scopes),
                         rate_limit=field(data, "rate_limit", str),
                         expires_at=field(data, "expires_at", (str, int, float)))
    return {"id": key.id, "key": key.key, "workspace_id": key.workspace_id,
            "agent_id": key.agent_id, "scopes": list(key.scopes),
            "expires_at": iso_ms(key.expires_ms)}


@admin()
async def revoke_key(request: Request) -> Any:
    row = await run_sync(services(request).admin.accounts.revoke_key, request.path_params["key_id"])
    return {"id": row.id, "workspace_id": row.workspace_id, "revoked_ms": row.revoked_ms}


# --- top-ups and adjustments -------------------------------------------------------


async def _grant(request: Request, kind: EntryKind) -> Any:
    data = await body(request)
    svc = services(request)
    credits = field(data, "credits", int, required=True)
    entry = await run_sync(svc.admin.accounts.topup_entry, ws_id(request), credits, kind=kind,
                           ref=field(data, "ref", str), actor=field(data, "actor", str) or ACTOR)
    applied = await svc.admin.meter.grant(entry)
    return json_response(
        {"workspace_id": entry.workspace_id, "kind": str(kind), "credits": credits,
         "ref": entry.ref, "request_id": entry.request_id, "applied": applied},
        201 if applied else 200)


@admin()
async def topup(request: Request) -> Any:
    return await _grant(request, EntryKind.TOPUP)


@admin()
async def adjust(request: Request) -> Any:
    return await _grant(request, EntryKind.ADJUSTMENT)
