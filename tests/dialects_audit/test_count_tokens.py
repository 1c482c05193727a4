"""count_tokens (SPEC "Three dialects"): its per-workspace bucket, free of the balance and
of spend caps, inside the workspace's in-flight cap, and estimated when the upstream has
no count_tokens route."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from gateway.catalog import RateLimit
from gateway.flow import count_tokens as count_tokens_flow
from tests.conftest import GatewayFactory
from tests.dialects_audit.conftest import HELLO, RELAYED, post
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway

COUNT = "/v1/messages/count_tokens"
CLAUDE = {"model": "claude-haiku-4-5", "messages": HELLO}


def test_the_workspace_bucket_spans_its_keys(gateway: RunningGateway,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(count_tokens_flow, "PER_WORKSPACE", RateLimit(3, 60.0))
    ws, key = gateway.workspace("free")
    keys = [key, gateway.key(ws), gateway.key(ws), gateway.key(ws)]
    got = [post(gateway, COUNT, {"model": RELAYED, "messages": HELLO}, k) for k in keys]
    assert [r.status_code for r in got] == [200, 200, 200, 429]
    assert got[-1].json()["error"]["type"] == "rate_limit_error"
    assert "workspace" in got[-1].json()["error"]["message"]
    assert "retry-after" in got[-1].headers
    _, other = gateway.workspace("free")  # another workspace has its own bucket
    assert post(gateway, COUNT, {"model": RELAYED, "messages": HELLO}, other).status_code == 200


def test_neither_the_balance_nor_a_cap_refuses_a_count(gateway: RunningGateway,
                                                       provider: FakeProvider) -> None:
    ws, key = gateway.workspace("enterprise", custom_allotment=0)
    gateway.accounts.set_cap(ws, "key", gateway.accounts.keys(ws)[0].id, 0)
    for body in (CLAUDE, {"model": RELAYED, "messages": HELLO}):
        r = post(gateway, COUNT, body, key)
        assert r.status_code == 200 and r.json()["input_tokens"] > 0, r.text
    assert provider.count(COUNT) == 1  # the Claude count was asked of the provider
    refused = post(gateway, "/v1/messages", {**CLAUDE, "max_tokens": 20}, key)
    assert refused.status_code == 402  # while a reply is refused
    assert gateway.ledger(ws) == []


def test_a_count_is_inside_the_workspaces_in_flight_cap(make_gateway: GatewayFactory,
                                                       provider: FakeProvider) -> None:
    gw = make_gateway(BOOKBAG_MAX_INFLIGHT_PER_WORKSPACE="1")
    _, key = gw.workspace("free")
    provider.fail("delay", seconds=1.0, path="/v1/messages")
    first: list[httpx.Response] = []
    slow = threading.Thread(target=lambda: first.append(
        post(gw, "/v1/messages", {**CLAUDE, "max_tokens": 20}, key)))
    slow.start()
    try:
        deadline = time.monotonic() + 5
        while provider.count("/v1/messages") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        asked = post(gw, COUNT, CLAUDE, key)  # a provider call: over the cap
        estimated = post(gw, COUNT, {"model": RELAYED, "messages": HELLO}, key)  # no call
    finally:
        slow.join()
    assert asked.status_code == 429, asked.text
    assert asked.json()["error"]["type"] == "rate_limit_error" and "retry-after" in asked.headers
    assert estimated.status_code == 200
    assert first[0].status_code == 200


@pytest.mark.parametrize("status", [404, 405])
def test_an_upstream_without_the_route_is_estimated(gateway: RunningGateway,
                                                    provider: FakeProvider, status: int) -> None:
    """An Anthropic-compatible server that has /v1/messages but not count_tokens."""
    ws, key = gateway.workspace("free")
    provider.fail("status", status=status, path=COUNT, type="not_found_error",
                  message="Not found.")
    r = post(gateway, COUNT, CLAUDE, key)
    assert r.status_code == 200, r.text
    assert r.json()["input_tokens"] > 0 and r.json()["estimated"] is True
    assert provider.count(COUNT) == 1
    assert gateway.ledger(ws) == []


def test_other_provider_failures_of_a_count_still_fail(gateway: RunningGateway,
                                                      provider: FakeProvider) -> None:
    _, key = gateway.workspace("free")
    provider.fail("status", status=500, path=COUNT)
    r = post(gateway, COUNT, CLAUDE, key)
    assert r.status_code == 502 and r.json()["error"]["type"] == "api_error"
    provider.fail("status", status=400, path=COUNT, type="invalid_request_error",
                  message="messages: bad")
    r = post(gateway, COUNT, CLAUDE, key)
    assert r.status_code == 400 and r.json()["error"]["message"] == "messages: bad"
