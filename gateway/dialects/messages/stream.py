"""The Messages dialect's stream, as the edge's event writer takes it (edge/sse.py).

A payload is one event as the provider framed it, `event: <type>\ndata: <json>`
(gateway/providers/anthropic.py and the translating provider both yield that).
  - output: any `content_block_delta` (text, tool arguments, thinking);
  - usage: the provider's own counts, from `message_start` (input) and
    `message_delta` (output; newer APIs repeat the input there), merged for the
    stream, never counted from the text: one object per stream, since it keeps
    what `message_start` said;
  - every event is relayed as it came, the usage events included (the client's
    SDK needs them); the end is the provider's own `message_stop`, so no marker
    follows a completed stream; a failed one ends with `event: error`.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.dialects.messages.errors import error_event
from gateway.dialects.named_events import data_of
from gateway.dialects.translate.chat_messages.reply import chat_usage
from gateway.errors import GatewayError

DELTA = b"event: content_block_delta"
_USAGE_EVENTS = (b"event: message_start", b"event: message_delta")


class MessagesStream:
    """One stream's view (it keeps the usage `message_start` reported)."""

    done = b""  # the provider's message_stop ended the stream

    def __init__(self) -> None:
        self.usage: dict[str, Any] = {}

    def inspect(self, payload: bytes) -> tuple[bool, dict[str, Any] | None]:
        if payload.startswith(DELTA):
            return True, None
        if not payload.startswith(_USAGE_EVENTS):
            return False, None
        event = data_of(payload)
        if not isinstance(event, dict):
            return False, None
        source = event.get("message") if event.get("type") == "message_start" else event
        usage = source.get("usage") if isinstance(source, dict) else None
        if not isinstance(usage, dict):
            return False, None
        self.usage.update({k: v for k, v in usage.items() if isinstance(v, int)})
        return False, chat_usage(self.usage)

    @staticmethod
    def may_carry_usage(payload: bytes) -> bool:
        return payload.startswith(_USAGE_EVENTS)

    @staticmethod
    def event(payload: bytes) -> bytes:
        return payload + b"\n\n"

    @staticmethod
    def usage_event(payload: bytes, credits: int) -> bytes:
        """Relayed unchanged: the credits are in the `x-bookbag-credits-*` headers."""
        return payload + b"\n\n"

    @staticmethod
    def error_event(error: GatewayError) -> bytes:
        return error_event(error)


def frame(name: str, data: Any) -> bytes:
    """An event as a payload of this dialect (the translating provider's output)."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data)
