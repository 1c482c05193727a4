"""The OpenAPI 3.1 document the gateway serves at /openapi.json, written by hand.

Every route of `endpoints/routes.py` is here with its parameters, request
body, success response and the OpenAI-shaped errors it can return
(`tests/test_openapi.py` checks that no route is missing). Shared schemas
live in `openapi_schemas.py`.
"""

from __future__ import annotations

from typing import Any

from gateway.edge.openapi_schemas import ANTHROPIC_ERRORS, ERRORS, SCHEMAS, obj, ref

JSON = "application/json"
Security = list[dict[str, list[str]]]
KEY: Security = [{"workspaceKey": []}]
READ: Security = [{"workspaceKey": []}, {"dashboardSession": []}]
ANTHROPIC_KEY: Security = [{"workspaceKey": []}, {"anthropicKey": []}]
ADMIN: Security = [{"adminToken": []}]
WS = "/admin/workspaces/{workspace_id}"
# Errors every authenticated route can return, on top of its own.
COMMON = (401, 403, 404, 405, 429, 503)


def _param(name: str, where: str, description: str, schema: dict[str, Any] | None = None,
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "description": description, "required": required,
            "schema": schema or {"type": "string"}}


def op(summary: str, tag: str, *, security: Security | None = None,
       params: tuple[dict[str, Any], ...] = (), body: str | dict[str, Any] | None = None,
       ok: str | dict[str, Any] = "Object", status: str = "200", media: str = JSON,
       errors: tuple[int, ...] = ()) -> dict[str, Any]:
    """One operation: its success response and every error status it may return."""
    out: dict[str, Any] = {"summary": summary, "tags": [tag], "security": security or []}
    if params:
        out["parameters"] = list(params)
    if body is not None:
        schema = ref(body) if isinstance(body, str) else body
        out["requestBody"] = {"required": True, "content": {JSON: {"schema": schema}}}
    success = ref(ok) if isinstance(ok, str) else ok
    out["responses"] = {status: {"description": summary, "content": {media: {"schema": success}}}}
    for code in sorted(set(errors) | (set(COMMON) if security else {404, 405})):
        out["responses"][str(code)] = {"$ref": f"#/components/responses/E{code}"}
    return out


def anthropic_op(summary: str, **kwargs: Any) -> dict[str, Any]:
    """A Messages route: its errors in Anthropic's shape (`A<status>`)."""
    out = op(summary, "inference", security=ANTHROPIC_KEY, **kwargs)
    for code, response in out["responses"].items():
        if "$ref" in response:
            out["responses"][code] = {"$ref": f"#/components/responses/A{code}"}
    return out


def _messages() -> dict[str, dict[str, Any]]:
    beta = _param("beta", "query", "Accepted (Anthropic's SDKs and Claude Code send "
                  "`?beta=true`); changes nothing.")
    version = _param("anthropic-version", "header", "Accepted; the gateway speaks 2023-06-01.")
    betas = _param("anthropic-beta", "header", "Comma-separated; each must be in the model's "
                   "`anthropic_betas` on the house's key (else 400).")
    return {
        "/v1/messages": {"post": anthropic_op(
            "Create a message (Anthropic Messages; `stream: true` answers with its SSE events)",
            body="MessagesRequest", ok="Message", errors=(400, 402, 408, 409, 413, 422, 502, 504),
            params=(beta, version, betas,
                    _param("Idempotency-Key", "header", "Replays the first success of this key "
                           "on this route."),
                    _param("X-Bookbag-Agent-Id", "header", "Agent to attribute the reply to."),
                    _param("X-Bookbag-Conversation-Id", "header", "Conversation to attribute it to."),
                    _param("X-Bookbag-Provider-Key", "header", "Bring-your-own provider key.")))},
        "/v1/messages/count_tokens": {"post": anthropic_op(
            "Count a prompt's input tokens (never charged; estimated where the upstream "
            "cannot count)", body="CountTokensRequest", ok="TokenCount",
            errors=(400, 408, 413, 502, 504), params=(beta, version, betas))},
    }


WINDOW = (
    _param("start", "query", "Window start: YYYY-MM-DD (local day), ISO 8601 date-time or epoch seconds."),
    _param("end", "query", "Window end (exclusive; a date includes that whole day)."),
    _param("tz", "query", "IANA time zone of dates and days (default UTC).", {"type": "string",
                                                                              "example": "Asia/Kolkata"}),
)
WS_ID = _param("workspace_id", "path", "Workspace id.", required=True)


