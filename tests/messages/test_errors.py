"""Bad input and refusals on the Messages routes: Anthropic's error shape with the gateway's
status codes (402 included), never a 5xx for bad input; the mid-stream error event."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import pytest

from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway
from tests.messages.conftest import BETAS, HELLO, THINKING_CAP, sdk

TYPES = {"invalid_request_error", "authentication_error", "permission_error",
         "not_found_error", "rate_limit_error", "api_error", "overloaded_error",
         "billing_error"}


def post(gateway: RunningGateway, path: str, *, key: str | None = None, body: Any = None,
         content: bytes | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
    sent = {"anthropic-version": "2023-06-01", **({"x-api-key": key} if key else {}),
            **(headers or {})}
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        if content is not None:
            return c.post(path, content=content, headers=sent)
        return c.post(path, json=body, headers=sent)


def anthropic_error(r: httpx.Response, status: int, kind: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"type", "error"} and body["type"] == "error", body
    assert set(body["error"]) == {"type", "message"} and body["error"]["type"] == kind, body
    message: str = body["error"]["message"]
    return message


BAD_BODIES: list[tuple[Any, str]] = [
    (b"{not json", "parse"),
    (b"", "empty"),
    (b"[1, 2]", "object"),
    ({"model": "claude-haiku-4-5", "messages": HELLO}, "max_tokens"),
    ({"model": "claude-haiku-4-5", "max_tokens": 0, "messages": HELLO}, "max_tokens"),
    ({"model": "claude-haiku-4-5", "max_tokens": 10, "messages": []}, "messages"),
    ({"model": "claude-haiku-4-5", "max_tokens": 10,
      "messages": [{"role": "system", "content": "x"}]}, "role"),
    ({"model": "claude-haiku-4-5", "max_tokens": 10,
      "messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "type"),
    ({"model": "claude-haiku-4-5", "max_tokens": 10, "messages": HELLO, "stream": "yes"},
     "stream"),
    ({"model": 7, "max_tokens": 10, "messages": HELLO}, "model"),
    ({"model": "no-such-model", "max_tokens": 10, "messages": HELLO}, "no-such-model"),
    ({"model": "text-embedding-3-small", "max_tokens": 10, "messages": HELLO}, "embedding"),
    ({"model": "claude-haiku-4-5", "max_tokens": 10, "messages": HELLO,
      "metadata": {"agent_id": "not valid!"}}, "agent_id"),
    # translated to chat: what chat cannot say is refused, never dropped
    ({"model": "gpt-4o-mini", "max_tokens": 10, "messages": HELLO, "top_k": 5}, "top_k"),
    ({"model": "gpt-4o-mini", "max_tokens": 10, "messages": HELLO,
      "thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
    ({"model": "gpt-4o-mini", "max_tokens": 10, "messages": HELLO, "container": "c1"},
     "container"),
    ({"model": "gpt-4o-mini", "max_tokens": 10, "messages": [
        {"role": "user", "content": [{"type": "tool_result"}]}]}, "translated"),
]


@pytest.mark.parametrize(("body", "hint"), BAD_BODIES)
def test_bad_input_is_an_anthropic_400(gateway: RunningGateway, provider: FakeProvider,
                                       body: Any, hint: str) -> None:
    ws, key = gateway.workspace("free")
    raw = body if isinstance(body, bytes) else None
    r = post(gateway, "/v1/messages", key=key, body=None if raw is not None else body,
             content=raw)
    message = anthropic_error(r, 400, "invalid_request_error")
    assert hint.lower() in message.lower() or hint in ("parse", "empty", "object"), message
    assert provider.received == []
    assert gateway.ledger(ws) == []


def test_keys_by_header_and_their_refusals(gateway: RunningGateway) -> None:
    _, key = gateway.workspace("free")
    _, other = gateway.workspace("free")
    body = {"model": "bookbag-local", "max_tokens": 10, "messages": HELLO}
    assert post(gateway, "/v1/messages", key=key, body=body).status_code == 200
    bearer = {"authorization": f"Bearer {key}"}
    assert post(gateway, "/v1/messages", body=body, headers=bearer).status_code == 200
    both = post(gateway, "/v1/messages", key=key, body=body, headers=bearer)
    assert both.status_code == 200  # the same key twice
    differ = post(gateway, "/v1/messages", key=other, body=body, headers=bearer)
    assert "two different keys" in anthropic_error(differ, 401, "authentication_error")
    anthropic_error(post(gateway, "/v1/messages", body=body), 401, "authentication_error")
    anthropic_error(post(gateway, "/v1/messages", key="bk_nope", body=body), 401,
                    "authentication_error")
    reader = gateway.key(gateway.workspace("free")[0], scopes=["read"])
    anthropic_error(post(gateway, "/v1/messages", key=reader, body=body), 403,
                    "permission_error")
    anthropic_error(post(gateway, "/v1/messages/count_tokens", key=reader, body=body), 403,
                    "permission_error")


def test_route_errors_keep_the_shape(gateway: RunningGateway) -> None:
    _, key = gateway.workspace("free")
    anthropic_error(post(gateway, "/v1/messages/batches", key=key, body={}), 404,
                    "not_found_error")
    with httpx.Client(base_url=gateway.url) as c:
        anthropic_error(c.get("/v1/messages", headers={"x-api-key": key}), 405,
                        "invalid_request_error")
    big = b'{"model": "bookbag-local", "messages": [], "pad": "' + b"x" * (21 << 20) + b'"}'
    anthropic_error(post(gateway, "/v1/messages", key=key, content=big), 413,
                    "invalid_request_error")


def test_out_of_credits_is_a_402_billing_error(gateway: RunningGateway,
                                               provider: FakeProvider) -> None:
    ws, key = gateway.workspace("enterprise", custom_allotment=1)
    client = sdk(gateway, key)
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=HELLO)
    assert info.value.status_code == 402
    assert info.value.body["error"]["type"] == "billing_error"  # type: ignore[index]
    assert info.value.response.headers["x-should-retry"] == "false"
    assert provider.received == [] and gateway.ledger(ws) == []


def test_billed_features_follow_the_catalog_entry(gateway: RunningGateway,
                                                  provider: FakeProvider) -> None:
    ws, key = gateway.workspace("pro")
    client = sdk(gateway, key)
    base: dict[str, Any] = {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": HELLO}
    refused: list[tuple[dict[str, Any], dict[str, str], str]] = [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, {},
         "web_search_20250305"),
        ({"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]}, {}, "mcp"),
        ({"thinking": {"type": "enabled", "budget_tokens": THINKING_CAP + 1}}, {},
         "budget_tokens"),
        ({"max_tokens": 16385}, {}, "max_tokens"),
        ({"service_tier": "priority"}, {}, "service tier"),
        ({}, {"anthropic-beta": "files-api-2025-04-14"}, "files-api-2025-04-14"),
    ]
    for extra, headers, hint in refused:
        with pytest.raises(anthropic.BadRequestError) as info:
            client.messages.create(**base, extra_body=extra, extra_headers=headers)
        assert hint in info.value.body["error"]["message"], hint  # type: ignore[index]
    assert provider.received == [] and gateway.ledger(ws) == []
    # within the entry: sent, with the allowed betas forwarded
    client.messages.create(**{**base, "max_tokens": 4096},
                           thinking={"type": "enabled", "budget_tokens": THINKING_CAP},
                           extra_headers={"anthropic-beta": ",".join(BETAS)})
    assert provider.received[-1].headers["anthropic-beta"] == ",".join(BETAS)


def test_a_provider_error_mid_stream_is_an_error_event_and_not_charged(
        gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    provider.fail("inband_error", after=2, path="/v1/messages")
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        r = c.post("/v1/messages", headers={"x-api-key": key}, json={
            "model": "claude-haiku-4-5", "max_tokens": 50, "messages": HELLO, "stream": True})
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert events[0].startswith("event: message_start")
    assert events[-1].startswith("event: error\ndata: ")
    assert '"type":"error"' in events[-1] and "message_stop" not in r.text
    assert gateway.ledger(ws) == []  # the provider broke off: never charged
    assert gateway.balance(key)["balance"] == 100


def test_a_provider_4xx_keeps_its_anthropic_type(gateway: RunningGateway,
                                                 provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    provider.fail("status", status=429, path="/v1/messages", type="rate_limit_error",
                  message="slow down")
    with pytest.raises(anthropic.RateLimitError) as info:
        sdk(gateway, key).messages.create(model="claude-haiku-4-5", max_tokens=10,
                                          messages=HELLO)
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert gateway.ledger(ws) == [] and gateway.balance(key)["balance"] == 100
