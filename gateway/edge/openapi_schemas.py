"""Schemas and error responses shared by the OpenAPI document (`openapi.py`)."""

from __future__ import annotations

from typing import Any

INT = {"type": "integer"}
STR = {"type": "string"}
NSTR = {"type": ["string", "null"]}
NINT = {"type": ["integer", "null"]}
BOOL = {"type": "boolean"}
DATE = {"type": "string", "format": "date"}


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(props: dict[str, Any], required: list[str] | None = None, *, extra: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": extra}
    if required:
        out["required"] = required
    return out


BUDGET = {"type": "integer", "minimum": 1,
          "description": "At most the model's `max_output_tokens` (GET /v1/models) on the house's "
                         "key, else 400 unsupported_parameter; when neither budget is set, that "
                         "cap is sent."}
BILLED_TOOLS = ("Tools of type function or custom; a hosted tool type only where the model's "
                "`hosted_tools` list it (else 400 unsupported_parameter).")

HOOK_URL = {"type": "string", "description": "An http(s) URL at a public address: a host that is "
            "or resolves to a private, loopback, link-local, unspecified or multicast address is "
            "refused (400) unless the operator sets BOOKBAG_WEBHOOK_ALLOW_PRIVATE."}

SCHEMAS: dict[str, Any] = {
    "Error": obj({"error": obj({"message": STR, "type": STR, "param": NSTR, "code": NSTR},
                               ["message", "type", "param", "code"])}, ["error"]),
    "AnthropicError": obj({"type": {"const": "error"}, "error": obj(
        {"type": {"enum": ["invalid_request_error", "authentication_error", "permission_error",
                           "not_found_error", "rate_limit_error", "api_error",
                           "overloaded_error", "billing_error"]}, "message": STR},
        ["type", "message"])}, ["type", "error"]),
    "MessagesRequest": obj(
        {"model": STR, "messages": {"type": "array", "items": {"type": "object"}, "minItems": 1},
         "max_tokens": BUDGET, "stream": BOOL, "system": {"type": ["string", "array"]},
         "tools": {"type": "array", "items": {"type": "object"},
                   "description": "Client tools; a server tool type only where the model's "
                                  "`hosted_tools` list it (else 400)."},
         "thinking": {"type": "object", "description": "budget_tokens up to the model's "
                      "`max_thinking_tokens`."},
         "metadata": obj({"agent_id": STR, "conversation_id": STR}, extra=True)},
        ["model", "messages", "max_tokens"], extra=True),
    "CountTokensRequest": obj(
        {"model": STR, "messages": {"type": "array", "items": {"type": "object"}, "minItems": 1},
         "system": {"type": ["string", "array"]}, "tools": {"type": "array"}},
        ["model", "messages"], extra=True),
    "Message": {"description": "The Anthropic Message object (with `stream`: "
                               "text/event-stream of its typed events).", "type": "object"},
    "TokenCount": obj({"input_tokens": INT, "estimated": BOOL}, ["input_tokens"]),
    "Object": {"type": "object"},
    "List": obj({"object": {"const": "list"}, "data": {"type": "array", "items": {"type": "object"}}},
                ["object", "data"]),
    "ChatCompletionRequest": obj(
        {"model": STR, "messages": {"type": "array", "items": {"type": "object"}, "minItems": 1},
         "stream": BOOL, "n": {"type": "integer", "minimum": 1},
         "stream_options": obj({"include_usage": BOOL}, extra=True),
         "tools": {"type": "array", "items": {"type": "object"}, "description": BILLED_TOOLS},
         "max_tokens": BUDGET, "max_completion_tokens": BUDGET,
         "service_tier": {**STR, "description": "auto or default; other tiers only where the "
                          "model's `service_tiers` list them (else 400 unsupported_parameter)."},
         "web_search_options": {"type": "object", "description": "Only where the model's "
                                "`hosted_tools` list web_search (else 400 unsupported_parameter)."},
         "metadata": obj({"agent_id": STR, "conversation_id": STR}, extra=True)},
        ["model", "messages"], extra=True),  # every OpenAI parameter passes through
    "ResponseRequest": obj(
        {"model": STR, "input": {"type": ["string", "array"], "items": {"type": "object"}},
         "instructions": STR, "stream": BOOL,
         "tools": {"type": "array", "items": {"type": "object"}, "description": BILLED_TOOLS},
         "max_output_tokens": {**BUDGET, "minimum": 16},
         "store": {**BOOL, "description": "Forced false on the house's key unless the "
                   "workspace opted in (`responses_store`) or the operator sets "
                   "BOOKBAG_RESPONSES_STORE=1."},
         "previous_response_id": {**STR, "description": "Only an id this gateway returned to "
                                  "the same workspace (else 400 previous_response_not_found); "
                                  "relayed routes only."},
         "background": {"const": False, "description": "`true` is refused (400)."},
         "metadata": obj({"agent_id": STR, "conversation_id": STR}, extra=True)},
        ["model"], extra=True),  # relayed: OpenAI judges the rest; translated: 400 if unknown
    "Response": {"description": "The OpenAI Response object (with `stream`: text/event-stream "
                                "of its typed events, `response.completed` carrying "
                                "`usage.credits`).", "type": "object"},
    "ChatCompletion": {"description": "The OpenAI chat.completion object (with `stream`: "
                                      "text/event-stream of chat.completion.chunk).",
                       "type": "object"},
    "Preview": obj({"object": {"const": "chat.completion.preview"}, "model": STR, "billing_mode": STR,
                    "credits_per_reply": INT, "replies": INT, "credits_if_sent": INT,
                    "balance": NINT, "would_be_refused": BOOL,
                    # spend controls: the admission dry-run (docs/billing.md)
                    "verdicts": {"type": "array", "items": {"type": "object"}},
                    "refusal": {"type": ["object", "null"]},
                    # an entry with fallbacks: the chain a request would try (docs/billing.md)
                    "fallbacks": obj({"chain": {"type": "array", "items": STR},
                                      "worst_case_credits": INT,
                                      "skipped": {"type": "array", "items": obj(
                                          {"model": STR, "reason": STR})}},
                                     ["chain", "worst_case_credits", "skipped"])},
                   ["model", "billing_mode", "credits_per_reply", "credits_if_sent", "balance",
                    "would_be_refused"]),
    "Model": obj({"id": STR, "object": {"const": "model"}, "created": INT, "owned_by": STR,
                  "kind": {"enum": ["chat", "embedding"]}, "credits_per_reply": INT, "metered": BOOL,
                  "byo": BOOL, "aliases": {"type": "array", "items": STR},
                  "max_output_tokens": {**NINT, "description": "Cap on max_tokens / "
                                        "max_completion_tokens on the house's key; sent when the "
                                        "request sets neither. null: no cap."},
                  "service_tiers": {"type": "array", "items": STR,
                                    "description": "The service_tier values allowed."},
                  "hosted_tools": {"type": "array", "items": STR,
                                   "description": "Hosted tool types allowed beyond function "
                                   "and custom (web_search also allows web_search_options)."}},
                 ["id", "object", "credits_per_reply", "metered", "aliases"], extra=True),
    "ModelList": obj({"object": {"const": "list"}, "data": {"type": "array", "items": ref("Model")}},
                     ["object", "data"]),
    "EmbeddingRequest": obj({"model": STR, "input": {}}, ["model", "input"], extra=True),
    "Balance": obj({"object": {"const": "balance"}, "workspace_id": STR, "plan": STR, "allotment": INT,
                    "allotment_remaining": INT, "topups_remaining": INT, "balance": INT,
                    "reserved": INT, "period_start": DATE, "period_end": DATE,
                    "credits_used_30d": INT,
                    "agent_id": {**STR, "description": "Only for a key bound to an agent: "
                                 "credits_used_30d is then that agent's."}},
                   ["allotment", "allotment_remaining", "topups_remaining", "balance", "reserved",
                    "period_start", "period_end", "plan", "credits_used_30d"], extra=True),
    "UsageRow": obj({"day": DATE, "agent": NSTR, "model": NSTR, "conversation": NSTR,
                     "billing_mode": NSTR, "key": NSTR, "requested_model": NSTR,
                     "dialect": {"enum": ["chat", "responses", "messages"]},
                     "credits": INT, "replies": INT, "requests": INT},
                    ["credits", "replies", "requests"]),
    "Usage": obj({"object": {"const": "usage"}, "workspace_id": STR,
                  "start": {"type": "string", "format": "date-time"},
                  "end": {"type": "string", "format": "date-time"}, "tz": STR,
                  "group_by": {"type": "array", "items": STR}, "agent": NSTR, "model": NSTR,
                  "limit": {"type": ["integer", "null"]},
                  "data": {"type": "array", "items": ref("UsageRow")},
                  "total": obj({"credits": INT, "replies": INT, "requests": INT}),
                  "omitted": obj({"groups": INT, "credits": INT, "replies": INT, "requests": INT})},
                 ["object", "start", "end", "tz", "group_by", "data", "total", "omitted"]),
    "LedgerEntry": obj({"request_id": STR, "created_at": {"type": "string", "format": "date-time"},
                        "created_ms": INT, "kind": {"enum": ["reply", "allotment", "topup",
                                                             "adjustment"]},
                        "billing_mode": NSTR, "credits": INT, "allotment_delta": INT,
                        "topup_delta": INT, "period_start": NSTR, "key_id": NSTR, "agent_id": NSTR,
                        "conversation_id": NSTR, "model": NSTR, "provider": NSTR, "replies": INT,
                        "prompt_tokens": NINT, "completion_tokens": NINT, "latency_ms": NINT,
                        "reason": NSTR, "ref": NSTR, "actor": NSTR,
                        "api": {"enum": ["chat", "responses", "messages", None]},
                        "requested_model": NSTR},
                       ["request_id", "created_at", "kind", "credits"]),
    "Health": obj({"status": STR}, ["status"]),
    "Readiness": obj({"status": {"enum": ["ok", "degraded"]}, "checks": {"type": "object"},
                      "degraded": {"type": "array", "items": STR}}, ["status", "checks", "degraded"]),
    "SignIn": obj({"key": STR}, ["key"]),
    "Session": obj({"object": {"const": "dashboard.session"}, "signed_in": BOOL, "workspace_id": STR,
                    "workspace_name": STR, "expires_in": INT}, ["object", "signed_in"]),
    "WorkspaceCreate": obj({"name": STR, "plan": STR, "credits": INT, "anchor_date": DATE, "id": STR,
                            "create_key": BOOL, "agent_id": STR}, ["name"]),
    "WorkspaceUpdate": obj({"name": STR, "suspended": BOOL, "rate_limit": NSTR,
                            "low_fractions": {"type": ["array", "string"]},
                            "alert_thresholds": {"type": ["array", "string", "null"]},
                            "responses_store": BOOL}),
    "PlanChange": obj({"plan": STR, "credits": INT}, ["plan"]),
    "KeyCreate": obj({"agent_id": STR, "scopes": {"type": "array",
                                                  "items": {"enum": ["inference", "read"]}},
                      "rate_limit": STR,
                      "expires_at": {"type": ["string", "integer"],
                                     "description": "ISO 8601 instant or Unix seconds, future"}}),
    "Grant": obj({"credits": INT, "ref": STR, "actor": STR}, ["credits"]),
    "Recharge": obj({"threshold": INT, "amount": INT, "monthly_cap": INT, "enabled": BOOL},
                    ["threshold", "amount", "monthly_cap"]),
    "WebhookCreate": obj({"url": HOOK_URL, "events": {"type": "array", "items": STR}}, ["url"]),
    "WebhookUpdate": obj({"url": HOOK_URL, "events": {"type": "array", "items": STR},
                          "enabled": BOOL}),
}

_ERROR_CODES = {
    400: "invalid_request, model_not_found, unsupported_parameter or byo_not_allowed",
    401: "invalid_api_key (missing, unknown or revoked key), key_expired or provider_auth_failed",
    402: "insufficient_credits or spend_cap_reached (type insufficient_quota; x-should-retry: false)",
    403: "agent_mismatch, workspace_suspended or insufficient_scope",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout (the body did not arrive in time)",
    409: "idempotency_in_progress",
    413: "request_too_large",
    422: "idempotency_key_reused",
    429: "rate_limit_exceeded (Retry-After and X-RateLimit-* headers)",
    502: "upstream_error",
    503: "service_unavailable (a store the route needs is unreachable), or charge_unconfirmed "
         "(a completion's charge could not be confirmed: retry with its Idempotency-Key)",
    504: "upstream_timeout",
}
ERRORS: dict[str, Any] = {
    f"E{status}": {"description": text,
                   "content": {"application/json": {"schema": ref("Error")}}}
    for status, text in _ERROR_CODES.items()
}
# The Messages routes answer every error in Anthropic's shape, with the same status codes.
ANTHROPIC_ERRORS: dict[str, Any] = {
    f"A{status}": {"description": text,
                   "content": {"application/json": {"schema": ref("AnthropicError")}}}
    for status, text in _ERROR_CODES.items()
}
