"""The fake provider's `POST /v1/responses`: strict like the real API, and every reply and
event it sends parses as the installed openai SDK's own types."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.fake_provider import OPENAI_KEY, FakeProvider

pytest_plugins = ("tests.fakes.fixtures",)  # the fake as `server` and `provider` fixtures

EVENT = TypeAdapter(ResponseStreamEvent)
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
          "strict": False}]
AUTH = {"authorization": f"Bearer {OPENAI_KEY}"}


@pytest.fixture
def client(provider: FakeProvider) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=provider.openai_base, api_key=OPENAI_KEY, max_retries=0) as c:
        yield c


def post(provider: FakeProvider, body: Any,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    hdrs = {"content-type": "application/json", **(AUTH if headers is None else headers)}
    req = urllib.request.Request(provider.openai_base + "/responses", data=data, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def stream(provider: FakeProvider, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The (event name, data) pairs of a streamed reply, each validated as the SDK's type."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session, \
            session.post(provider.openai_base + "/responses",
                         json={**body, "stream": True}, headers=AUTH) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = await resp.read()
    events = []
    for block in raw.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        if fields:
            data = json.loads(fields["data"])
            assert fields["event"] == data["type"]
            EVENT.validate_python(data)
            events.append((fields["event"], data))
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    return events


def test_json_text_reply_parses_as_the_sdk_response(provider: FakeProvider,
                                                    client: openai.OpenAI) -> None:
    reply = client.responses.create(model="gpt-4o-mini", input="What is the capital of France?",
                                    instructions="Be brief.", store=False)
    assert reply.status == "completed"
    assert reply.output_text == "Hello from fake gpt-4o-mini: What is the capital of France?"
    assert reply.usage is not None
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (8, 10)
    status, raw = post(provider, {"model": "m", "input": "hi"})
    assert status == 200
    Response.model_validate(raw)  # every field the SDK requires is there
    assert provider.count("/v1/responses") == 2
    assert provider.received[0].body["instructions"] == "Be brief."


async def test_text_stream_event_sequence(provider: FakeProvider) -> None:
    events = await stream(provider, {"model": "m", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "Hi there"}]}]})
    names = [n for n, _ in events]
    assert names[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert names[-5:] == ["response.output_text.delta", "response.output_text.done",
                          "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    deltas = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    assert deltas == "Hello from fake m: Hi there"
    assert events[0][1]["response"]["usage"] is None
    final = Response.model_validate(events[-1][1]["response"])
    assert final.output_text == deltas
    assert final.usage is not None and final.usage.output_tokens == 6


async def test_function_call_json_and_stream(provider: FakeProvider,
                                             client: openai.OpenAI) -> None:
    reply = client.responses.create(model="m", input="Paris?", tools=TOOLS)  # type: ignore[arg-type]
    call = reply.output[0]
    assert call.type == "function_call"
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"input": "Paris?"})
    events = await stream(provider, {"model": "m", "input": "Paris?", "tools": TOOLS})
    args = "".join(d["delta"] for n, d in events
                   if n == "response.function_call_arguments.delta")
    done = next(d for n, d in events if n == "response.function_call_arguments.done")
    assert args == done["arguments"] == call.arguments
    assert len([n for n, _ in events if n.endswith("arguments.delta")]) > 1
    assert events[-1][1]["response"]["output"][0]["call_id"].startswith("call_")


def test_sdk_stream_helper_accumulates(client: openai.OpenAI) -> None:
    with client.responses.stream(model="m", input="Stream me") as events:
        final = events.get_final_response()
    assert final.output_text == "Hello from fake m: Stream me"


def test_tool_round_trip_inline_and_by_previous_response(provider: FakeProvider) -> None:
    call = {"type": "function_call", "call_id": "call_1", "name": "get_weather",
            "arguments": "{}"}
    out = {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}
    status, reply = post(provider, {"model": "m", "tools": TOOLS,
                                    "input": [{"role": "user", "content": "Paris?"}, call, out]})
    assert status == 200
    assert reply["output"][0]["type"] == "message"  # answering a tool output: text
    status, first = post(provider, {"model": "m", "tools": TOOLS, "input": "Paris?"})
    call_id = first["output"][0]["call_id"]
    status, reply = post(provider, {
        "model": "m", "tools": TOOLS, "previous_response_id": first["id"],
        "input": [{"type": "function_call_output", "call_id": call_id, "output": "sunny"}]})
    assert (status, reply["previous_response_id"]) == (200, first["id"])
    status, error = post(provider, {"model": "m", "previous_response_id": "resp_nope",
                                    "input": "x"})
    assert (status, error["error"]["code"]) == (400, "previous_response_not_found")
    status, not_stored = post(provider, {"model": "m", "input": "x", "store": False})
    status, error = post(provider, {"model": "m", "previous_response_id": not_stored["id"],
                                    "input": "x"})
    assert status == 400


@pytest.mark.parametrize(("patch", "param", "code"), [
    ({"frobnicate": 1}, "frobnicate", "unknown_parameter"),
    ({"model": None}, "model", "invalid_type"),
    ({"input": 5}, "input", "invalid_type"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role", "invalid_value"),
    ({"input": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]},
     "input[0].content[0].type", "invalid_value"),
    ({"input": [{"type": "function_call_output", "call_id": "call_9", "output": "x"}]},
     "input", None),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]},
     "input[0].arguments", "missing_required_parameter"),
    ({"max_output_tokens": 8}, "max_output_tokens", "integer_below_min_value"),
    ({"temperature": 3}, "temperature", "decimal_above_max_value"),
    ({"tools": [{"type": "function"}]}, "tools[0].name", "missing_required_parameter"),
    ({"tools": [{"type": "telepathy"}]}, "tools[0].type", "invalid_value"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "name": "other"}}, "tool_choice",
     None),
    ({"tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
    ({"stream_options": {"include_obfuscation": False}}, "stream_options", None),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema",
     "missing_required_parameter"),
    ({"metadata": {"k": 1}}, "metadata", "invalid_value"),
])
def test_request_validation(provider: FakeProvider, patch: dict[str, Any], param: str,
                            code: str | None) -> None:
    status, reply = post(provider, {"model": "m", "input": "hi", **patch})
    assert status == 400, reply
    error = reply["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)


def test_missing_model_input_and_bad_key(provider: FakeProvider) -> None:
    assert post(provider, {"input": "x"})[1]["error"]["param"] == "model"
    assert post(provider, {"model": "m"})[1]["error"]["param"] == "input"
    status, reply = post(provider, {"model": "m", "input": "x"}, {"authorization": "Bearer no"})
    assert (status, reply["error"]["code"]) == (401, "invalid_api_key")
    assert post(provider, {"model": "m", "input": "x"}, {})[0] == 401
    assert provider.count("/v1/responses") == 4  # rejected ones are counted too


async def test_max_output_tokens_ends_incomplete(provider: FakeProvider) -> None:
    body = {"model": "m", "max_output_tokens": 16, "input": " ".join(["word"] * 40)}
    status, reply = post(provider, body)
    parsed = Response.model_validate(reply)
    assert (status, parsed.status) == (200, "incomplete")
    assert parsed.incomplete_details is not None
    assert parsed.incomplete_details.reason == "max_output_tokens"
    assert parsed.usage is not None and parsed.usage.output_tokens == 16
    events = await stream(provider, body)
    assert events[-1][0] == "response.incomplete"


async def test_inband_error_is_a_response_failed_event(provider: FakeProvider) -> None:
    provider.fail("inband_error", after=2, path="/v1/responses", message="boom")
    events = await stream(provider, {"model": "m", "input": "a b c d"})
    assert [n for n, _ in events].count("response.output_text.delta") == 2
    name, data = events[-1]
    assert name == "response.failed"
    assert data["response"]["error"] == {"code": "server_error", "message": "boom"}


async def test_cut_and_status_failures(provider: FakeProvider) -> None:
    provider.fail("status", status=429, path="/v1/responses")
    status, reply = post(provider, {"model": "m", "input": "x"})
    assert (status, reply["error"]["code"]) == (429, "rate_limit_exceeded")
    provider.fail("cut", after=1, path="/v1/responses")
    async with aiohttp.ClientSession() as session, \
            session.post(provider.openai_base + "/responses", headers=AUTH,
                         json={"model": "m", "input": "x", "stream": True}) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
