"""The Messages stream as the event writer sees it, and Anthropic's error types per status."""

from __future__ import annotations

import orjson
import pytest

from gateway.dialects.messages.errors import error_body, error_type
from gateway.dialects.messages.stream import MessagesStream, frame
from gateway.errors import (
    ChargeUnconfirmed,
    Forbidden,
    GatewayError,
    InsufficientCredits,
    InvalidApiKey,
    InvalidRequest,
    NotFound,
    ProviderRejected,
    RateLimited,
    RequestTimeout,
    RequestTooLarge,
    SpendCapReached,
    UpstreamError,
    UpstreamTimeout,
)


def test_usage_is_the_providers_own_merged_over_the_stream() -> None:
    dialect = MessagesStream()
    start = frame("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "usage": {"input_tokens": 10, "output_tokens": 1,
                                 "cache_read_input_tokens": 4,
                                 "cache_creation_input_tokens": 2}}})
    delta = frame("content_block_delta", {"type": "content_block_delta", "index": 0,
                                          "delta": {"type": "text_delta", "text": "hi"}})
    end = frame("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                  "usage": {"output_tokens": 7}})
    assert dialect.inspect(start) == (False, {
        "prompt_tokens": 16, "completion_tokens": 1, "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 4}})
    assert dialect.inspect(delta) == (True, None)
    assert not dialect.may_carry_usage(delta) and dialect.may_carry_usage(end)
    _, usage = dialect.inspect(end)
    assert usage is not None and (usage["prompt_tokens"], usage["completion_tokens"]) == (16, 7)
    assert dialect.inspect(frame("ping", {"type": "ping"})) == (False, None)
    # relayed as they came (the usage events too), and nothing after message_stop
    assert dialect.event(delta) == delta + b"\n\n" == dialect.usage_event(delta, 3)
    assert dialect.done == b""
    assert MessagesStream().usage == {}  # each stream has its own


def test_the_in_band_error_event() -> None:
    event = MessagesStream.error_event(UpstreamError("the provider broke off"))
    name, data = event.split(b"\n", 1)
    assert name == b"event: error" and event.endswith(b"\n\n")
    assert orjson.loads(data.removeprefix(b"data: ")) == {
        "type": "error", "error": {"type": "api_error", "message": "the provider broke off"}}


@pytest.mark.parametrize(("error", "kind"), [
    (InvalidRequest("x"), "invalid_request_error"),
    (InvalidApiKey("x"), "authentication_error"),
    (InsufficientCredits("x"), "billing_error"),
    (SpendCapReached("x"), "billing_error"),
    (Forbidden("x"), "permission_error"),
    (NotFound("x"), "not_found_error"),
    (RequestTimeout("x"), "invalid_request_error"),
    (RequestTooLarge("x"), "invalid_request_error"),
    (RateLimited("x"), "rate_limit_error"),
    (UpstreamError("x"), "api_error"),
    (ChargeUnconfirmed("x"), "overloaded_error"),
    (UpstreamTimeout("x"), "api_error"),
    (ProviderRejected(400, "x", type_="invalid_request_error"), "invalid_request_error"),
    (ProviderRejected(404, "x", type_="not_found_error"), "not_found_error"),
    (ProviderRejected(422, "x", type_="some_openai_type"), "invalid_request_error"),
])
def test_error_types_by_status(error: GatewayError, kind: str) -> None:
    assert error_type(error) == kind
    assert orjson.loads(error_body(error)) == {"type": "error",
                                               "error": {"type": kind, "message": "x"}}
