"""Loading the recorded payloads of tests/fixtures/dialects/ and checking them with the
installed SDKs' own types (what a real client would parse)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anthropic.types import Message, RawMessageStreamEvent
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "dialects"
_RESPONSES_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
_MESSAGES_EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def check_chat_reply(reply: dict[str, Any]) -> ChatCompletion:
    return ChatCompletion.model_validate(reply)


def check_chat_chunk(chunk: dict[str, Any]) -> ChatCompletionChunk:
    return ChatCompletionChunk.model_validate(chunk)


def check_responses_reply(reply: dict[str, Any]) -> Response:
    return Response.model_validate(reply)


def check_responses_event(event: dict[str, Any]) -> Any:
    return _RESPONSES_EVENT.validate_python(event)


def check_message(reply: dict[str, Any]) -> Message:
    return Message.model_validate(reply)


def check_messages_event(event: dict[str, Any]) -> Any:
    """A Messages stream event; `ping` is outside the SDK's union (it skips it by name)."""
    if event["type"] == "ping":
        assert event == {"type": "ping"}
        return event
    return _MESSAGES_EVENT.validate_python(event)
