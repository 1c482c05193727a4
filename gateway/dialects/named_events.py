"""SSE payloads of the dialects whose events are named (`event: <type>` then `data: <json>`):
Anthropic's Messages and OpenAI's Responses, framed alike by the relay's splitter."""

from __future__ import annotations

from typing import Any

import orjson


def data_of(payload: bytes) -> Any:
    """The JSON of an event's `data:` line (None when there is none or it is not JSON)."""
    at = payload.find(b"data:")
    if at < 0:
        return None
    try:
        return orjson.loads(payload[at + 5:])
    except orjson.JSONDecodeError:
        return None
