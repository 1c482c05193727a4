"""The operator API for spend caps: /admin/workspaces/{id}/caps[/{kind}/{id}]."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from gateway.edge.endpoints.admin import admin, body, field, run_sync, ws_id
from gateway.edge.request import services


@admin()
async def list_caps(request: Request) -> Any:
    rows = await run_sync(services(request).admin.accounts.caps, ws_id(request))
    return {"object": "list", "data": rows}


@admin()
async def set_cap(request: Request) -> Any:
    data = await body(request)
    credits = field(data, "credits", int, required=True)
    kind, ident = request.path_params["kind"], request.path_params["ident"]
    await run_sync(services(request).admin.accounts.set_cap, ws_id(request), kind, ident, credits)
    return {"kind": kind, "id": ident, "credits": credits}


@admin()
async def delete_cap(request: Request) -> Any:
    kind, ident = request.path_params["kind"], request.path_params["ident"]
    await run_sync(services(request).admin.accounts.set_cap, ws_id(request), kind, ident, None)
    return {"kind": kind, "id": ident, "deleted": True}
