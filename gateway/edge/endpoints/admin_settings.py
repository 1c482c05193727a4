"""The operator API for a workspace's settings: BYO keys and toggle, auto-recharge, webhooks.

Stored provider keys and webhook secrets are never returned (a webhook
secret once, when its endpoint is created); listings show fingerprints.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from gateway.edge.endpoints.admin import ACTOR, admin, body, field, run_sync, ws_id
from gateway.edge.request import services

# --- BYO keys ----------------------------------------------------------------------


@admin()
async def byo_status(request: Request) -> Any:
    return await run_sync(services(request).admin.byo.status, ws_id(request))


@admin()
async def byo_toggle(request: Request) -> Any:
    data = await body(request)
    svc = services(request)
    await run_sync(svc.admin.byo.set_enabled, ws_id(request), field(data, "enabled", bool, required=True))
    return await run_sync(svc.admin.byo.status, ws_id(request))


@admin()
async def byo_set_key(request: Request) -> Any:
    data = await body(request)
    stored = await run_sync(services(request).admin.byo.set_key, ws_id(request),
                            request.path_params["provider"],
                            field(data, "api_key", str, required=True), actor=ACTOR)
    return {"workspace_id": ws_id(request), "provider": stored.provider,
            "fingerprint": stored.fingerprint, "updated_ms": stored.updated_ms}


@admin()
async def byo_delete_key(request: Request) -> Any:
    deleted = await run_sync(services(request).admin.byo.delete_key, ws_id(request),
                             request.path_params["provider"])
    return {"workspace_id": ws_id(request), "provider": request.path_params["provider"],
            "deleted": deleted}


# --- auto-recharge -------------------------------------------------------------------


async def _recharge_status(request: Request) -> Any:
    svc = services(request)
    workspace = await run_sync(svc.admin.accounts.workspace, ws_id(request))
    return await run_sync(svc.admin.recharges.status, workspace.id, workspace.anchor_date)


@admin()
async def recharge_show(request: Request) -> Any:
    return await _recharge_status(request)


@admin()
async def recharge_set(request: Request) -> Any:
    data = await body(request)
    svc = services(request)
    enabled = field(data, "enabled", bool)
    await run_sync(svc.admin.recharges.configure, ws_id(request),
                   threshold=field(data, "threshold", int, required=True),
                   amount=field(data, "amount", int, required=True),
                   monthly_cap=field(data, "monthly_cap", int, required=True),
                   enabled=True if enabled is None else enabled)
    svc.admin.thresholds.forget(ws_id(request))
    return await _recharge_status(request)


@admin()
async def recharge_delete(request: Request) -> Any:
    svc = services(request)
    await run_sync(svc.admin.accounts.workspace, ws_id(request))
    deleted = await run_sync(svc.admin.recharges.disable, ws_id(request))
    svc.admin.thresholds.forget(ws_id(request))
    return {"workspace_id": ws_id(request), "deleted": deleted}


# --- webhooks --------------------------------------------------------------------------


@admin()
async def webhook_list(request: Request) -> Any:
    svc = services(request)
    await run_sync(svc.admin.accounts.workspace, ws_id(request))
    return {"object": "list", "data": await run_sync(svc.admin.webhooks.endpoints, ws_id(request))}


@admin(201)
async def webhook_create(request: Request) -> Any:
    data = await body(request)
    svc = services(request)
    created = await run_sync(svc.admin.webhooks.create, ws_id(request),
                             field(data, "url", str, required=True), field(data, "events", list))
    svc.admin.thresholds.forget(ws_id(request))
    return {"id": created.id, "workspace_id": created.workspace_id, "url": created.url,
            "events": created.events.split(","), "secret": created.secret}


@admin()
async def webhook_show(request: Request) -> Any:
    return await run_sync(services(request).admin.webhooks.endpoint, request.path_params["endpoint_id"])


@admin()
async def webhook_update(request: Request) -> Any:
    data = await body(request)
    svc = services(request)
    out: dict[str, Any] = await run_sync(
        svc.admin.webhooks.update, request.path_params["endpoint_id"], url=field(data, "url", str),
        events=field(data, "events", list), enabled=field(data, "enabled", bool))
    svc.admin.thresholds.forget(out["workspace_id"])
    return out


@admin()
async def webhook_delete(request: Request) -> Any:
    svc = services(request)
    found = await run_sync(svc.admin.webhooks.endpoint, request.path_params["endpoint_id"])
    deleted = await run_sync(svc.admin.webhooks.delete, request.path_params["endpoint_id"])
    svc.admin.thresholds.forget(found["workspace_id"])
    return {"id": request.path_params["endpoint_id"], "deleted": deleted}


@admin()
async def webhook_events(request: Request) -> Any:
    svc = services(request)
    await run_sync(svc.admin.accounts.workspace, ws_id(request))
    return {"object": "list", "data": await run_sync(svc.admin.webhooks.events, ws_id(request))}