def _v1() -> dict[str, dict[str, Any]]:
    chat_errors = (400, 402, 408, 409, 413, 422, 502, 504)
    return {
        "/v1/chat/completions": {"post": op(
            "Create a chat completion (OpenAI-compatible; `stream: true` answers with SSE)", "inference",
            security=KEY, body="ChatCompletionRequest", ok="ChatCompletion", errors=chat_errors,
            params=(_param("Idempotency-Key", "header", "Replays the first success of this key."),
                    _param("X-Bookbag-Agent-Id", "header", "Agent to attribute the reply to."),
                    _param("X-Bookbag-Conversation-Id", "header", "Conversation to attribute it to."),
                    _param("X-Bookbag-Provider-Key", "header", "Bring-your-own provider key."),
                    ))},
        "/v1/responses": {"post": op(
            "Create a response (OpenAI Responses; `stream: true` answers with its typed SSE "
            "events)", "inference", security=KEY, body="ResponseRequest", ok="Response",
            errors=chat_errors,
            params=(_param("Idempotency-Key", "header", "Replays the first success of this key "
                           "on this route."),
                    _param("X-Bookbag-Agent-Id", "header", "Agent to attribute the reply to."),
                    _param("X-Bookbag-Conversation-Id", "header", "Conversation to attribute it to."),
                    _param("X-Bookbag-Provider-Key", "header", "Bring-your-own provider key.")))},
        "/v1/chat/completions/preview": {"post": op(
            "What a completion would cost, without calling the model", "inference", security=KEY,
            body="ChatCompletionRequest", ok="Preview", errors=(400, 408, 413))},
        "/v1/models": {"get": op("List the catalog", "inference", security=KEY, ok="ModelList")},
        "/v1/models/{model_id}": {"get": op(
            "One model (aliases resolve)", "inference", security=KEY, ok="Model", errors=(400,),
            params=(_param("model_id", "path", "Model id or alias.", required=True),))},
        "/v1/embeddings": {"post": op(
            "Create embeddings (never charged)", "inference", security=KEY, body="EmbeddingRequest",
            ok="Object", errors=(400, 408, 413, 502, 504))},
        "/v1/balance": {"get": op("The workspace balance", "read", security=READ, ok="Balance")},
        "/v1/usage": {"get": op(
            "Reply credits in a window, grouped", "read", security=READ, ok="Usage", errors=(400,),
            params=(*WINDOW,
                    _param("group_by", "query", "Up to three of day, agent, model, conversation, "
                           "billing_mode, key, requested_model, dialect, comma-separated (default "
                           "day).", {"type": "string",
                                                                            "example": "day,agent"}),
                    _param("agent", "query", "Only this agent (an agent-bound key: its own)."),
                    _param("model", "query", "Only this model (id or alias)."),
                    _param("limit", "query", "At most this many groups, those with the most credits "
                           "(`omitted` sums the rest). Default: every group; 1,000 when grouping by "
                           "conversation.", {"type": "integer", "minimum": 1, "maximum": 100_000})))},
        "/v1/ledger": {"get": op(
            "Ledger entries, cursor-paginated, as JSON lines or CSV (streamed)", "read", security=READ,
            ok=ref("LedgerEntry"), media="application/jsonl", errors=(400,),
            params=(*WINDOW,
                    _param("cursor", "query", "X-Bookbag-Next-Cursor of the previous page."),
                    _param("limit", "query", "Entries in this page.", {"type": "integer", "minimum": 1,
                                                                       "maximum": 1_000_000,
                                                                       "default": 1000}),
                    _param("format", "query", "jsonl or csv.", {"enum": ["jsonl", "csv"]}),
                    _param("order", "query", "asc or desc.", {"enum": ["asc", "desc"]}),
                    _param("kind", "query", "Only this kind.", {"enum": ["reply", "allotment", "topup",
                                                                        "adjustment"]}),
                    _param("agent", "query", "Only this agent."),
                    _param("model", "query", "Only this model.")))},
    }


def _open() -> dict[str, dict[str, Any]]:
    html = {"type": "string"}
    return {
        "/healthz": {"get": op("Liveness", "operations", ok="Health")},
        "/readyz": {"get": op("Readiness and degraded dependencies", "operations", ok="Readiness")},
        "/metrics": {"get": op("Prometheus metrics (text format)", "operations", ok=html,
                               media="text/plain")},
        "/openapi.json": {"get": op("This document", "operations", ok="Object")},
        "/dashboard": {"get": op("The dashboard page", "dashboard", ok=html, media="text/html")},
        "/dashboard/static/{file}": {"get": op(
            "Dashboard assets (app.js, style.css)", "dashboard", ok=html, media="text/plain",
            params=(_param("file", "path", "Asset name.", required=True),))},
        "/dashboard/session": {"post": op(
            "Sign in with a workspace key (read scope): sets the HttpOnly session cookie", "dashboard",
            body="SignIn", ok="Session", errors=(400, 401, 403, 408, 413, 503)),
            "get": op("Who the session cookie signs in (signed_in false without one; never 401)",
                      "dashboard", ok="Session", errors=(503,))},
        "/dashboard/logout": {"post": {**op("Sign out: ends the session", "dashboard", status="204",
                                            errors=(503,)),
                                       "responses": {"204": {"description": "Signed out"},
                                                     "503": {"$ref": "#/components/responses/E503"}}}},
    }


