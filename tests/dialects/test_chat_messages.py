"""Chat <-> Messages translation against the recorded payloads: requests, replies, tool calls,
streamed tool arguments, stop reasons and usage, every output checked with the SDK types."""

from __future__ import annotations

import json

import pytest

from gateway.dialects.translate.chat_messages.reply import (
    chat_reply_to_messages,
    messages_reply_to_chat,
)
from gateway.dialects.translate.chat_messages.request import (
    chat_request_to_messages,
    messages_request_to_chat,
)
from gateway.dialects.translate.chat_messages.stream import (
    ChatToMessagesStream,
    MessagesToChatStream,
    StreamFailed,
)
from gateway.dialects.translate.common import Untranslatable
from tests.dialects.fixtures import (
    check_chat_chunk,
    check_chat_reply,
    check_message,
    check_messages_event,
    load,
)


def test_chat_tool_request_and_round_trip_become_messages() -> None:
    fixture = load("chat_tool_calls")
    request = chat_request_to_messages({**fixture["request"], "stop": "END", "user": "u1",
                                        "tool_choice": "required"}, default_max_tokens=4096)
    assert request["max_tokens"] == 4096
    assert request["tools"][0]["input_schema"]["required"] == ["location"]
    assert request["tool_choice"] == {"type": "any"}
    assert (request["stop_sequences"], request["metadata"]) == (["END"], {"user_id": "u1"})
    call = fixture["reply"]["choices"][0]["message"]
    history = [{"role": "system", "content": "Be brief."}, *fixture["request"]["messages"], call,
               {"role": "tool", "tool_call_id": "call_12345xyz", "content": "14"}]
    again = chat_request_to_messages({"model": "m", "messages": history}, default_max_tokens=10)
    assert again["system"] == "Be brief."
    assert [m["role"] for m in again["messages"]] == ["user", "assistant", "user"]
    assert again["messages"][1]["content"] == [{"type": "tool_use", "id": "call_12345xyz",
                                                "name": "get_weather",
                                                "input": {"location": "Paris, France"}}]
    assert again["messages"][2]["content"][0]["tool_use_id"] == "call_12345xyz"


@pytest.mark.parametrize(("patch", "param"), [
    ({"n": 2}, "n"), ({"logprobs": True}, "logprobs"), ({"temperature": 1.5}, "temperature"),
    ({"response_format": {"type": "json_object"}}, "response_format"), ({"seed": 1}, "seed"),
])
def test_chat_parameters_messages_cannot_honour_are_refused(patch: dict[str, object],
                                                            param: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **patch}
    with pytest.raises(Untranslatable) as info:
        chat_request_to_messages(body, default_max_tokens=10)
    assert info.value.param == param


def test_messages_replies_become_chat_replies() -> None:
    text = messages_reply_to_chat(load("messages_text")["reply"], created=1)
    check_chat_reply(text)
    assert text["choices"][0]["message"]["content"] == "Hi! My name is Claude."
    assert text["usage"]["prompt_tokens"] == 2095
    tool = check_chat_reply(messages_reply_to_chat(load("messages_tool_use")["reply"], created=1))
    calls = tool.choices[0].message.tool_calls
    assert tool.choices[0].finish_reason == "tool_calls" and calls
    assert json.loads(calls[0].function.arguments) == {"location": "San Francisco, CA"}  # type: ignore[union-attr]
    thought = messages_reply_to_chat(load("messages_thinking")["reply"], created=1)
    assert thought["choices"][0]["message"]["reasoning_content"].startswith("Let me analyze")


@pytest.mark.parametrize("case", load("messages_stop_reasons")["cases"])
def test_every_stop_reason_maps(case: dict[str, object]) -> None:
    reply = messages_reply_to_chat(case["reply"], created=1)  # type: ignore[arg-type]
    assert check_chat_reply(reply).choices[0].finish_reason == case["finish_reason"]


def test_cached_usage_is_carried_not_recounted() -> None:
    reply = {**load("messages_text")["reply"], "usage": {
        "input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20}}
    usage = messages_reply_to_chat(reply, created=1)["usage"]
    assert (usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]) == (130, 100)


def test_messages_stream_becomes_chat_chunks_with_tool_argument_deltas() -> None:
    stream = MessagesToChatStream(created=1, include_usage=True)
    chunks = [c for e in load("messages_stream_tool_use")["events"] for c in stream.feed(e["data"])]
    for chunk in chunks:
        check_chat_chunk(chunk)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    text = "".join(d.get("content") or "" for d in deltas)
    assert text == "Okay, let's check the weather for San Francisco, CA:"
    args = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas
                   if "tool_calls" in d)
    assert json.loads(args) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["prompt_tokens"] == 472
    assert chunks[-1]["usage"]["completion_tokens"] == 89  # from message_delta
    assert stream.usage["output_tokens"] == 89


def test_messages_stream_error_event_fails_the_stream() -> None:
    stream = MessagesToChatStream(created=1, include_usage=False)
    with pytest.raises(StreamFailed) as info:
        stream.feed({"type": "error", "error": {"type": "overloaded_error", "message": "x"}})
    assert info.value.error["type"] == "overloaded_error"


def test_messages_request_and_chat_reply_for_an_anthropic_client() -> None:
    follow_up = load("messages_tool_use")["follow_up"]
    chat = messages_request_to_chat({**follow_up, "stream": True, "system": "Be brief."})
    assert chat["stream_options"] == {"include_usage": True}
    roles = [m["role"] for m in chat["messages"]]
    assert roles == ["system", "user", "assistant", "tool"]
    assert chat["messages"][2]["tool_calls"][0]["function"]["name"] == "get_weather"
    with pytest.raises(Untranslatable):
        messages_request_to_chat({**follow_up, "top_k": 5})
    message = chat_reply_to_messages(load("chat_tool_calls")["reply"])
    parsed = check_message(message)
    assert parsed.stop_reason == "tool_use"
    assert message["content"][0]["input"] == {"location": "Paris, France"}
    assert parsed.usage.input_tokens == 68


def test_chat_stream_becomes_messages_events() -> None:
    stream = ChatToMessagesStream(message_id="msg_1", model="gpt-4o-mini")
    events = [e for c in load("chat_stream_tool_calls")["chunks"] for e in stream.feed(c)]
    events += stream.finish()
    for name, data in events:
        assert name == data["type"]
        check_messages_event(data)
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
    assert json.loads(partial) == {"location": "Paris, France"}
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert (delta["usage"]["input_tokens"], delta["usage"]["output_tokens"]) == (68, 17)
    text = ChatToMessagesStream(message_id="msg_2", model="m")
    out = [e for c in load("chat_stream_text_usage")["chunks"] for e in text.feed(c)]
    said = "".join(d["delta"]["text"] for n, d in out if n == "content_block_delta")
    assert said == "Hello! How can I assist you today?"
    assert text.finish() == []  # already closed by the usage chunk
