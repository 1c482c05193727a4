"""The OpenAI API as agents use it: the official SDK against the running gateway.

Sync, async, streaming (with and without usage), tool calls, `n`, aliases,
the model list, embeddings, the preview, the Anthropic route through litellm,
the response headers and attribution.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests import harness
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway, running, sqlite_settings

CHAT = "/v1/chat/completions"
HELLO: list[Any] = [{"role": "user", "content": "hello there"}]
TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "lookup", "description": "Look something up",
    "parameters": {"type": "object", "properties": {"input": {"type": "string"}}},
}}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, fake: FakeProvider) -> Iterator[RunningGateway]:
    """One gateway for the module: every test works in its own workspace."""
    tmp = tmp_path_factory.mktemp("chat-api")
    pricing = tmp / "pricing.toml"
    pricing.write_text(harness.test_pricing(fake))
    with running(sqlite_settings(tmp, pricing)) as gw:
        yield gw


def sdk(gateway: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


def only_row(gateway: RunningGateway, ws: str) -> dict[str, Any]:
    """The one ledger entry, read at once: a charge is durable before the reply ends."""
    rows = gateway.ledger(ws)
    assert len(rows) == 1, rows
    return rows[0]


# ---- the SDK: sync, async, streams

def test_sync_completion_is_charged_with_its_headers(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    ws, key = gateway.workspace("free")
    raw = sdk(gateway, key).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=HELLO, extra_headers={"X-Request-Id": "my-own-id-42"}
    )
    reply = raw.parse()
    assert reply.choices[0].message.content == "Hello from fake gpt-4o: hello there"
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    request_id = raw.headers["x-request-id"]
    assert request_id.startswith("req_") and request_id != "my-own-id-42"
    assert raw.headers["x-client-request-id"] == "my-own-id-42"
    assert raw.headers["x-bookbag-credits-charged"] == "5"
    assert raw.headers["x-bookbag-credits-remaining"] == "95"
    assert "x-bookbag-credits-reserved" not in raw.headers
    row = only_row(gateway, ws)
    assert row["request_id"] == request_id
    assert (row["credits"], row["billing_mode"], row["model"], row["provider"]) == (
        5, "metered", "gpt-4o", "openai")
    assert row["replies"] == 1
    assert row["prompt_tokens"] == 2 and row["completion_tokens"] == reply.usage.completion_tokens
    assert provider.count(CHAT) == 1
    balance = gateway.balance(key)
    assert (balance["balance"], balance["reserved"]) == (95, 0)


def test_async_client_completions(gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")

    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
        async with client:
            replies = await asyncio.gather(*(
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"q{i}"}])
                for i in range(5)
            ))
        return sorted(r.choices[0].message.content or "" for r in replies)

    assert asyncio.run(main()) == [f"Hello from fake gpt-4o-mini: q{i}" for i in range(5)]
    assert len(gateway.wait_ledger(ws, 5)) == 5
    assert provider.count(CHAT) == 5
    assert gateway.balance(key)["balance"] == 95


def test_stream_without_usage_has_no_usage_chunk(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    ws, key = gateway.workspace("free")
    with sdk(gateway, key).chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=HELLO, stream=True
    ) as response:
        assert response.headers["x-bookbag-credits-reserved"] == "1"
        assert response.headers["x-request-id"].startswith("req_")
        assert "x-bookbag-credits-charged" not in response.headers
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from fake gpt-4o-mini: hello there"
    assert all(c.choices for c in chunks), "a usage chunk the client did not ask for"
    assert all(c.usage is None for c in chunks)
    # The gateway asks the upstream for usage anyway, to record tokens.
    assert provider.received[-1].body["stream_options"] == {"include_usage": True}
    row = only_row(gateway, ws)
    assert row["credits"] == 1 and row["completion_tokens"] is not None
    assert gateway.balance(key)["balance"] == 99


def test_stream_with_usage_ends_with_credits(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    ws, key = gateway.workspace("free")
    stream = sdk(gateway, key).chat.completions.create(
        model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.model_extra or {})["credits"] == 5
    assert sum(1 for c in chunks if not c.choices) == 1
    assert only_row(gateway, ws)["credits"] == 5
    assert gateway.balance(key)["balance"] == 95
    assert provider.count(CHAT) == 1


def test_stream_ends_with_done_after_the_charge(gateway: RunningGateway) -> None:
    ws, key = gateway.workspace("free")
    with gateway.client(key) as c, c.stream(
        "POST", CHAT, json={"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    # Durable before [DONE]: the entry is there as soon as the stream is read.
    assert len(gateway.ledger(ws)) == 1


# ---- what counts as a reply

def test_tool_call_only_reply_is_charged(gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    client = sdk(gateway, key)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, tools=TOOLS)
    message = reply.choices[0].message
    assert message.content is None and message.tool_calls
    assert message.tool_calls[0].function.name == "lookup"  # type: ignore[union-attr]  # function tool
    assert reply.choices[0].finish_reason == "tool_calls"
    assert provider.received[-1].body["tools"] == TOOLS
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, tools=TOOLS,
                                            stream=True)
    args = "".join(
        c.choices[0].delta.tool_calls[0].function.arguments or ""  # type: ignore[union-attr]
        for c in stream if c.choices and c.choices[0].delta.tool_calls
    )
    assert json.loads(args) == {"input": "hello there"}
    rows = gateway.wait_ledger(ws, 2)
    assert [r["credits"] for r in rows] == [1, 1]
    assert gateway.balance(key)["balance"] == 98


def test_n_choices_are_n_replies(gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    raw = sdk(gateway, key).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=HELLO, n=3)
    assert len(raw.parse().choices) == 3
    assert raw.headers["x-bookbag-credits-charged"] == "15"
    assert provider.received[-1].body["n"] == 3
    row = only_row(gateway, ws)
    assert (row["credits"], row["replies"]) == (15, 3)
    with sdk(gateway, key).chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=HELLO, n=3, stream=True
    ) as response:
        assert response.headers["x-bookbag-credits-reserved"] == "3"
        indexes = {ch.index for c in response.parse() for ch in c.choices}
    assert indexes == {0, 1, 2}
    assert gateway.balance(key)["balance"] == 100 - 15 - 3


def test_alias_resolves_and_ledger_stores_the_canonical_id(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    ws, key = gateway.workspace("free")
    client = sdk(gateway, key)
    client.chat.completions.create(model="GPT-4o mini", messages=HELLO)
    client.chat.completions.create(model="gpt-4o-mini-2024-07-18", messages=HELLO)
    assert [r.body["model"] for r in provider.received] == ["gpt-4o-mini", "gpt-4o-mini"]
    rows = gateway.wait_ledger(ws, 2)
    assert [r["model"] for r in rows] == ["gpt-4o-mini", "gpt-4o-mini"]


def test_upstream_name_is_sent_and_canonical_id_recorded(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    ws, key = gateway.workspace("free")
    reply = sdk(gateway, key).chat.completions.create(
        model="Claude Haiku 4.5", messages=HELLO, max_tokens=50)
    assert reply.choices[0].message.content
    assert provider.received[-1].path == "/v1/messages"
    assert provider.received[-1].body["model"] == "claude-haiku-4-5-20251001"
    assert only_row(gateway, ws)["model"] == "claude-haiku-4-5"


# ---- models

def test_models_list_and_retrieve(gateway: RunningGateway, provider: FakeProvider) -> None:
    _, key = gateway.workspace("free")
    client = sdk(gateway, key)
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"bookbag-local", "gpt-4o-mini", "gpt-4o", "claude-haiku-4-5",
                           "custom-llm", "text-embedding-3-small"}
    mini = models["gpt-4o-mini"].model_extra or {}
    assert mini["credits_per_reply"] == 1 and mini["metered"] is True
    assert mini["aliases"] == ["GPT-4o mini", "gpt-4o-mini-2024-07-18"]
    local = models["bookbag-local"].model_extra or {}
    assert local["credits_per_reply"] == 1 and local["metered"] is False
    assert (models["text-embedding-3-small"].model_extra or {})["credits_per_reply"] == 0
    got = client.models.retrieve("Claude Haiku 4.5")
    assert got.id == "claude-haiku-4-5"
    assert (got.model_extra or {})["credits_per_reply"] == 2
    assert client.models.retrieve("gpt-4o").owned_by == "openai"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.code == "model_not_found"
    assert provider.count() == 0


# ---- free routes

def test_embeddings_are_never_charged(gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("enterprise", custom_allotment=0)
    result = sdk(gateway, key).embeddings.create(model="text-embedding-3-small",
                                                 input=["one", "two"])
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0
    assert provider.count("/v1/embeddings") == 1
    assert gateway.ledger(ws) == []
    balance = gateway.balance(key)
    assert (balance["balance"], balance["reserved"]) == (0, 0)


def preview(gateway: RunningGateway, key: str, body: dict[str, Any]) -> dict[str, Any]:
    with gateway.client(key) as c:
        r = c.post("/v1/chat/completions/preview", json=body)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def test_preview_calls_nothing_and_charges_nothing(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    ws, key = gateway.workspace("enterprise", custom_allotment=15)
    body = {"model": "gpt-4o", "messages": HELLO, "n": 3}
    got = preview(gateway, key, body)
    assert got["model"] == "gpt-4o" and got["billing_mode"] == "metered"
    assert (got["credits_per_reply"], got["credits_if_sent"], got["balance"]) == (5, 15, 15)
    assert got["would_be_refused"] is False  # exactly the balance: allowed
    assert preview(gateway, key, {**body, "n": 4})["would_be_refused"] is True
    alias = preview(gateway, key, {"model": "GPT-4o mini", "messages": HELLO})
    assert (alias["model"], alias["credits_if_sent"]) == ("gpt-4o-mini", 1)
    local = preview(gateway, key, {"model": "bookbag-local", "messages": HELLO})
    assert (local["billing_mode"], local["credits_if_sent"], local["would_be_refused"]) == (
        "local", 0, False)
    assert provider.count() == 0
    assert gateway.ledger(ws) == []
    balance = gateway.balance(key)
    assert (balance["balance"], balance["reserved"]) == (15, 0)


def test_preview_at_zero_balance(gateway: RunningGateway, provider: FakeProvider) -> None:
    _, key = gateway.workspace("enterprise", custom_allotment=1)
    body = {"model": "gpt-4o-mini", "messages": HELLO}
    assert preview(gateway, key, body)["would_be_refused"] is False
    sdk(gateway, key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    got = preview(gateway, key, body)
    assert (got["balance"], got["would_be_refused"]) == (0, True)
    with gateway.client(key) as c:
        assert c.post(CHAT, json=body).status_code == 402
    assert provider.count(CHAT) == 1


def test_preview_refuses_what_a_completion_refuses(gateway: RunningGateway) -> None:
    _, key = gateway.workspace("free")
    with gateway.client(key) as c:
        r = c.post("/v1/chat/completions/preview", json={"model": "nope", "messages": HELLO})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_found"


# ---- the Anthropic route through litellm

def test_anthropic_json_and_stream_are_charged_two(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    ws, key = gateway.workspace("free")
    client = sdk(gateway, key)
    raw = client.chat.completions.with_raw_response.create(
        model="claude-haiku-4-5", messages=HELLO, max_tokens=100)
    reply = raw.parse()
    assert reply.choices[0].message.content
    assert raw.headers["x-bookbag-credits-charged"] == "2"
    assert raw.headers["x-bookbag-credits-remaining"] == "98"
    sent = provider.received[-1]
    assert sent.path == "/v1/messages" and sent.body["max_tokens"] == 100
    assert sent.headers["x-api-key"] and sent.headers["anthropic-version"]
    chunks = list(client.chat.completions.create(
        model="claude-haiku-4-5", messages=HELLO, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    assert chunks[-1].usage is not None and (chunks[-1].usage.model_extra or {})["credits"] == 2
    rows = gateway.wait_ledger(ws, 2)
    assert [(r["credits"], r["provider"], r["model"]) for r in rows] == [
        (2, "anthropic", "claude-haiku-4-5")] * 2
    assert provider.count("/v1/messages") == 2
    assert gateway.balance(key)["balance"] == 96


def test_anthropic_tool_call_is_charged(gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    reply = sdk(gateway, key).chat.completions.create(
        model="claude-haiku-4-5", messages=HELLO, tools=TOOLS, tool_choice="required",
        max_tokens=100)
    assert reply.choices[0].message.tool_calls
    assert only_row(gateway, ws)["credits"] == 2


# ---- attribution

def test_headers_win_over_metadata_and_metadata_is_not_forwarded(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    ws, key = gateway.workspace("free")
    client = sdk(gateway, key)
    client.chat.completions.create(
        model="gpt-4o-mini", messages=HELLO,
        metadata={"agent_id": "meta-agent", "conversation_id": "meta-conv", "team": "blue"},
        extra_headers={"X-Bookbag-Agent-Id": "header-agent"},
    )
    assert provider.received[-1].body["metadata"] == {"team": "blue"}
    client.chat.completions.create(
        model="gpt-4o-mini", messages=HELLO,
        metadata={"agent_id": "meta-agent", "conversation_id": "c.2_x-y"},
    )
    assert "metadata" not in provider.received[-1].body
    client.chat.completions.create(
        model="claude-haiku-4-5", messages=HELLO, max_tokens=20,
        metadata={"agent_id": "claude-agent"},
    )
    assert "agent_id" not in json.dumps(provider.received[-1].body)
    rows = gateway.wait_ledger(ws, 3)
    assert [(r["agent_id"], r["conversation_id"]) for r in rows] == [
        ("header-agent", "meta-conv"), ("meta-agent", "c.2_x-y"), ("claude-agent", None)]


def test_key_bound_to_an_agent(gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, _ = gateway.workspace("free")
    key = gateway.key(ws, agent_id="agent-a")
    with gateway.client(key) as c:
        ok = c.post(CHAT, json={"model": "gpt-4o-mini", "messages": HELLO},
                    headers={"X-Bookbag-Conversation-Id": "conv-1"})
        assert ok.status_code == 200
        same = c.post(CHAT, json={"model": "gpt-4o-mini", "messages": HELLO},
                      headers={"X-Bookbag-Agent-Id": "agent-a"})
        assert same.status_code == 200
        by_header = c.post(CHAT, json={"model": "gpt-4o-mini", "messages": HELLO},
                           headers={"X-Bookbag-Agent-Id": "agent-b"})
        by_metadata = c.post(CHAT, json={"model": "gpt-4o-mini", "messages": HELLO,
                                         "metadata": {"agent_id": "agent-b"}})
        for r in (by_header, by_metadata):
            assert r.status_code == 403, r.text
            assert r.json()["error"]["code"] == "agent_mismatch"
    rows = gateway.wait_ledger(ws, 2)
    assert [(r["agent_id"], r["conversation_id"]) for r in rows] == [
        ("agent-a", "conv-1"), ("agent-a", None)]
    assert provider.count(CHAT) == 2
    assert gateway.balance(key)["balance"] == 98


@pytest.mark.parametrize(("headers", "metadata", "param"), [
    ({"X-Bookbag-Agent-Id": "has space"}, None, "X-Bookbag-Agent-Id"),
    ({"X-Bookbag-Conversation-Id": "x" * 129}, None, "X-Bookbag-Conversation-Id"),
    ({"X-Bookbag-Agent-Id": ""}, None, "X-Bookbag-Agent-Id"),
    ({}, {"agent_id": "a/b"}, "metadata.agent_id"),
    ({}, {"agent_id": 7}, "metadata.agent_id"),
    ({}, {"conversation_id": "é"}, "metadata.conversation_id"),
])
def test_invalid_attribution_ids_are_refused(
    gateway: RunningGateway, provider: FakeProvider, headers: dict[str, str],
    metadata: dict[str, Any] | None, param: str,
) -> None:
    ws, key = gateway.workspace("free")
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": HELLO}
    if metadata is not None:
        body["metadata"] = metadata
    with gateway.client(key) as c:
        r = c.post(CHAT, json=body, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert r.json()["error"]["code"] == "invalid_request"
    assert provider.count() == 0
    assert gateway.ledger(ws) == []


def test_sdk_surfaces_gateway_errors(gateway: RunningGateway, provider: FakeProvider) -> None:
    _, key = gateway.workspace("enterprise", custom_allotment=0)
    client = sdk(gateway, key)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert info.value.status_code == 402
    assert info.value.code == "insufficient_credits"
    assert info.value.type == "insufficient_quota"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert bad.value.code == "model_not_found"
    assert provider.count() == 0


def test_local_model_answers_through_the_sdk(gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    messages: list[Any] = [
        {"role": "system", "content": "Paris is the capital of France. Bread is baked daily."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    client = sdk(gateway, key)
    raw = client.chat.completions.with_raw_response.create(model="Bookbag Local", messages=messages)
    assert "Paris" in (raw.parse().choices[0].message.content or "")
    assert raw.headers["x-bookbag-credits-charged"] == "0"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="bookbag-local", messages=messages, stream=True) if c.choices)
    assert streamed == raw.parse().choices[0].message.content
    rows = gateway.wait_ledger(ws, 2)
    assert [(r["credits"], r["billing_mode"], r["model"]) for r in rows] == [
        (0, "local", "bookbag-local")] * 2
    assert provider.count() == 0
    assert gateway.balance(key)["balance"] == 100

