"""The Anthropic SDK against the gateway: messages.create, messages.stream, a tool round
trip and count_tokens, on the Anthropic-backed model (relayed), an OpenAI model
(translated) and bookbag-local, each charged exactly as on chat (ledger and balance)."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from tests.fake_provider import ANTHROPIC_KEY, FakeProvider
from tests.harness import RunningGateway
from tests.messages.conftest import COST, HELLO, TOOLS, sdk

PROVIDER_MODELS = ("claude-haiku-4-5", "gpt-4o-mini")
UPSTREAM_PATH = {"claude-haiku-4-5": "/v1/messages", "gpt-4o-mini": "/v1/chat/completions"}


def charged(gateway: RunningGateway, ws: str, model: str, replies: int) -> list[dict[str, Any]]:
    """Every reply is in the ledger as a Messages reply at the chat price, and the balance
    moved by exactly that."""
    rows = gateway.ledger(ws)
    assert len(rows) == replies, rows
    assert {(r["api"], r["model"], r["credits"]) for r in rows} == {
        ("messages", model, COST[model])}
    return rows


@pytest.mark.parametrize("model", PROVIDER_MODELS)
def test_create_is_charged_as_chat(gateway: RunningGateway, provider: FakeProvider,
                                   model: str) -> None:
    ws, key = gateway.workspace("free")
    raw = sdk(gateway, key).messages.with_raw_response.create(
        model=model, max_tokens=100, messages=HELLO)
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.content[0].text.startswith("Hello from fake")
    assert message.content[0].text.endswith("hello there")
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert raw.headers["x-bookbag-credits-charged"] == str(COST[model])
    assert raw.headers["x-bookbag-credits-remaining"] == str(100 - COST[model])
    assert provider.received[-1].path == UPSTREAM_PATH[model]
    row = charged(gateway, ws, model, 1)[0]
    assert row["prompt_tokens"] and row["completion_tokens"]
    assert gateway.balance(key)["balance"] == 100 - COST[model]


def test_the_relay_sends_the_house_key_and_the_version(gateway: RunningGateway,
                                                      provider: FakeProvider) -> None:
    _, key = gateway.workspace("free")
    sdk(gateway, key).messages.create(model="claude-haiku-4-5", max_tokens=50, messages=HELLO)
    sent = provider.received[-1]
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert key not in str(sent.headers)
    assert sent.body["model"] == "claude-haiku-4-5-20251001"  # the upstream name


@pytest.mark.parametrize("model", PROVIDER_MODELS)
def test_stream_is_charged_once_with_the_providers_usage(
        gateway: RunningGateway, provider: FakeProvider, model: str) -> None:
    ws, key = gateway.workspace("free")
    with sdk(gateway, key).messages.stream(model=model, max_tokens=100,
                                           messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.startswith("Hello from fake") and text.endswith("hello there")
    assert final.content[0].type == "text" and final.content[0].text == text
    assert final.usage.output_tokens > 0
    row = charged(gateway, ws, model, 1)[0]
    assert row["completion_tokens"] == final.usage.output_tokens
    assert gateway.balance(key)["balance"] == 100 - COST[model]


@pytest.mark.parametrize("model", PROVIDER_MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_round_trip(gateway: RunningGateway, provider: FakeProvider, model: str,
                           stream: bool) -> None:
    ws, key = gateway.workspace("free")
    client = sdk(gateway, key)
    turns: list[Any] = list(HELLO)

    def ask() -> anthropic.types.Message:
        if not stream:
            return client.messages.create(model=model, max_tokens=200, messages=turns,
                                          tools=TOOLS)
        with client.messages.stream(model=model, max_tokens=200, messages=turns,
                                    tools=TOOLS) as s:
            return s.get_final_message()

    first = ask()
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "lookup" and call.input == {"input": "hello there"}
    turns += [{"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                                for b in first.content]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                            "content": "42"}]}]
    second = ask()
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text"
    charged(gateway, ws, model, 2)
    assert gateway.balance(key)["balance"] == 100 - 2 * COST[model]


def test_bookbag_local_answers_text_and_refuses_tools(gateway: RunningGateway) -> None:
    ws, key = gateway.workspace("free")
    client = sdk(gateway, key)
    context: list[Any] = [{"role": "user", "content": "The sky is blue. Grass is green. "
                                                      "What colour is the sky?"}]
    message = client.messages.create(model="bookbag-local", max_tokens=50, messages=context)
    assert "sky is blue" in message.content[0].text  # type: ignore[union-attr]
    with client.messages.stream(model="bookbag-local", max_tokens=50,
                                messages=context) as s:
        assert "sky is blue" in "".join(s.text_stream)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="bookbag-local", max_tokens=50, messages=context,
                               tools=TOOLS)
    assert info.value.body == {"type": "error", "error": {
        "type": "invalid_request_error", "message": info.value.body["error"]["message"]}}
    assert "tools" in info.value.body["error"]["message"]
    rows = gateway.ledger(ws)
    assert [(r["api"], r["credits"], r["billing_mode"]) for r in rows] == [
        ("messages", 0, "local")] * 2


@pytest.mark.parametrize("model", [*PROVIDER_MODELS, "bookbag-local"])
def test_count_tokens_is_free_and_not_a_reply(gateway: RunningGateway, provider: FakeProvider,
                                              model: str) -> None:
    ws, key = gateway.workspace("free")
    client = sdk(gateway, key)
    counted = client.messages.count_tokens(model=model, messages=HELLO, system="Be brief.",
                                           tools=TOOLS)
    assert counted.input_tokens > 0
    if model == "claude-haiku-4-5":  # asked of the provider: what /v1/messages reports
        assert provider.received[-1].path == "/v1/messages/count_tokens"
        reply = client.messages.create(model=model, max_tokens=20, messages=HELLO,
                                       system="Be brief.", tools=TOOLS, tool_choice={
                                           "type": "none"})
        assert counted.input_tokens == reply.usage.input_tokens
        assert len(gateway.ledger(ws)) == 1  # the reply's; count_tokens wrote none
    else:  # estimated here: nothing reached a provider
        assert provider.count("/v1/messages/count_tokens") == 0
        assert gateway.ledger(ws) == []
        assert gateway.balance(key)["balance"] == 100


def test_a_chat_request_to_claude_goes_through_the_native_translation(
        gateway: RunningGateway, provider: FakeProvider) -> None:
    import openai

    ws, key = gateway.workspace("free")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    reply = client.chat.completions.create(model="claude-haiku-4-5", messages=HELLO,
                                           max_tokens=30)
    assert reply.choices[0].message.content and reply.usage is not None
    sent = provider.received[-1]
    assert sent.path == "/v1/messages" and sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.body["max_tokens"] == 30
    chunks = list(client.chat.completions.create(
        model="claude-haiku-4-5", messages=HELLO, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    rows = gateway.ledger(ws)
    assert [(r["api"], r["credits"]) for r in rows] == [("chat", 2)] * 2
