"""What SPEC "Three dialects, one meter" says is the same on every route, checked on
/v1/responses and /v1/messages against chat: the X-Bookbag-* headers, attribution
(headers, then `metadata`, taken out before forwarding; an agent-bound key), the BYO
header, per-key rate limits, Idempotency-Key's refusals and its workspace scope, the
`inference` scope, suspension and the 402 -- each in the route's own error shape."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from tests.dialects_audit.conftest import HELLO, RELAYED, post
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway

CHAT, RESPONSES, MESSAGES = "/v1/chat/completions", "/v1/responses", "/v1/messages"
BODIES: dict[str, dict[str, Any]] = {
    CHAT: {"messages": HELLO},
    RESPONSES: {"input": "hello there"},
    MESSAGES: {"max_tokens": 20, "messages": HELLO},
}
UPSTREAM = {(RESPONSES, RELAYED): RESPONSES, (RESPONSES, "claude-haiku-4-5"): MESSAGES,
            (MESSAGES, "claude-haiku-4-5"): MESSAGES, (MESSAGES, RELAYED): CHAT}
COST = {RELAYED: 1, "claude-haiku-4-5": 2, "bookbag-local": 0}


def body(path: str, model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, **BODIES[path], **extra}


def error_of(r: httpx.Response, path: str) -> tuple[str, str]:
    """(type, message) of an error in the route's own shape."""
    data = r.json()
    if path == MESSAGES:
        assert set(data) == {"type", "error"} and data["type"] == "error", data
        assert set(data["error"]) == {"type", "message"}, data
    else:
        assert set(data["error"]) >= {"message", "type", "param", "code"}, data
    return data["error"]["type"], data["error"]["message"]


@pytest.mark.parametrize("path", [CHAT, RESPONSES, MESSAGES])
def test_the_bookbag_headers(gateway: RunningGateway, path: str) -> None:
    _, key = gateway.workspace("free")
    model = "claude-haiku-4-5"
    mine = {"x-request-id": "client-id-1"}
    plain = post(gateway, path, body(path, model), key, **mine)
    streamed = post(gateway, path, body(path, model, stream=True), key, **mine)
    assert plain.status_code == streamed.status_code == 200
    for r in (plain, streamed):
        assert r.headers["x-request-id"].startswith("req_")
        assert r.headers["x-client-request-id"] == "client-id-1"
        assert r.headers["x-bookbag-model"] == model
    assert plain.headers["x-bookbag-credits-charged"] == "2"
    assert plain.headers["x-bookbag-credits-remaining"] == "98"
    assert streamed.headers["x-bookbag-credits-reserved"] == "2"
    assert "x-bookbag-credits-charged" not in streamed.headers


@pytest.mark.parametrize(("path", "model"), list(UPSTREAM))
def test_attribution_by_header_or_metadata_which_is_not_forwarded(
        gateway: RunningGateway, provider: FakeProvider, path: str, model: str) -> None:
    ws, key = gateway.workspace("free")
    meta: dict[str, str] = {"agent_id": "a1", "conversation_id": "c1"}
    if path == MESSAGES:
        meta["user_id"] = "u-1"  # Anthropic's own field is passed on
    assert post(gateway, path, body(path, model, metadata=meta), key).status_code == 200
    sent = provider.received[-1]
    assert sent.path == UPSTREAM[(path, model)]
    assert "a1" not in str(sent.body) and "c1" not in str(sent.body)
    if UPSTREAM[(path, model)] == MESSAGES and path == MESSAGES:
        assert sent.body["metadata"] == {"user_id": "u-1"}
    by_headers = post(gateway, path, body(path, model), key,
                      **{"x-bookbag-agent-id": "h1", "x-bookbag-conversation-id": "hc"})
    assert by_headers.status_code == 200
    rows = gateway.wait_ledger(ws, 2)
    assert sorted((r["agent_id"], r["conversation_id"]) for r in rows) == [
        ("a1", "c1"), ("h1", "hc")]
    bound = gateway.key(ws, agent_id="bound-agent")
    for refused in (post(gateway, path, body(path, model), bound,
                         **{"x-bookbag-agent-id": "other"}),
                    post(gateway, path, body(path, model, metadata={"agent_id": "other"}),
                         bound)):
        assert refused.status_code == 403
        assert error_of(refused, path)[0] == "permission_error"
        if path != MESSAGES:
            assert refused.json()["error"]["code"] == "agent_mismatch"
    assert post(gateway, path, body(path, model), bound).status_code == 200
    rows = gateway.wait_ledger(ws, 3)
    assert sorted(r["agent_id"] for r in rows) == ["a1", "bound-agent", "h1"]


