"""Errors in Anthropic's shape, `{"type": "error", "error": {"type", "message"}}`.

The status codes are the gateway's own (402 included); the `error.type` is
Anthropic's name for that status (SPEC "Three dialects": 402 -> billing_error).
A provider's own 4xx keeps its type when it is one of Anthropic's.
"""

from __future__ import annotations

import orjson

from gateway.errors import GatewayError, ProviderRejected

TYPES = frozenset({
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
    "rate_limit_error", "api_error", "overloaded_error", "billing_error",
})
_BY_STATUS = {401: "authentication_error", 402: "billing_error", 403: "permission_error",
              404: "not_found_error", 429: "rate_limit_error", 503: "overloaded_error",
              529: "overloaded_error"}


def error_type(error: GatewayError) -> str:
    if isinstance(error, ProviderRejected) and error.type in TYPES:
        return error.type
    if error.status in _BY_STATUS:
        return _BY_STATUS[error.status]
    return "invalid_request_error" if 400 <= error.status < 500 else "api_error"


def error_body(error: GatewayError) -> bytes:
    return orjson.dumps({"type": "error",
                         "error": {"type": error_type(error), "message": error.message}})


def error_event(error: GatewayError) -> bytes:
    """The in-band error that ends a failed Messages stream."""
    return b"event: error\ndata: " + error_body(error) + b"\n\n"
