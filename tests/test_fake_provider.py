"""Tests of the fake provider itself: wire formats, strictness, failure modes, counting."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

pytest_plugins = ("tests.fakes.fixtures",)  # the fake as `server` and `provider` fixtures

try:
    from tests.fake_provider import ANTHROPIC_KEY, OPENAI_KEY, FakeProvider, embedding_vector
except ModuleNotFoundError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from fake_provider import (  # type: ignore[no-redef]
        ANTHROPIC_KEY,
        OPENAI_KEY,
        FakeProvider,
        embedding_vector,
    )

USER = [{"role": "user", "content": "What is the capital of France?"}]
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
]
AN_HEADERS = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}


@pytest.fixture
def client(provider: FakeProvider) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=provider.openai_base, api_key=OPENAI_KEY, max_retries=0) as c:
        yield c


def post(url: str, body: Any, headers: dict[str, str] | None = None,
         timeout: float = 5) -> tuple[int, dict[str, str], Any]:
    """A raw JSON POST; returns (status, lower-cased headers, parsed body)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"content-type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, headers=hdrs, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw, rh = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as err:
        status, raw, rh = err.code, err.read(), err.headers
    return status, {k.lower(): v for k, v in rh.items()}, json.loads(raw) if raw else None


def oa_post(provider: FakeProvider, body: Any, key: str = OPENAI_KEY,
            path: str = "/chat/completions") -> tuple[int, dict[str, str], Any]:
    return post(provider.openai_base + path, body, {"authorization": f"Bearer {key}"})


def an_post(provider: FakeProvider, body: Any,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    return post(provider.anthropic_base + "/v1/messages", body,
                AN_HEADERS if headers is None else headers)


async def read_stream(url: str, body: Any, headers: dict[str, str],
                      total: float = 5) -> tuple[int, bytes, BaseException | None]:
    """POST and read the whole body, keeping what arrived before a broken connection."""
    status, data, error = 0, b"", None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=total)) as session:
        try:
            async with session.post(url, json=body, headers=headers) as resp:
                status = resp.status
                async for piece in resp.content.iter_any():
                    data += piece
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = exc
    return status, data, error


def data_lines(raw: bytes) -> list[str]:
    return [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]


def an_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in raw.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


# ------------------------------------------------------------------- OpenAI


def test_chat_json_reply_usage_and_recording(provider: FakeProvider, client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=USER, seed=1, user="u1")
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == "gpt-4o-mini"
    assert reply.system_fingerprint
    assert reply.choices[0].message.content == (
        "Hello from fake gpt-4o-mini: What is the capital of France?"
    )
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (6, 10)
    assert reply.usage.total_tokens == 16
    assert provider.count() == provider.count("/v1/chat/completions") == 1
    seen = provider.received[0]
    assert seen.api_key == OPENAI_KEY
    assert seen.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert seen.body["user"] == "u1"


def test_chat_reply_truncates_last_user_message(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x" * 500},
                {"role": "assistant", "content": "ok"}]
    reply = client.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "Hello from fake m: " + "x" * 200


