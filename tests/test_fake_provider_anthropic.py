"""The fake provider's Anthropic side against the installed anthropic SDK: every reply and
stream event of `/v1/messages` parses as the SDK's own types, and
`/v1/messages/count_tokens` checks what the real counter checks."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import anthropic
import pytest
from anthropic.types import ErrorResponse, Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from tests.fake_provider import ANTHROPIC_KEY, FakeProvider

pytest_plugins = ("tests.fakes.fixtures",)  # the fake as `server` and `provider` fixtures

EVENT = TypeAdapter(RawMessageStreamEvent)
HEADERS = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}
USER = [{"role": "user", "content": "What is the capital of France?"}]
TOOLS = [{"name": "lookup", "description": "Look it up",
          "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}]
THINKING = {"type": "enabled", "budget_tokens": 1024}


@pytest.fixture
def client(provider: FakeProvider) -> Iterator[anthropic.Anthropic]:
    """The installed SDK sends `api_key` as a Bearer token; the fake holds to the documented
    `x-api-key` (as litellm and the gateway's relay send it), so the key goes in that header."""
    with anthropic.Anthropic(base_url=provider.anthropic_base, api_key=None, max_retries=0,
                             default_headers={"x-api-key": ANTHROPIC_KEY}) as c:
        yield c


def post(provider: FakeProvider, path: str, body: Any,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    hdrs = {"content-type": "application/json", **(HEADERS if headers is None else headers)}
    req = urllib.request.Request(provider.anthropic_base + path, data=json.dumps(body).encode(),
                                 headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def events(provider: FakeProvider, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The data of every event of a streamed reply, validated as the SDK's types (`ping`,
    which the SDK skips by name, is not in its union and is checked by shape)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session, \
            session.post(provider.anthropic_base + "/v1/messages", headers=HEADERS,
                         json={**body, "stream": True}) as resp:
        raw = await resp.read()
    out = []
    for block in raw.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        if not fields:
            continue
        data = json.loads(fields["data"])
        assert fields["event"] == data["type"]
        if data["type"] == "ping":
            assert data == {"type": "ping"}
        elif data["type"] == "error":
            ErrorResponse.model_validate(data)
        else:
            EVENT.validate_python(data)
        out.append(data)
    return out


@pytest.mark.parametrize("extra", [
    {}, {"tools": TOOLS}, {"thinking": THINKING, "max_tokens": 2048},
    {"thinking": THINKING, "max_tokens": 2048, "tools": TOOLS},
])
async def test_every_reply_and_event_is_an_sdk_type(provider: FakeProvider,
                                                    extra: dict[str, Any]) -> None:
    body = {"model": "claude-x", "max_tokens": 100, "messages": USER, **extra}
    status, reply = post(provider, "/v1/messages", body)
    assert status == 200
    message = Message.model_validate(reply)
    streamed = await events(provider, body)
    kinds = [e["type"] for e in streamed]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    delta = next(e for e in streamed if e["type"] == "message_delta")
    assert delta["delta"]["stop_reason"] == message.stop_reason
    assert delta["usage"]["output_tokens"] == message.usage.output_tokens
    starts = [e["content_block"]["type"] for e in streamed if e["type"] == "content_block_start"]
    assert starts == [b.type for b in message.content]


def test_sdk_create_and_stream_accumulate(client: anthropic.Anthropic) -> None:
    reply = client.messages.create(model="claude-x", max_tokens=100, messages=USER,  # type: ignore[arg-type]
                                   tools=TOOLS)  # type: ignore[arg-type]
    assert reply.stop_reason == "tool_use"
    with client.messages.stream(model="claude-x", max_tokens=100, messages=USER,  # type: ignore[arg-type]
                                tools=TOOLS) as stream:  # type: ignore[arg-type]
        final = stream.get_final_message()
    tool = final.content[0]
    assert tool.type == "tool_use"
    assert tool.input == {"input": "What is the capital of France?"}


async def test_inband_error_event_is_the_sdk_error_shape(provider: FakeProvider) -> None:
    provider.fail("inband_error", after=1, path="/v1/messages")
    streamed = await events(provider, {"model": "claude-x", "max_tokens": 100, "messages": USER})
    assert streamed[-1]["error"]["type"] == "overloaded_error"


def test_count_tokens_matches_the_messages_usage(provider: FakeProvider,
                                                 client: anthropic.Anthropic) -> None:
    body = {"model": "claude-x", "system": "Be brief.", "messages": USER, "tools": TOOLS}
    counted = client.messages.count_tokens(**body)  # type: ignore[arg-type]
    reply = client.messages.create(max_tokens=100, **body)  # type: ignore[arg-type]
    assert counted.input_tokens == reply.usage.input_tokens == 8
    status, raw = post(provider, "/v1/messages/count_tokens", body)
    assert (status, raw) == (200, {"input_tokens": 8})
    assert provider.count("/v1/messages/count_tokens") == 2
    assert provider.count("/v1/messages") == 1


@pytest.mark.parametrize(("patch", "message"), [
    ({"max_tokens": 10}, "max_tokens: Extra inputs are not permitted"),
    ({"stream": True}, "stream: Extra inputs are not permitted"),
    ({"temperature": 0.5}, "temperature: Extra inputs are not permitted"),
    ({"messages": []}, "messages: at least one message is required"),
    ({"messages": [{"role": "system", "content": "x"}]}, 'Unexpected role "system"'),
    ({"model": None}, "model: Input should be a valid string"),
    ({"tool_choice": {"type": "sometimes"}}, "tool_choice: Input tag 'sometimes'"),
    ({"thinking": {"type": "enabled", "budget_tokens": 10}}, "greater than or equal to 1024"),
])
def test_count_tokens_validation(provider: FakeProvider, patch: dict[str, Any],
                                 message: str) -> None:
    status, reply = post(provider, "/v1/messages/count_tokens",
                         {"model": "claude-x", "messages": USER, **patch})
    assert status == 400
    ErrorResponse.model_validate(reply)
    assert reply["error"]["type"] == "invalid_request_error"
    assert message in reply["error"]["message"]


def test_count_tokens_needs_its_headers_and_keeps_failure_knobs(provider: FakeProvider) -> None:
    body = {"model": "claude-x", "messages": USER}
    # thinking without max_tokens is fine when counting (nothing to compare the budget with)
    assert post(provider, "/v1/messages/count_tokens", {**body, "thinking": THINKING})[0] == 200
    status, reply = post(provider, "/v1/messages/count_tokens", body, {"x-api-key": "nope",
                                                                      "anthropic-version": "1"})
    assert (status, reply["error"]["type"]) == (401, "authentication_error")
    status, reply = post(provider, "/v1/messages/count_tokens", body,
                         {"x-api-key": ANTHROPIC_KEY})
    assert (status, reply["error"]["type"]) == (400, "invalid_request_error")
    provider.fail("status", status=529, path="/v1/messages/count_tokens")
    status, reply = post(provider, "/v1/messages/count_tokens", body)
    assert (status, reply["error"]["type"]) == (529, "overloaded_error")
    assert post(provider, "/v1/messages/count_tokens", body)[0] == 200
