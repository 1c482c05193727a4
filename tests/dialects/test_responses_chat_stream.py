"""Chat chunks -> Responses events against the recorded payloads: every event validates as the
openai SDK's `ResponseStreamEvent`, sequence numbers count up from 0, and the last event is
the Response a client keeps (output, status, usage)."""

from __future__ import annotations

import json
from typing import Any

from openai.types.responses import ResponseCompletedEvent

from gateway.dialects.translate.responses_chat.stream import ChatToResponsesStream, Event
from tests.dialects.fixtures import check_responses_event, load

REQUEST = {"model": "gpt-4o-mini", "input": "Hello", "stream": True, "store": False}


def _run(chunks: list[dict[str, Any]], request: dict[str, Any] | None = None,
         *, done: bool = True) -> tuple[ChatToResponsesStream, list[Event]]:
    stream = ChatToResponsesStream(request or REQUEST, response_id="resp_test")
    events: list[Event] = []
    for chunk in chunks:
        events += stream.feed(chunk)
    if done:
        events += stream.finish()
    for i, (name, data) in enumerate(events):
        assert name == data["type"]
        assert data["sequence_number"] == i
        check_responses_event(data)
    return stream, events


def _names(events: list[Event]) -> list[str]:
    return [name for name, _ in events]


def test_text_stream_becomes_the_typed_events() -> None:
    stream, events = _run(load("chat_stream_text_usage")["chunks"])
    assert _names(events) == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", *["response.output_text.delta"] * 9,
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    deltas = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    assert deltas == "Hello! How can I assist you today?"
    completed = check_responses_event(events[-1][1])
    assert isinstance(completed, ResponseCompletedEvent)
    response = completed.response
    assert (response.id, response.status, response.model) == ("resp_test", "completed",
                                                              "gpt-4o-mini")
    assert response.output_text == deltas and events[-1][1]["response"]["store"] is False
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (9, 9)
    assert stream.usage is not None and stream.usage["prompt_tokens"] == 9  # for the meter


def test_streamed_tool_call_arguments_become_function_call_events() -> None:
    request = {**REQUEST, "tools": load("responses_function_call")["request"]["tools"]}
    _, events = _run(load("chat_stream_tool_calls")["chunks"], request)
    added = events[2][1]
    assert added["type"] == "response.output_item.added"
    assert added["item"]["call_id"] == "call_DdmO9pD3xa9XTPNJ32zg2hcA"
    assert added["item"]["name"] == "get_weather" and added["item"]["arguments"] == ""
    streamed = "".join(d["delta"] for n, d in events
                       if n == "response.function_call_arguments.delta")
    done = next(d for n, d in events if n == "response.function_call_arguments.done")
    assert json.loads(done["arguments"]) == json.loads(streamed) == {"location": "Paris, France"}
    final = check_responses_event(events[-1][1]).response
    assert final.status == "completed" and final.output[0].type == "function_call"
    assert final.output[0].status == "completed" and final.tools[0].name == "get_weather"


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra}


USAGE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4,
                                  "total_tokens": 7}}


def test_length_and_content_filter_end_incomplete() -> None:
    for finish, reason in (("length", "max_output_tokens"), ("content_filter", "content_filter")):
        _, events = _run([_chunk({"role": "assistant", "content": "Once upon"}),
                          _chunk({}, finish), USAGE])
        assert events[-1][0] == "response.incomplete"
        response = check_responses_event(events[-1][1]).response
        assert response.status == "incomplete" and response.incomplete_details is not None
        assert response.incomplete_details.reason == reason
        assert response.output[0].status == "incomplete"
        assert response.usage is not None and response.usage.total_tokens == 7


def test_reasoning_refusal_and_parallel_calls_each_get_their_item() -> None:
    chunks = [
        _chunk({"role": "assistant", "reasoning_content": "Think"}),
        _chunk({"reasoning_content": "ing."}),
        _chunk({"content": "Sure."}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                "function": {"name": "a", "arguments": "{}"}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                "function": {"name": "b", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{\"x\":1}"}}]}),
        _chunk({}, "tool_calls"), USAGE]
    _, events = _run(chunks)
    final = check_responses_event(events[-1][1]).response
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call",
                                                     "function_call"]
    assert final.output[0].content is not None
    assert final.output[0].content[0].text == "Thinking."
    assert [(o.call_id, o.arguments) for o in final.output[2:]] == [("call_a", "{}"),
                                                                     ("call_b", "{\"x\":1}")]
    assert "response.reasoning_text.delta" in _names(events)
    refused = _run([_chunk({"role": "assistant", "refusal": "I can't."}), _chunk({}, "stop"),
                    USAGE])[1]
    assert "response.refusal.done" in _names(refused)
    part = check_responses_event(refused[-1][1]).response.output[0].content[0]
    assert part.type == "refusal" and part.refusal == "I can't."


def test_no_usage_chunk_still_ends_the_response_without_usage() -> None:
    stream, events = _run([_chunk({"role": "assistant", "content": "Hi"}), _chunk({}, "stop")])
    assert events[-1][0] == "response.completed" and events[-1][1]["response"]["usage"] is None
    assert stream.usage is None and stream.finish() == []


def test_a_provider_error_becomes_response_failed_and_ends_the_stream() -> None:
    stream, events = _run([_chunk({"role": "assistant", "content": "Hel"})], done=False)
    failed = stream.fail("upstream_error", "The provider broke off.")
    assert [n for n, _ in failed] == ["response.failed"]
    data = failed[0][1]
    assert data["sequence_number"] == len(events)
    response = check_responses_event(data).response
    assert response.status == "failed" and response.error is not None
    assert (response.error.code, response.error.message) == ("server_error",
                                                              "The provider broke off.")
    assert stream.finish() == [] and stream.fail("x", "y") == []
    limited = ChatToResponsesStream(REQUEST, response_id="resp_2").fail(
        "rate_limit_exceeded", "slow down", status=429)
    assert check_responses_event(limited[0][1]).response.error.code == "rate_limit_exceeded"