@pytest.mark.parametrize(("path", "model"), list(UPSTREAM))
def test_the_byo_header(gateway: RunningGateway, provider: FakeProvider, path: str,
                        model: str) -> None:
    ws, key = gateway.workspace("free")
    own = "sk-ant-own-audit-1" if model.startswith("claude") else "sk-own-audit-openai-1"
    provider.add_key(own, "anthropic" if model.startswith("claude") else "openai")
    r = post(gateway, path, body(path, model), key, **{"x-bookbag-provider-key": own})
    assert r.status_code == 200, r.text
    assert provider.received[-1].api_key == own
    assert [(x["credits"], x["billing_mode"]) for x in gateway.wait_ledger(ws, 1)] == [
        (0, "byo")]
    assert gateway.balance(key)["balance"] == 100
    wrong = post(gateway, path, body(path, model), key,
                 **{"x-bookbag-provider-key": own + "-revoked"})
    assert wrong.status_code == 401
    if path == MESSAGES:
        assert error_of(wrong, path)[0] == "authentication_error"
    else:  # as on chat
        assert wrong.json()["error"]["code"] == "provider_auth_failed"
    before = provider.count()
    refused = post(gateway, path, body(path, "custom-llm"), key,
                   **{"x-bookbag-provider-key": own})
    assert refused.status_code == 400 and error_of(refused, path)[0] == "invalid_request_error"
    if path != MESSAGES:
        assert refused.json()["error"]["code"] == "byo_not_allowed"
    assert provider.count() == before and len(gateway.ledger(ws)) == 1


@pytest.mark.parametrize("path", [RESPONSES, MESSAGES])
def test_a_keys_rate_limit(gateway: RunningGateway, path: str) -> None:
    ws, _ = gateway.workspace("free")
    key = gateway.key(ws, rate_limit="2/60s")
    got = [post(gateway, path, body(path, "bookbag-local"), key) for _ in range(3)]
    assert [r.status_code for r in got] == [200, 200, 429]
    assert error_of(got[-1], path)[0] == "rate_limit_error"
    assert got[-1].headers["x-ratelimit-limit"] == "2" and "retry-after" in got[-1].headers
    if path != MESSAGES:
        assert got[-1].json()["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize("path", [RESPONSES, MESSAGES])
def test_idempotency_refusals_and_the_workspace_scope(
        gateway: RunningGateway, provider: FakeProvider, path: str) -> None:
    ws, key = gateway.workspace("free")
    model = "claude-haiku-4-5"
    upstream = MESSAGES  # Claude's upstream, from either route
    same = {"idempotency-key": f"audit-{path}"}
    provider.fail("delay", seconds=1.0, path=upstream)
    first: list[httpx.Response] = []
    slow = threading.Thread(target=lambda: first.append(
        post(gateway, path, body(path, model), key, **same)))
    slow.start()
    try:
        deadline = time.monotonic() + 5
        while provider.count(upstream) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = post(gateway, path, body(path, model), key, **same)
    finally:
        slow.join()
    assert busy.status_code == 409 and error_of(busy, path)[0] == "invalid_request_error"
    assert first[0].status_code == 200
    reused = post(gateway, path, body(path, model, temperature=0.5), key, **same)
    assert reused.status_code == 422 and error_of(reused, path)[0] == "invalid_request_error"
    if path != MESSAGES:
        assert busy.json()["error"]["code"] == "idempotency_in_progress"
        assert reused.json()["error"]["code"] == "idempotency_key_reused"
    other_ws, other = gateway.workspace("free")  # the same key in another workspace
    theirs = post(gateway, path, body(path, model), other, **same)
    assert theirs.status_code == 200 and "idempotent-replayed" not in theirs.headers
    assert len(gateway.ledger(ws)) == len(gateway.ledger(other_ws)) == 1


@pytest.mark.parametrize("path", [RESPONSES, MESSAGES, MESSAGES + "/count_tokens"])
def test_scope_and_suspension(gateway: RunningGateway, path: str) -> None:
    content = {"model": "bookbag-local", "messages": HELLO} if "count" in path else body(
        path, "bookbag-local")
    shape = MESSAGES if path.startswith(MESSAGES) else path
    ws, key = gateway.workspace("free")
    reader = gateway.key(ws, scopes=("read",))
    r = post(gateway, path, content, reader)
    assert r.status_code == 403 and error_of(r, shape)[0] == "permission_error"
    gateway.accounts.update_workspace(ws, suspended=True)
    deadline = time.monotonic() + 5  # the key cache (0.5 s in tests) sees the suspension
    while (r := post(gateway, path, content, key)).status_code == 200 \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.status_code == 403 and error_of(r, shape)[0] == "permission_error"
    if shape != MESSAGES:
        assert r.json()["error"]["code"] == "workspace_suspended"


def test_out_of_credits_on_responses_is_openais_402(gateway: RunningGateway,
                                                   provider: FakeProvider) -> None:
    ws, key = gateway.workspace("enterprise", custom_allotment=0)
    r = post(gateway, RESPONSES, body(RESPONSES, RELAYED), key)
    assert r.status_code == 402 and r.headers["x-should-retry"] == "false"
    assert r.json()["error"]["code"] == "insufficient_credits"
    assert r.json()["error"]["type"] == "insufficient_quota"
    assert provider.count() == 0 and gateway.ledger(ws) == []
