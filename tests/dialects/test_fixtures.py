"""Every recorded payload names its source and parses as the installed SDKs' types, so the
translator tests below them start from what the providers really send."""

from __future__ import annotations

import pytest

from tests.dialects.fixtures import (
    FIXTURES,
    check_chat_chunk,
    check_chat_reply,
    check_message,
    check_messages_event,
    check_responses_event,
    check_responses_reply,
    load,
)

NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))


@pytest.mark.parametrize("name", NAMES)
def test_fixture_names_its_source_and_parses(name: str) -> None:
    data = load(name)
    assert data["source"].startswith("https://"), name
    dialect = name.split("_", 1)[0]
    reply_check = {"chat": check_chat_reply, "responses": check_responses_reply,
                   "messages": check_message}[dialect]
    event_check = {"chat": check_chat_chunk, "responses": check_responses_event,
                   "messages": check_messages_event}[dialect]
    if "reply" in data:
        reply_check(data["reply"])
    for chunk in data.get("chunks", []):
        event_check(chunk)
    for event in data.get("events", []):
        assert event["event"] == event["data"]["type"]
        event_check(event["data"])
    for case in data.get("cases", []):
        assert reply_check(case["reply"]).stop_reason == case["stop_reason"]


def test_the_fixtures_cover_what_the_translators_need() -> None:
    assert {"chat_text", "chat_tool_calls", "chat_stream_tool_calls", "chat_stream_text_usage",
            "responses_text", "responses_function_call", "responses_stream_text",
            "responses_stream_function_call", "messages_text", "messages_tool_use",
            "messages_thinking", "messages_stream_tool_use", "messages_stream_thinking",
            "messages_stop_reasons"} <= set(NAMES)
    deltas = [e["data"]["delta"]["type"] for e in load("messages_stream_tool_use")["events"]
              if e["event"] == "content_block_delta"]
    assert "input_json_delta" in deltas
