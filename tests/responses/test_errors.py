"""Bad input on /v1/responses gets OpenAI's error shape with a 4xx, never a 5xx, and is
never charged; on a translated route a parameter the translation cannot carry is refused
(400 unsupported_parameter), never dropped."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway
from tests.responses.conftest import RELAYED

TRANSLATED = ("claude-haiku-4-5", "custom-llm", "bookbag-local")
BAD: list[tuple[Any, int, str | None]] = [
    ({"input": "hi"}, 400, "model"),
    ({"model": RELAYED}, 400, "input"),
    ({"model": RELAYED, "input": {"text": "hi"}}, 400, "input"),
    ({"model": RELAYED, "input": [{"role": "robot", "content": "hi"}]}, 400, "input[0].role"),
    ({"model": RELAYED, "input": [{"type": "function_call_output", "output": "x"}]}, 400,
     "input[0].call_id"),
    ({"model": RELAYED, "input": "hi", "max_output_tokens": 3}, 400, "max_output_tokens"),
    ({"model": RELAYED, "input": "hi", "background": True}, 400, "background"),
    ({"model": RELAYED, "input": "hi", "tools": [{"type": "function"}]}, 400, "tools[0].name"),
    ({"model": RELAYED, "input": "hi", "metadata": {"agent_id": "no spaces"}}, 400,
     "metadata.agent_id"),
    ({"model": "no-such-model", "input": "hi"}, 400, "model"),
    ({"model": "text-embedding-3-small", "input": "hi"}, 400, "model"),
    ({"model": RELAYED, "input": "hi", "stream": "yes"}, 400, "stream"),
    ([1, 2, 3], 400, None),
]


def post(gateway: RunningGateway, key: str, body: Any) -> httpx.Response:
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        return c.post("/v1/responses", json=body, headers={"authorization": f"Bearer {key}"})


def openai_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(("body", "status", "param"), BAD)
def test_bad_input_gets_openais_shape(gateway: RunningGateway, provider: FakeProvider,
                                      body: Any, status: int, param: str | None) -> None:
    ws, key = gateway.workspace("free")
    error = openai_error(post(gateway, key, body), status)
    assert error["param"] == param
    assert provider.count() == 0 and gateway.ledger(ws) == []


def test_not_json_and_no_key(gateway: RunningGateway) -> None:
    _, key = gateway.workspace("free")
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        broken = c.post("/v1/responses", content=b"{not json",
                        headers={"authorization": f"Bearer {key}"})
        anonymous = c.post("/v1/responses", json={"model": RELAYED, "input": "hi"})
    openai_error(broken, 400)
    assert openai_error(anonymous, 401)["type"]


@pytest.mark.parametrize("model", TRANSLATED)
@pytest.mark.parametrize(("extra", "param"), [
    ({"some_new_field": 1}, "some_new_field"),
    ({"include": ["reasoning.encrypted_content"]}, "include"),
    ({"truncation": "auto"}, "truncation"),
    ({"reasoning": {"summary": "auto"}}, "reasoning.summary"),
    ({"text": {"verbosity": "low"}}, "text.verbosity"),
    ({"tools": [{"type": "custom", "name": "grammar"}]}, "tools[0].type"),
    ({"input": [{"role": "user", "content": [
        {"type": "input_file", "file_id": "file_1"}]}]}, "input[0].content[0]"),
])
def test_a_translated_route_refuses_what_it_cannot_carry(
        gateway: RunningGateway, provider: FakeProvider, model: str, extra: dict[str, Any],
        param: str) -> None:
    ws, key = gateway.workspace("free")
    error = openai_error(post(gateway, key, {"model": model, "input": "hi", **extra}), 400)
    assert error["param"] == param
    assert error["code"] == "unsupported_parameter"
    assert provider.count() == 0 and gateway.ledger(ws) == []


@pytest.mark.parametrize("model", TRANSLATED)
def test_neutral_values_are_accepted_on_a_translated_route(
        gateway: RunningGateway, model: str) -> None:
    _, key = gateway.workspace("free")
    r = post(gateway, key, {"model": model, "input": "hi", "truncation": "disabled",
                            "include": [], "background": False, "store": False,
                            "stream": True, "stream_options": {"include_obfuscation": False}})
    assert r.status_code == 200, r.text


def test_the_relayed_route_passes_the_providers_400_on(gateway: RunningGateway,
                                                      provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    error = openai_error(post(gateway, key, {"model": RELAYED, "input": "hi",
                                             "some_new_field": 1}), 400)
    assert provider.received[-1].path == "/v1/responses"  # OpenAI judges its own parameters
    assert error["message"]
    assert gateway.ledger(ws) == []
