"""The Response of a stream that failed: what `response.failed` carries.

The SDK types `error.code` as a closed set (`server_error`, `rate_limit_exceeded`,
`invalid_prompt`, image errors ...), so the gateway's own codes cannot go there as they
are: a 429 is `rate_limit_exceeded`, anything else `server_error`; the gateway's code is
kept in `error.type` (a free string) and its message as is.
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]


def response_error_code(status: int, code: str) -> str:
    return "rate_limit_exceeded" if status == 429 or code == "rate_limit_exceeded" \
        else "server_error"


def failed_response(response: Json, *, code: str, message: str, status: int) -> Json:
    """`response` (as `response.created` showed it) ended `failed` with this error."""
    return {**response, "status": "failed", "incomplete_details": None,
            "error": {"code": response_error_code(status, code), "message": message,
                      "type": code}}
