"""Responses -> chat requests and chat -> Responses replies against the recorded payloads,
every output checked with the openai SDK's types."""

from __future__ import annotations

import json

import pytest

from gateway.dialects.translate.common import Untranslatable
from gateway.dialects.translate.responses_chat.reply import chat_reply_to_response
from gateway.dialects.translate.responses_chat.request import responses_request_to_chat
from tests.dialects.fixtures import check_responses_reply, load


def test_function_call_round_trip_becomes_chat_messages() -> None:
    follow_up = load("responses_function_call")["follow_up"]
    chat = responses_request_to_chat({**follow_up, "instructions": "Be brief.", "stream": True,
                                      "max_output_tokens": 100})
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "assistant", "tool"]
    call = chat["messages"][2]["tool_calls"][0]
    assert (call["id"], call["function"]["name"]) == ("call_12345xyz", "get_weather")
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "call_12345xyz",
                                   "content": "14"}
    assert chat["tools"][0]["function"]["strict"] is True
    assert (chat["max_completion_tokens"], chat["stream_options"]) == (
        100, {"include_usage": True})


@pytest.mark.parametrize(("patch", "param"), [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"background": True}, "background"), ({"conversation": "conv_1"}, "conversation"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"reasoning": {"summary": "auto"}}, "reasoning.summary"),
])
def test_what_chat_cannot_carry_is_refused(patch: dict[str, object], param: str) -> None:
    with pytest.raises(Untranslatable) as info:
        responses_request_to_chat({"model": "m", "input": "hi", **patch})
    assert info.value.param == param


def test_chat_replies_become_responses() -> None:
    text = chat_reply_to_response(load("chat_text")["reply"], {"model": "gpt-4o"},
                                  response_id="resp_1")
    parsed = check_responses_reply(text)
    assert parsed.status == "completed" and parsed.output_text.startswith("The image shows")
    assert parsed.usage is not None and parsed.usage.input_tokens == 1117
    fixture = load("chat_tool_calls")
    tool = check_responses_reply(chat_reply_to_response(
        fixture["reply"], {"model": "gpt-4.1"}, response_id="resp_2"))
    call = tool.output[0]
    assert call.type == "function_call"
    assert json.loads(call.arguments) == {"location": "Paris, France"}


def test_length_finish_is_an_incomplete_response() -> None:
    reply = load("chat_text")["reply"]
    cut = {**reply, "choices": [{**reply["choices"][0], "finish_reason": "length"}]}
    parsed = check_responses_reply(chat_reply_to_response(cut, {}, response_id="resp_3"))
    assert parsed.status == "incomplete"
    assert parsed.incomplete_details is not None
    assert parsed.incomplete_details.reason == "max_output_tokens"
