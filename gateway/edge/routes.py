"""The route table: paths to handlers, no logic.

Every route authenticates inside its handler; the routes below `OPEN` are
the explicit allowlist that does not (tests check every other route
refuses a missing key).
"""

from __future__ import annotations

from starlette.routing import Mount, Route

from gateway.edge.endpoints import (
    admin,
    admin_caps,
    admin_settings,
    balance,
    chat,
    dashboard,
    embeddings,
    health,
    ledger,
    messages,
    metrics,
    models,
    openapi,
    responses,
    usage,
)

# The dashboard's sign-in takes the key in its body; its data calls use /v1 routes with the cookie.
OPEN = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/dashboard",
                  "/dashboard/static", "/dashboard/session", "/dashboard/logout"})

WS = "/admin/workspaces/{workspace_id}"
# The operator API: every handler checks BOOKBAG_ADMIN_TOKEN (docs/operators.md).
ADMIN_ROUTES = [
    Route("/admin/workspaces", admin.list_workspaces, methods=["GET"]),
    Route("/admin/workspaces", admin.create_workspace, methods=["POST"]),
    Route(WS, admin.show_workspace, methods=["GET"]),
    Route(WS, admin.update_workspace, methods=["PATCH"]),
    Route(WS + "/plan", admin.change_plan, methods=["POST"]),
    Route(WS + "/suspend", admin.suspend_workspace, methods=["POST"]),
    Route(WS + "/resume", admin.resume_workspace, methods=["POST"]),
    Route(WS + "/keys", admin.list_keys, methods=["GET"]),
    Route(WS + "/keys", admin.create_key, methods=["POST"]),
    Route("/admin/keys/{key_id}", admin.revoke_key, methods=["DELETE"]),
    Route(WS + "/caps", admin_caps.list_caps, methods=["GET"]),  # spend controls
    Route(WS + "/caps/{kind}/{ident}", admin_caps.set_cap, methods=["PUT"]),
    Route(WS + "/caps/{kind}/{ident}", admin_caps.delete_cap, methods=["DELETE"]),
    Route(WS + "/topups", admin.topup, methods=["POST"]),
    Route(WS + "/adjustments", admin.adjust, methods=["POST"]),
    Route(WS + "/byo", admin_settings.byo_status, methods=["GET"]),
    Route(WS + "/byo", admin_settings.byo_toggle, methods=["PUT"]),
    Route(WS + "/byo/{provider}", admin_settings.byo_set_key, methods=["PUT"]),
    Route(WS + "/byo/{provider}", admin_settings.byo_delete_key, methods=["DELETE"]),
    Route(WS + "/recharge", admin_settings.recharge_show, methods=["GET"]),
    Route(WS + "/recharge", admin_settings.recharge_set, methods=["PUT"]),
    Route(WS + "/recharge", admin_settings.recharge_delete, methods=["DELETE"]),
    Route(WS + "/webhooks", admin_settings.webhook_list, methods=["GET"]),
    Route(WS + "/webhooks", admin_settings.webhook_create, methods=["POST"]),
    Route(WS + "/events", admin_settings.webhook_events, methods=["GET"]),
    Route("/admin/webhooks/{endpoint_id}", admin_settings.webhook_show, methods=["GET"]),
    Route("/admin/webhooks/{endpoint_id}", admin_settings.webhook_update, methods=["PATCH"]),
    Route("/admin/webhooks/{endpoint_id}", admin_settings.webhook_delete, methods=["DELETE"]),
]

# Every route on a fixed path is also dispatched directly, without Starlette's router
# (gateway/edge/asgi.py); the others go through it.
ROUTES = [
    Route("/v1/chat/completions", chat.completions, methods=["POST"]),
    Route("/v1/chat/completions/preview", chat.preview, methods=["POST"]),
    Route("/v1/responses", responses.create, methods=["POST"]),
    Route("/v1/messages", messages.create, methods=["POST"]),
    Route("/v1/messages/count_tokens", messages.count_tokens, methods=["POST"]),
    Route("/v1/models", models.list_models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", models.get_model, methods=["GET"]),
    Route("/v1/embeddings", embeddings.create, methods=["POST"]),
    Route("/v1/balance", balance.show, methods=["GET"]),
    Route("/v1/usage", usage.show, methods=["GET"]),
    Route("/v1/ledger", ledger.export, methods=["GET"]),
    Route("/healthz", health.healthz, methods=["GET"]),
    Route("/readyz", health.readyz, methods=["GET"]),
    Route("/metrics", metrics.scrape, methods=["GET"]),
    Route("/openapi.json", openapi.show, methods=["GET"]),
    Route("/dashboard", dashboard.page, methods=["GET"]),
    Route("/dashboard/session", dashboard.sign_in, methods=["POST"]),
    Route("/dashboard/session", dashboard.session, methods=["GET"]),
    Route("/dashboard/logout", dashboard.sign_out, methods=["POST"]),
    Mount("/dashboard/static", app=dashboard.assets, name="dashboard-static"),
    *ADMIN_ROUTES,
]
