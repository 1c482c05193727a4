"""The Messages rules of SPEC "Three dialects" not covered elsewhere: a stream that fails
mid-way on a translated route (chat upstream) ends with Anthropic's `event: error` and is
not charged, as on the relayed one; Claude Code's `?beta=true` on count_tokens and on
GET /v1/models (Anthropic's list shape)."""

from __future__ import annotations

import httpx
import orjson
import pytest

from tests.dialects_audit.conftest import HELLO, RELAYED, post
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway


@pytest.mark.parametrize("model", [RELAYED, "custom-llm"])
@pytest.mark.parametrize("mode", ["cut", "inband_error"])
def test_a_translated_stream_that_fails_ends_with_an_error_event(
        gateway: RunningGateway, provider: FakeProvider, model: str, mode: str) -> None:
    ws, key = gateway.workspace("free")
    provider.fail(mode, after=1, path="/v1/chat/completions")
    r = post(gateway, "/v1/messages", {"model": model, "max_tokens": 50, "messages": HELLO,
                                       "stream": True}, key)
    assert r.status_code == 200
    blocks = [b for b in r.text.split("\n\n") if b.strip()]
    assert blocks[0].startswith("event: message_start")
    assert any(b.startswith("event: content_block_delta") for b in blocks)
    name, data = blocks[-1].split("\n", 1)
    assert name == "event: error"
    error = orjson.loads(data.removeprefix("data: "))
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "message_stop" not in r.text
    assert gateway.ledger(ws) == [] and gateway.balance(key)["balance"] == 100


def test_beta_query_on_count_tokens_and_models(gateway: RunningGateway,
                                              provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        counted = c.post("/v1/messages/count_tokens?beta=true", headers=headers,
                         json={"model": "claude-haiku-4-5", "messages": HELLO})
        models = c.get("/v1/models?beta=true", headers=headers)
    assert counted.status_code == 200 and counted.json()["input_tokens"] > 0
    assert provider.received[-1].path == "/v1/messages/count_tokens"
    assert models.status_code == 200
    listed = models.json()
    assert set(listed) == {"data", "has_more", "first_id", "last_id"}
    assert all(m["type"] == "model" for m in listed["data"])
    assert gateway.ledger(ws) == []