def test_chat_stream_n2_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o", messages=USER, n=2, stream=True, stream_options={"include_usage": True}
    )
    text = {0: "", 1: ""}
    chunks = list(stream)
    for chunk in chunks[:-1]:
        assert chunk.object == "chat.completion.chunk"
        assert chunk.usage is None
        for choice in chunk.choices:
            text[choice.index] += choice.delta.content or ""
    assert set(text.values()) == {"Hello from fake gpt-4o: What is the capital of France?"}
    first = chunks[0].choices[0]
    assert (first.delta.role, first.delta.content) == ("assistant", "")
    assert [c.choices[0].finish_reason for c in chunks[-3:-1]] == ["stop", "stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 20


def test_stream_without_usage_has_no_usage_field(provider: FakeProvider) -> None:
    body = {"model": "m", "messages": USER, "stream": True}
    status, raw, error = asyncio.run(read_stream(
        provider.openai_base + "/chat/completions", body, {"authorization": f"Bearer {OPENAI_KEY}"}
    ))
    assert (status, error) == (200, None)
    lines = data_lines(raw)
    assert lines[-1] == "[DONE]"
    assert all("usage" not in json.loads(line) for line in lines[:-1])


def test_stream_bytes_are_split_at_arbitrary_boundaries(provider: FakeProvider) -> None:
    body = json.dumps({"model": "m", "messages": USER, "stream": True}).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {OPENAI_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", provider.port), timeout=5) as sock:
        sock.sendall(request)
        raw = b""
        while piece := sock.recv(65536):
            raw += piece
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    sizes = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        sizes.append(size)
        rest = rest[size + 2:]
    assert max(sizes) <= 40
    assert len(sizes) > 20  # far more pieces than events
    assert len(set(sizes)) > 5  # not a fixed size


def test_tool_call_json_and_stream(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="m", messages=USER, tools=TOOLS)  # type: ignore[arg-type]
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)  # type: ignore[union-attr]

    stream = client.chat.completions.create(
        model="m", messages=USER, tools=TOOLS, stream=True  # type: ignore[arg-type]
    )
    chunks = list(stream)
    opening = chunks[0].choices[0].delta.tool_calls[0]  # type: ignore[index]
    assert (opening.function.name, opening.function.arguments) == ("get_weather", "")  # type: ignore[union-attr]
    args = "".join(
        c.choices[0].delta.tool_calls[0].function.arguments  # type: ignore[index,union-attr,misc]
        for c in chunks[1:] if c.choices[0].delta.tool_calls
    )
    assert args == call.function.arguments  # type: ignore[union-attr]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_answers_with_text(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="m", messages=USER, tools=TOOLS, tool_choice="none"  # type: ignore[arg-type]
    )
    assert reply.choices[0].message.content is not None
    assert reply.choices[0].finish_reason == "stop"


def test_tool_round_trip_is_accepted(provider: FakeProvider) -> None:
    messages = [*USER, {"role": "assistant", "content": None, "tool_calls": [{
        "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}
    }]}, {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    status, _, body = oa_post(provider, {"model": "m", "messages": messages, "tools": TOOLS})
    assert status == 200, body
    assert body["choices"][0]["finish_reason"] == "stop"  # a tool result is answered with text
    forced = {"type": "function", "function": {"name": "get_weather"}}
    body = oa_post(provider, {"model": "m", "messages": messages, "tools": TOOLS,
                              "tool_choice": forced})[2]
    assert body["choices"][0]["finish_reason"] == "tool_calls"


BAD_CHAT = [
    ({"frobnicate": 1}, "Unrecognized request argument supplied: frobnicate", None),
    ({"stream_options": {"include_usage": True}}, "only allowed when 'stream' is enabled",
     "stream_options"),
    ({"n": 0}, "below minimum value", "n"),
    ({"n": 129}, "above maximum value", "n"),
    ({"n": "2"}, "expected an integer", "n"),
    ({"temperature": 2.5}, "above maximum value", "temperature"),
    ({"stream": "yes"}, "expected a boolean", "stream"),
    ({"model": ""}, "you must provide a model parameter", None),
    ({"messages": []}, "empty array", "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "Invalid value: 'robot'",
     "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "video", "video": 1}]}]},
     "Invalid value: 'video'", "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": None}]}, "got null", "messages[0].content"),
    ({"messages": [*USER, {"role": "tool", "tool_call_id": "c1", "content": "x"}]},
     "must be a response to a preceeding message", "messages[1].role"),
    ({"tools": [{"type": "function"}]}, "Missing required parameter: 'tools[0].function'",
     "tools[0].function"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "does not match",
     "tools[0].function.name"),
    ({"tool_choice": "auto"}, "only allowed when 'tools' are specified", "tool_choice"),
    ({"response_format": {"type": "json_object"}}, "must contain the word 'json'", "messages"),
]


