"""The Responses rules of SPEC "Three dialects" not covered elsewhere: `incomplete` is a
reply (charged), a JSON Response that `failed` or was `cancelled` is a provider failure,
a request carrying `previous_response_id` never falls back to another model, billed
features are refused on the relayed and the translated routes alike, `background: true`
is refused even with the caller's own key, and `store` is forced off on a stream too."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import UpstreamError
from gateway.providers import relay
from tests.dialects_audit.conftest import RELAYED, post, responses_refused
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway

LONG = " ".join(f"word{i}" for i in range(40))  # longer than 16 output tokens


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if block.strip():
            lines = dict(line.split(": ", 1) for line in block.split("\n"))
            out.append((lines["event"], orjson.loads(lines["data"])))
    return out


@pytest.mark.parametrize("stream", [False, True])
def test_an_incomplete_response_is_a_reply(gateway: RunningGateway, stream: bool) -> None:
    ws, key = gateway.workspace("free")
    r = post(gateway, "/v1/responses", {"model": RELAYED, "input": LONG,
                                        "max_output_tokens": 16, "stream": stream}, key)
    assert r.status_code == 200, r.text
    if stream:
        kind, last = events(r.content)[-1]
        assert kind == "response.incomplete" and last["response"]["status"] == "incomplete"
    else:
        assert r.json()["status"] == "incomplete"
        assert r.headers["x-bookbag-credits-charged"] == "1"
    rows = gateway.wait_ledger(ws, 1)
    assert [(x["api"], x["credits"]) for x in rows] == [("responses", 1)]
    assert gateway.balance(key)["balance"] == 99


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_a_json_response_that_did_not_finish_is_a_provider_failure(status: str) -> None:
    """The relay reads a Response's status (the fake always answers `completed`, so the
    relay's reading of a reply is checked on its own)."""
    body = orjson.dumps({"object": "response", "id": "resp_1", "status": status,
                         "error": {"code": "server_error", "message": "it broke"},
                         "usage": None, "output": []})
    with pytest.raises(UpstreamError) as caught:
        relay._response_completion(body)
    assert status in caught.value.message
    ok = relay._response_completion(body.replace(status.encode(), b"incomplete", 1))
    assert ok.choices == 1


def test_previous_response_id_never_falls_back(gateway: RunningGateway,
                                              provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    first = post(gateway, "/v1/responses", {"model": "st-main", "input": "hi"}, key)
    assert first.status_code == 200
    provider.fail("status", status=500, model="up-st-main")
    stateful = post(gateway, "/v1/responses", {"model": "st-main", "input": "more",
                                               "previous_response_id": first.json()["id"]},
                    key)
    assert stateful.status_code == 502
    assert provider.count_model("up-st-cheap") == 0
    provider.fail("status", status=500, model="up-st-main")  # the same without state
    stateless = post(gateway, "/v1/responses", {"model": "st-main", "input": "more"}, key)
    assert stateless.status_code == 200 and stateless.headers["x-bookbag-model"] == "st-cheap"
    assert sorted((r["model"], r["credits"]) for r in gateway.wait_ledger(ws, 2)) == [
        ("st-cheap", 2), ("st-main", 5)]


@pytest.mark.parametrize("model", [RELAYED, "claude-haiku-4-5", "custom-llm"])
@pytest.mark.parametrize(("extra", "param"), [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "mcp", "server_label": "x", "server_url": "https://x.test"}]},
     "tools[0].type"),
    ({"tools": [{"type": "image_generation"}]}, "tools[0].type"),
    ({"tool_choice": {"type": "file_search"}}, "tool_choice.type"),
    ({"service_tier": "priority"}, "service_tier"),
    ({"service_tier": "flex"}, "service_tier"),
])
def test_billed_features_are_refused_on_every_responses_route(
        gateway: RunningGateway, provider: FakeProvider, model: str, extra: dict[str, Any],
        param: str) -> None:
    responses_refused(gateway, provider, model, extra, param)


def test_background_is_refused_with_the_callers_own_key_too(
        gateway: RunningGateway, provider: FakeProvider) -> None:
    _, key = gateway.workspace("free")
    provider.add_key("sk-own-audit-background", "openai")
    r = post(gateway, "/v1/responses", {"model": RELAYED, "input": "hi", "background": True},
             key, **{"x-bookbag-provider-key": "sk-own-audit-background"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "background"
    assert provider.count() == 0


def test_store_is_forced_off_on_a_relayed_stream(gateway: RunningGateway,
                                                provider: FakeProvider) -> None:
    _, key = gateway.workspace("free")
    r = post(gateway, "/v1/responses", {"model": RELAYED, "input": "hi", "store": True,
                                        "stream": True}, key)
    assert r.status_code == 200
    assert provider.received[-1].body["store"] is False
