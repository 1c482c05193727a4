"""How a Responses stream ends when the provider fails, and the Idempotency-Key's replay.

A provider's own `response.failed` (sent in-band, then a clean end) is a provider failure:
not charged, and passed on as the one terminal event (nothing after it). A stream the
provider cuts ends with a `response.failed` of the gateway's making. Both leave the
balance as it was. An Idempotency-Key replays the first reply byte for byte, and one key
on chat and on Responses is two keys."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway
from tests.responses.conftest import COST, RELAYED

MODELS = (RELAYED, "claude-haiku-4-5", "custom-llm")
UPSTREAM_PATH = {RELAYED: "/v1/responses", "claude-haiku-4-5": "/v1/messages",
                 "custom-llm": "/v1/chat/completions"}


def events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events of a Responses stream: (event name, data); the name must be the
    data's `type`, as OpenAI sends them."""
    out = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = orjson.loads(lines["data"])
        assert lines["event"] == data["type"]
        out.append((lines["event"], data))
    return out


def stream(gateway: RunningGateway, key: str, model: str, **extra: Any) -> httpx.Response:
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        return c.post("/v1/responses", headers={"authorization": f"Bearer {key}"},
                      json={"model": model, "input": "hello there", "stream": True, **extra})


def test_a_providers_response_failed_mid_stream_is_not_charged(
        gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    provider.fail("inband_error", after=2, path="/v1/responses", message="overloaded")
    r = stream(gateway, key, RELAYED)
    assert r.status_code == 200
    got = events(r.content)
    kinds = [k for k, _ in got]
    assert kinds.count("response.output_text.delta") == 2
    assert kinds[-1] == "response.failed" and kinds.count("response.failed") == 1
    assert got[-1][1]["response"]["error"]["message"] == "overloaded"
    assert gateway.ledger(ws) == []
    assert gateway.balance(key)["balance"] == 100


@pytest.mark.parametrize("model", MODELS)
def test_a_stream_the_provider_cuts_ends_failed_and_is_not_charged(
        gateway: RunningGateway, provider: FakeProvider, model: str) -> None:
    ws, key = gateway.workspace("free")
    provider.fail("cut", after=1, path=UPSTREAM_PATH[model])
    r = stream(gateway, key, model)
    assert r.status_code == 200
    got = events(r.content)
    assert got[0][0] == "response.created"
    last_kind, last = got[-1]
    assert last_kind == "response.failed"
    assert last["response"]["status"] == "failed"
    assert last["response"]["id"] == got[0][1]["response"]["id"]
    assert last["sequence_number"] == got[-2][1]["sequence_number"] + 1
    assert gateway.ledger(ws) == []
    assert gateway.balance(key)["balance"] == 100


def test_a_provider_error_before_the_stream_is_openais_shape_and_free(
        gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    provider.fail("status", status=500, path="/v1/responses")
    r = stream(gateway, key, RELAYED)
    assert r.status_code == 502
    assert r.json()["error"]["type"] and r.json()["error"]["message"]
    assert gateway.ledger(ws) == []


@pytest.mark.parametrize("stream_", [False, True])
@pytest.mark.parametrize("model", [RELAYED, "claude-haiku-4-5"])
def test_an_idempotency_key_replays_byte_identical_and_is_scoped_by_route(
        gateway: RunningGateway, provider: FakeProvider, stream_: bool, model: str) -> None:
    ws, key = gateway.workspace("free")
    headers = {"authorization": f"Bearer {key}", "idempotency-key": f"k-{stream_}-{model}"}
    body = {"model": model, "input": "hello there", "stream": stream_}
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        first = c.post("/v1/responses", json=body, headers=headers)
        again = c.post("/v1/responses", json=body, headers=headers)
        chat = c.post("/v1/chat/completions", headers=headers, json={
            "model": model, "messages": [{"role": "user", "content": "hello there"}]})
    assert first.status_code == again.status_code == chat.status_code == 200
    assert again.content == first.content  # byte-identical, event lines included
    assert again.headers["idempotent-replayed"] == "true"
    assert chat.json()["object"] == "chat.completion"
    assert provider.count(UPSTREAM_PATH[model]) == 1 + (model == "claude-haiku-4-5")
    rows = gateway.ledger(ws)
    assert sorted((r["api"], r["credits"]) for r in rows) == [
        ("chat", COST[model]), ("responses", COST[model])]
    response_id = (events(first.content)[0][1]["response"]["id"] if stream_
                   else first.json()["id"])
    assert [r["response_id"] for r in rows if r["api"] == "responses"] == [response_id]