@pytest.mark.parametrize(("patch", "message", "param"), BAD_CHAT)
def test_chat_validation(provider: FakeProvider, patch: dict[str, Any], message: str,
                         param: str | None) -> None:
    status, _, body = oa_post(provider, {"model": "m", "messages": USER, **patch})
    assert status == 400
    error = body["error"]
    assert message in error["message"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert provider.count() == 1  # rejected requests are counted too


def test_chat_rejects_non_json_and_bad_keys(provider: FakeProvider) -> None:
    status, _, body = post(provider.openai_base + "/chat/completions", b"not json",
                           {"authorization": f"Bearer {OPENAI_KEY}"})
    assert status == 400
    assert "could not parse the JSON body" in body["error"]["message"]
    status, _, body = oa_post(provider, {"model": "m", "messages": USER}, key="sk-wrong-key-123456")
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=provider.openai_base, api_key="nope", max_retries=0)
    with bad, pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
    assert info.value.code == "invalid_api_key"
    assert provider.count() == 3


def test_add_key_accepts_byo_keys(provider: FakeProvider) -> None:
    assert oa_post(provider, {"model": "m", "messages": USER}, key="sk-byo-1")[0] == 401
    provider.add_key("sk-byo-1")
    assert oa_post(provider, {"model": "m", "messages": USER}, key="sk-byo-1")[0] == 200
    assert provider.received[-1].api_key == "sk-byo-1"


def test_embeddings_and_models(provider: FakeProvider, client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="text-embedding-3-small", input=["hello world", "x"])
    assert [d.index for d in result.data] == [0, 1]
    assert result.data[0].embedding == pytest.approx(embedding_vector("hello world"))
    assert len(result.data[0].embedding) == 8
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (3, 3)
    status, _, body = oa_post(provider, {"model": "e", "input": "hello world",
                                         "encoding_format": "float"}, path="/embeddings")
    assert status == 200
    assert body["data"][0]["embedding"] == embedding_vector("hello world")
    status, _, body = oa_post(provider, {"model": "e", "input": ""}, path="/embeddings")
    assert status == 400
    assert body["error"]["param"] == "input"
    assert [m.id for m in client.models.list()]
    assert provider.count("/v1/embeddings") == 3


# ---------------------------------------------------------------- Anthropic


