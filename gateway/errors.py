"""The gateway's error tree and its one mapping to HTTP status and OpenAI wire shape.

    GatewayError                      status  code
    ├── InvalidRequest                400     invalid_request
    │   ├── ModelNotFound             400     model_not_found
    │   ├── UnsupportedParameter      400     unsupported_parameter
    │   ├── ByoNotAllowed             400     byo_not_allowed
    │   └── ProviderKeyMissing        400     provider_key_missing   (no key for the model: not retried)
    ├── InvalidApiKey                 401     invalid_api_key
    ├── ProviderAuthFailed            401     provider_auth_failed   (a BYO key the provider rejected)
    ├── InsufficientCredits           402     insufficient_credits   (type insufficient_quota)
    ├── Forbidden                     403     agent_mismatch | workspace_suspended | insufficient_scope
    ├── NotFound                      404     not_found
    ├── MethodNotAllowed              405     method_not_allowed
    ├── RequestTimeout                408     request_timeout
    ├── IdempotencyInProgress         409     idempotency_in_progress
    ├── RequestTooLarge               413     request_too_large
    ├── IdempotencyKeyReused          422     idempotency_key_reused
    ├── RateLimited                   429     rate_limit_exceeded
    ├── ProviderRejected              4xx     the provider's own status and message (not auth)
    ├── UpstreamError                 502     upstream_error
    ├── ServiceUnavailable            503     service_unavailable
    │   └── ChargeUnconfirmed         503     charge_unconfirmed     (a settle failed: may have charged)
    └── UpstreamTimeout               504     upstream_timeout

Third-party exceptions are translated into these at their boundary module;
`render` is the only place that turns one into bytes on the wire.
"""

from __future__ import annotations

from typing import Any

import orjson


class GatewayError(Exception):
    """Base of every error a client can see."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ModelNotFound(InvalidRequest):
    code = "model_not_found"


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"


class ByoNotAllowed(InvalidRequest):
    code = "byo_not_allowed"


class ProviderKeyMissing(InvalidRequest):
    """No key reaches the model's provider: an operator's setting (or the caller's BYO key)
    fixes it, a retry does not, so a 400 (the SDKs do not retry it), never a 502."""

    code = "provider_key_missing"


class InvalidApiKey(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class KeyExpired(GatewayError):
    """Spend controls: the key's `expires_at` has passed."""

    status = 401
    type = "invalid_request_error"
    code = "key_expired"


class ProviderAuthFailed(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "provider_auth_failed"


class InsufficientCredits(GatewayError):
    status = 402
    type = "insufficient_quota"
    code = "insufficient_credits"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"x-should-retry": "false"})


class SpendCapReached(GatewayError):
    """Spend controls: a key's or agent's cap for the period would be exceeded."""

    status = 402
    type = "insufficient_quota"
    code = "spend_cap_reached"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"x-should-retry": "false"})


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"
    code = "insufficient_scope"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class IdempotencyInProgress(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "idempotency_in_progress"


class RequestTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class IdempotencyKeyReused(GatewayError):
    status = 422
    type = "invalid_request_error"
    code = "idempotency_key_reused"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ProviderRejected(GatewayError):
    """A provider 4xx other than auth: its status and message pass through."""

    type = "invalid_request_error"
    code = "provider_error"

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 param: str | None = None, type_: str | None = None) -> None:
        super().__init__(message, code=code, param=param)
        self.status = status
        if type_:
            self.type = type_


class UpstreamError(GatewayError):
    status = 502
    type = "api_error"
    code = "upstream_error"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "api_error"
    code = "service_unavailable"


class ChargeUnconfirmed(ServiceUnavailable):
    """The reply's settle failed in a way that may still have applied it (the store died with
    the write in flight, or runs it late): charged once or not at all, never twice. The
    request's Idempotency-Key is kept, so a retry with it replays the reply or runs anew."""

    code = "charge_unconfirmed"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "api_error"
    code = "upstream_timeout"


class DeadlineExceeded(UpstreamTimeout):
    """The gateway's own total deadline (`BOOKBAG_PROVIDER_TIMEOUT`'s total) ended the
    request, not the provider: a stream it ends after output reached the client is charged
    (SPEC "One deadline per request"); the provider falling silent is `UpstreamTimeout`."""


def deadline_exceeded(model_id: str, total: float) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"The request reached the gateway's time limit ({total:g} s) for `{model_id}`. "
        "A streamed reply whose output had reached the client is charged.")


def render(error: GatewayError) -> bytes:
    """The OpenAI-shaped body of an error."""
    return orjson.dumps(error.body())


def sse_error(error: GatewayError) -> bytes:
    """An error sent in-band after a stream started (the stream then ends without [DONE])."""
    return b"data: " + render(error) + b"\n\n"
