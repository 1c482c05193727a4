"""litellm's exceptions as `gateway.errors` types, translated once at this boundary.

The provider's own message is dug out of litellm's wrapping and scrubbed of
keys; the error is classified by meaning (base class, then HTTP status), most
specific first, so a class a newer litellm adds still lands right.
"""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.errors import (
    GatewayError,
    ProviderAuthFailed,
    ProviderRejected,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.types import ProviderCall

_STATUS_BY_TYPE = {"request_too_large": 413}
_LITELLM_HINT = re.compile(r"\.? Handle with `litellm\.\w+`\.?")
_KEYLIKE = re.compile(r"\b(?:sk|bk)[-_][A-Za-z0-9_\-]{8,}")


def _scrub(text: str, key: str | None) -> str:
    if key:
        text = text.replace(key, "[redacted]")
    return _KEYLIKE.sub("[redacted]", text)[:1000]


def _provider_error(exc: BaseException) -> tuple[str, str | None]:
    """The provider's own message and error type, from litellm's wrapping of its body:
    "litellm.BadRequestError: AnthropicException - {json}. Handle with `litellm.X`"."""
    text = str(getattr(exc, "message", None) or exc)
    start = text.find("{")
    if start >= 0:
        try:
            data, _ = json.JSONDecoder().raw_decode(text, start)
        except ValueError:
            data = None
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            kind = error.get("type")
            return error["message"], kind if isinstance(kind, str) else None
    text = _LITELLM_HINT.sub("", text)
    head, sep, rest = text.partition(" - ")
    return (rest if sep and head.startswith("litellm.") else text), None


def translate_error(litellm: Any, exc: BaseException, call: ProviderCall) -> GatewayError:
    """The gateway error for an exception raised by a litellm call.

    Classified by meaning, not by name, so that a class a newer litellm adds
    still lands right: first its base class (litellm's exceptions derive from
    the OpenAI SDK's, one per HTTP meaning), then its HTTP status. Most
    specific first; whatever is left (connection errors, 5xx, 529 overloaded,
    in-band stream errors, litellm's proxy-side exceptions) is a 502.
    """
    if isinstance(exc, GatewayError):
        return exc
    e = litellm.exceptions
    provider = call.model.provider
    message, kind = _provider_error(exc)
    message = _scrub(message, call.api_key)
    # An HTTP status counts where it is the provider's answer (the OpenAI SDK's APIError
    # family, which litellm's provider exceptions derive from), not on litellm's own
    # proxy-side exceptions (guardrails, budgets), which a plain call never configures.
    status = _http_status(exc) if isinstance(exc, getattr(e, "openai", e).APIError) else None
    # litellm reports some provider 4xx as 400; the error type keeps the real status.
    status = _STATUS_BY_TYPE.get(kind or "", status) if status == 400 else status
    if isinstance(exc, TimeoutError | e.Timeout) or status == 408:
        return UpstreamTimeout(f"{provider} did not answer within the time limit")
    if isinstance(exc, e.AuthenticationError) or status == 401:
        # CallerCredentialAuthenticationError included: the caller's key is a BYO key.
        if call.byo:
            return ProviderAuthFailed(f"{provider} rejected the provider key: {message}")
        return UpstreamError(f"{provider} rejected the gateway's provider key")
    if isinstance(exc, e.RateLimitError) or status == 429:
        return ProviderRejected(429, message, type_="rate_limit_error")
    if isinstance(exc, e.ContextWindowExceededError):
        return ProviderRejected(400, message, code="context_length_exceeded")
    if isinstance(exc, e.PermissionDeniedError | e.PaymentRequiredError) or status in (402, 403):
        if not call.byo:
            # A refusal of the gateway's own provider account is not the client's to fix.
            return UpstreamError(f"{provider} refused the gateway's provider account: {message}")
        return ProviderRejected(status if status in (402, 403) else 403, message)
    if isinstance(status, int) and 400 <= status < 500:
        return ProviderRejected(status, message)
    for base, default in ((e.NotFoundError, 404), (e.UnprocessableEntityError, 422),
                          (e.BadRequestError, 400)):
        if isinstance(exc, base) and status is None:
            return ProviderRejected(default, message)
    return UpstreamError(f"{provider} failed: {message}")


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status litellm (or the OpenAI SDK under it) attached to an exception."""
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
    return status if isinstance(status, int) and 100 <= status < 600 else None