def test_anthropic_json_and_tool_use(provider: FakeProvider) -> None:
    body = {"model": "claude-x", "max_tokens": 100, "system": "Be brief.", "messages": USER}
    status, headers, reply = an_post(provider, body)
    assert status == 200
    assert reply["type"] == "message"
    assert reply["id"].startswith("msg_")
    assert reply["content"] == [
        {"type": "text", "text": "Hello from fake claude-x: What is the capital of France?"}
    ]
    assert (reply["stop_reason"], reply["stop_sequence"]) == ("end_turn", None)
    assert reply["usage"]["input_tokens"] == 8
    assert reply["usage"]["output_tokens"] == 10
    assert "request-id" in headers
    tools = [{"name": "get_weather", "description": "d", "input_schema": {"type": "object"}}]
    status, _, reply = an_post(provider, {**body, "tools": tools})
    assert status == 200
    assert reply["stop_reason"] == "tool_use"
    block = reply["content"][0]
    assert block["type"] == "tool_use"
    assert block["name"] == "get_weather"
    assert block["id"].startswith("toolu_")
    assert isinstance(block["input"], dict)
    assert provider.received[0].api_key == ANTHROPIC_KEY
    turns = [*USER, {"role": "assistant", "content": [block]}, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": block["id"], "content": "sunny"}]}]
    status, _, reply = an_post(provider, {**body, "tools": tools, "messages": turns})
    assert status == 200
    assert reply["stop_reason"] == "end_turn"


async def test_anthropic_stream_event_sequence(provider: FakeProvider) -> None:
    body = {"model": "claude-x", "max_tokens": 100, "messages": USER, "stream": True}
    status, raw, error = await read_stream(provider.anthropic_base + "/v1/messages", body,
                                           AN_HEADERS)
    assert (status, error) == (200, None)
    events = an_events(raw)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(name == data["type"] for name, data in events)
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "Hello from fake claude-x: What is the capital of France?"
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    assert events[-2][1]["usage"]["output_tokens"] == 10


async def test_anthropic_stream_tool_use(provider: FakeProvider) -> None:
    tools = [{"name": "lookup", "input_schema": {"type": "object"}}]
    body = {"model": "c", "max_tokens": 50, "messages": USER, "stream": True, "tools": tools}
    _, raw, _ = await read_stream(provider.anthropic_base + "/v1/messages", body, AN_HEADERS)
    events = an_events(raw)
    assert events[1][1]["content_block"]["type"] == "tool_use"
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
    assert isinstance(json.loads(partial), dict)
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


BAD_ANTHROPIC = [
    ({"max_tokens": None}, "max_tokens: Field required"),
    ({"messages": [{"role": "system", "content": "x"}, *USER]}, 'Unexpected role "system"'),
    ({"temperature": 1.5}, "temperature: Input should be less than or equal to 1"),
    ({"frobnicate": True}, "frobnicate: Extra inputs are not permitted"),
    ({"metadata": {"agent_id": "a"}}, "metadata.agent_id: Extra inputs are not permitted"),
    ({"messages": [{"role": "user", "content": ""}]}, "non-empty content"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]}]},
     "unexpected `tool_use_id`"),
    ({"thinking": {"type": "enabled", "budget_tokens": 100}}, "greater than or equal to 1024"),
]


@pytest.mark.parametrize(("patch", "message"), BAD_ANTHROPIC)
def test_anthropic_validation(provider: FakeProvider, patch: dict[str, Any], message: str) -> None:
    body = {"model": "c", "max_tokens": 10, "messages": USER, **patch}
    body = {k: v for k, v in body.items() if v is not None}
    status, _, reply = an_post(provider, body)
    assert status == 400
    assert reply["type"] == "error"
    assert reply["error"]["type"] == "invalid_request_error"
    assert message in reply["error"]["message"]


def test_anthropic_headers_are_required(provider: FakeProvider) -> None:
    body = {"model": "c", "max_tokens": 10, "messages": USER}
    status, _, reply = an_post(provider, body, {"x-api-key": ANTHROPIC_KEY})
    assert status == 400
    assert reply["error"]["message"] == "anthropic-version: header is required"
    status, _, reply = an_post(provider, body, {**AN_HEADERS, "x-api-key": "sk-ant-wrong"})
    assert status == 401
    assert reply["error"]["type"] == "authentication_error"
    status, _, reply = an_post(provider, body, {"authorization": f"Bearer {ANTHROPIC_KEY}",
                                                "anthropic-version": "2023-06-01"})
    assert status == 401
    assert provider.count("/v1/messages") == 3


def test_anthropic_thinking_comes_first(provider: FakeProvider) -> None:
    body = {"model": "c", "max_tokens": 2048, "messages": USER,
            "thinking": {"type": "enabled", "budget_tokens": 1024}}
    status, _, reply = an_post(provider, body)
    assert status == 200
    assert [b["type"] for b in reply["content"]] == ["thinking", "text"]
    assert reply["content"][0]["signature"]


# ------------------------------------------------------------ failure modes

STATUS_CASES = [
    (400, "invalid_request_error", None, "invalid_request_error"),
    (401, "invalid_request_error", "invalid_api_key", "authentication_error"),
    (403, "request_forbidden", "unsupported_country_region_territory", "permission_error"),
    (404, "invalid_request_error", "model_not_found", "not_found_error"),
    (429, "requests", "rate_limit_exceeded", "rate_limit_error"),
    (500, "server_error", None, "api_error"),
    (503, "server_error", None, "api_error"),
    (529, "server_error", "overloaded", "overloaded_error"),
]