def _admin() -> dict[str, dict[str, Any]]:
    key = (_param("key_id", "path", "Key id.", required=True),)
    cap = (WS_ID, _param("kind", "path", "key or agent.", {"enum": ["key", "agent"]}, required=True),
           _param("ident", "path", "The key id or the agent id.", required=True))
    hook = (_param("endpoint_id", "path", "Webhook endpoint id.", required=True),)
    byo = (WS_ID, _param("provider", "path", "Provider name (openai, anthropic...).", required=True))
    e = (400,)

    def a(summary: str, **kw: Any) -> dict[str, Any]:
        return op(summary, "admin", security=ADMIN, errors=e, **kw)

    return {
        "/admin/workspaces": {
            "get": a("List workspaces", ok="List"),
            "post": a("Create a workspace (and its first key, shown once)", status="201",
                      body="WorkspaceCreate")},
        WS: {"get": a("Show a workspace, its balance and settings", params=(WS_ID,)),
             "patch": a("Update name, suspension, rate limit, low-balance thresholds", params=(WS_ID,),
                        body="WorkspaceUpdate")},
        WS + "/plan": {"post": a("Change plan", params=(WS_ID,), body="PlanChange")},
        WS + "/suspend": {"post": a("Suspend", params=(WS_ID,))},
        WS + "/resume": {"post": a("Resume", params=(WS_ID,))},
        WS + "/keys": {"get": a("List keys (never the keys themselves)", params=(WS_ID,), ok="List"),
                       "post": a("Create a key (shown once)", status="201", params=(WS_ID,),
                                 body="KeyCreate")},
        "/admin/keys/{key_id}": {"delete": a("Revoke a key", params=key)},
        # spend controls: caps per billing period on a key or an agent
        WS + "/caps": {"get": a("List spend caps", params=(WS_ID,), ok="List")},
        WS + "/caps/{kind}/{ident}": {
            "put": a("Set or change a spend cap (credits per billing period)", params=cap,
                     body=obj({"credits": {"type": "integer", "minimum": 0}}, ["credits"])),
            "delete": a("Remove a spend cap", params=cap)},
        WS + "/topups": {"post": a("Grant a top-up (idempotent by ref)", status="201", params=(WS_ID,),
                                   body="Grant")},
        WS + "/adjustments": {"post": a("Adjust the top-up bucket (any sign)", status="201",
                                        params=(WS_ID,), body="Grant")},
        WS + "/byo": {"get": a("BYO toggle and stored key fingerprints", params=(WS_ID,)),
                      "put": a("Turn BYO on or off", params=(WS_ID,),
                               body=obj({"enabled": {"type": "boolean"}}, ["enabled"]))},
        WS + "/byo/{provider}": {
            "put": a("Store a provider key (encrypted)", params=byo,
                     body=obj({"api_key": {"type": "string"}}, ["api_key"])),
            "delete": a("Delete a stored provider key", params=byo)},
        WS + "/recharge": {"get": a("Auto-recharge settings", params=(WS_ID,)),
                           "put": a("Configure auto-recharge", params=(WS_ID,), body="Recharge"),
                           "delete": a("Turn auto-recharge off", params=(WS_ID,))},
        WS + "/webhooks": {"get": a("List webhook endpoints", params=(WS_ID,), ok="List"),
                           "post": a("Create a webhook endpoint (its secret shown once)", status="201",
                                     params=(WS_ID,), body="WebhookCreate")},
        WS + "/events": {"get": a("Recent webhook events", params=(WS_ID,), ok="List")},
        "/admin/webhooks/{endpoint_id}": {
            "get": a("Show a webhook endpoint", params=hook),
            "patch": a("Update a webhook endpoint", params=hook, body="WebhookUpdate"),
            "delete": a("Delete a webhook endpoint", params=hook)},
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Bookbag Gateway", "version": "0.1.0",
                 "description": "An OpenAI-compatible proxy that meters Bookbag credits. Errors use "
                                "the OpenAI shape `{\"error\": {message, type, param, code}}`."},
        "paths": {**_v1(), **_messages(), **_open(), **_admin()},
        "components": {
            "schemas": SCHEMAS,
            "responses": {**ERRORS, **ANTHROPIC_ERRORS},
            "securitySchemes": {
                "workspaceKey": {"type": "http", "scheme": "bearer",
                                 "description": "A workspace key `bk_...`."},
                "anthropicKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
                                 "description": "A workspace key `bk_...` (Messages routes)."},
                "adminToken": {"type": "http", "scheme": "bearer",
                               "description": "BOOKBAG_ADMIN_TOKEN (refused on /v1)."},
                "dashboardSession": {"type": "apiKey", "in": "cookie", "name": "bookbag_session",
                                     "description": "Set by POST /dashboard/session; read routes only."},
            },
        },
    }