@pytest.mark.parametrize(("status", "oa_type", "oa_code", "an_type"), STATUS_CASES)
def test_fail_status(provider: FakeProvider, status: int, oa_type: str, oa_code: str | None,
                     an_type: str) -> None:
    provider.fail("status", status=status, times=2, message="boom")
    got, headers, body = oa_post(provider, {"model": "m", "messages": USER})
    assert got == status
    assert body == {"error": {"message": "boom", "type": oa_type, "param": None, "code": oa_code}}
    assert ("retry-after" in headers) == (status == 429)
    got, _, body = an_post(provider, {"model": "c", "max_tokens": 5, "messages": USER})
    assert got == status
    assert body == {"type": "error", "error": {"type": an_type, "message": "boom"}}
    assert oa_post(provider, {"model": "m", "messages": USER})[0] == 200  # times=2 used up


def test_fail_path_and_times_none(provider: FakeProvider) -> None:
    provider.fail("status", status=503, path="/v1/messages", times=None)
    assert oa_post(provider, {"model": "m", "messages": USER})[0] == 200
    for _ in range(3):
        assert an_post(provider, {"model": "c", "max_tokens": 5, "messages": USER})[0] == 503
    provider.reset()
    assert provider.count() == 0
    assert an_post(provider, {"model": "c", "max_tokens": 5, "messages": USER})[0] == 200


def test_fail_drop(provider: FakeProvider, client: openai.OpenAI) -> None:
    provider.fail("drop")
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
    assert provider.count() == 1
    assert client.chat.completions.create(model="m", messages=USER).choices  # type: ignore[arg-type]


async def test_fail_cut_openai_and_anthropic(provider: FakeProvider) -> None:
    provider.fail("cut", after=2, times=2)
    body = {"model": "m", "messages": USER, "stream": True}
    auth = {"authorization": f"Bearer {OPENAI_KEY}"}
    status, raw, error = await read_stream(provider.openai_base + "/chat/completions", body, auth)
    assert status == 200
    assert isinstance(error, aiohttp.ClientPayloadError)
    lines = data_lines(raw)
    assert "[DONE]" not in lines
    contents = [json.loads(x)["choices"][0]["delta"].get("content") for x in lines]
    assert contents == ["", "Hello ", "from "]
    status, raw, error = await read_stream(provider.anthropic_base + "/v1/messages",
                                           {**body, "max_tokens": 9}, AN_HEADERS)
    assert status == 200
    assert error is not None
    names = [name for name, _ in an_events(raw)]
    assert names.count("content_block_delta") == 2
    assert "message_stop" not in names


def test_fail_cut_non_stream_drops(provider: FakeProvider) -> None:
    provider.fail("cut", after=1)
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        oa_post(provider, {"model": "m", "messages": USER})


async def test_fail_inband_error(provider: FakeProvider) -> None:
    provider.fail("inband_error", after=1, times=2)
    body = {"model": "m", "messages": USER, "stream": True}
    auth = {"authorization": f"Bearer {OPENAI_KEY}"}
    status, raw, error = await read_stream(provider.openai_base + "/chat/completions", body, auth)
    assert (status, error) == (200, None)
    lines = data_lines(raw)
    assert "[DONE]" not in lines
    assert json.loads(lines[-1])["error"]["type"] == "server_error"
    assert len(lines) == 3  # role chunk, one word, the error
    status, raw, error = await read_stream(provider.anthropic_base + "/v1/messages",
                                           {**body, "max_tokens": 9}, AN_HEADERS)
    assert (status, error) == (200, None)
    events = an_events(raw)
    assert events[-1] == ("error", {"type": "error", "error": {"type": "overloaded_error",
                                                               "message": "Overloaded"}})
    assert [n for n, _ in events].count("content_block_delta") == 1


async def test_fail_hang_then_reset_releases(provider: FakeProvider) -> None:
    provider.fail("hang")
    body = {"model": "m", "messages": USER}
    auth = {"authorization": f"Bearer {OPENAI_KEY}"}
    _, _, error = await read_stream(provider.openai_base + "/chat/completions", body, auth, 0.3)
    assert isinstance(error, TimeoutError)
    assert provider.count() == 1
    provider.reset()
    status, _, error = await read_stream(provider.openai_base + "/chat/completions", body, auth)
    assert (status, error) == (200, None)


def test_hang_does_not_block_stop() -> None:
    fake = FakeProvider().start()
    fake.fail("hang", times=None)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            oa_post(fake, {"model": "m", "messages": USER})
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    while fake.count() == 0:
        time.sleep(0.01)
    fake.stop()
    thread.join(5)
    assert errors  # the hung request was dropped, not answered


async def test_slow_stream_and_delay(provider: FakeProvider) -> None:
    provider.fail("slow_stream", interval=0.03)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    auth = {"authorization": f"Bearer {OPENAI_KEY}"}
    status, raw, error = await read_stream(provider.openai_base + "/chat/completions", body, auth)
    events = len(data_lines(raw))  # role + 5 words + finish + [DONE]
    assert (status, error, events) == (200, None, 8)
    provider.delay = 0.2
    assert oa_post(provider, {"model": "m", "messages": USER})[0] == 200


def test_fail_rejects_unknown_mode(provider: FakeProvider) -> None:
    with pytest.raises(ValueError, match="unknown failure mode"):
        provider.fail("explode")


def test_standalone_process() -> None:
    script = Path(__file__).with_name("fake_provider.py")
    proc = subprocess.Popen([sys.executable, str(script), "--port", "0", "--fast"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[0] == "READY"
        url = f"http://127.0.0.1:{line[1]}/v1/chat/completions"
        status, _, body = post(url, {"model": "m", "messages": USER},
                               {"authorization": f"Bearer {OPENAI_KEY}"})
        assert status == 200
        assert body["choices"][0]["message"]["content"].startswith("Hello")
    finally:
        proc.terminate()
        assert proc.wait(5) == 0
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize("output", ["content", "refusal", "reasoning", "audio"])
def test_stream_output_kinds_are_valid_chunks(provider: FakeProvider, client: openai.OpenAI,
                                              output: str) -> None:
    """Each `output` streams chunks the OpenAI SDK parses, with the deltas of its kind."""
    provider.output = output
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=USER, stream=True))
    deltas = [c.choices[0].delta.model_dump(exclude_none=True) for c in chunks if c.choices]
    assert deltas[0] == {"role": "assistant", "content": ""}
    fields = {key for d in deltas[1:] for key in d}
    want = {"content": {"content"}, "refusal": {"refusal"},
            "reasoning": {"reasoning_content", "content"}, "audio": {"audio"}}[output]
    assert fields == want
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_fail_stall_sends_after_n_then_stays_silent(provider: FakeProvider) -> None:
    provider.fail("stall", after=2)
    body = {"model": "m", "messages": USER, "stream": True}

    async def main() -> bytes:
        async with aiohttp.ClientSession() as session, session.post(
            provider.openai_base + "/chat/completions", json=body,
            headers={"authorization": f"Bearer {OPENAI_KEY}"},
        ) as resp:
            got = b""

            async def read() -> None:
                nonlocal got
                async for data in resp.content.iter_any():
                    got += data

            with pytest.raises(TimeoutError):  # silent: the stream never ends
                await asyncio.wait_for(read(), 0.5)
            return got

    lines = data_lines(asyncio.run(main()))
    contents = [json.loads(line)["choices"][0]["delta"].get("content") for line in lines]
    assert contents[0] == "" and len([c for c in contents[1:] if c]) == 2
