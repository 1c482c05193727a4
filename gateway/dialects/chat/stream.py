"""The chat dialect's stream: what a chunk carries, how events are framed, how a stream ends.

The edge's event writer (gateway/edge/sse.py) relays any dialect's stream;
this module is what it asks of chat completions:
  - `inspect(payload)`: does the chunk carry output (the reply counts as
    delivered once such a chunk reached the client), and is it the usage chunk?
  - `may_carry_usage(payload)`: a cheap test that lets the writer skip parsing;
  - `usage_event(payload, credits)`: the usage chunk as passed on, `credits` added;
  - `event(payload)`, `DONE`, `error_event(error)`: the framing and the two endings
    (`data: [DONE]` after success; an in-band `data: {"error": ...}` after a failure).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import GatewayError, sse_error

DONE = b"data: [DONE]\n\n"

# A delta's value that carries nothing: the opening chunk's `"content": ""`, `"refusal": null`.
_EMPTY: tuple[object, ...] = (None, "", [], {})


def inspect(payload: bytes) -> tuple[bool, dict[str, Any] | None]:
    """(carries output, usage if this is the usage-only chunk) of one chunk payload.

    Output is any delta field beyond `role` with a value (SPEC: "any delta beyond the role"):
    `content`, `tool_calls`, `refusal`, `reasoning_content` / `reasoning` (DeepSeek, vLLM),
    `audio`, `function_call`, and whatever a provider adds."""
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False, None
    if not isinstance(chunk, dict):
        return False, None
    choices = chunk.get("choices")
    if not choices:
        usage = chunk.get("usage")
        return False, usage if isinstance(usage, dict) else None
    for choice in choices:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict) and any(
            key != "role" and value not in _EMPTY for key, value in delta.items()
        ):
            return True, None
    return False, None


def may_carry_usage(payload: bytes) -> bool:
    """False only when the chunk surely has no usage: no `"usage"` key, or it is null.

    With `include_usage` (always asked of the provider) every chunk ends with
    `"usage":null`: one backward search finds it, then a look at its value.
    """
    at = payload.rfind(b'"usage"')
    return at >= 0 and not payload[at + 7:at + 20].lstrip(b" \t\r\n:").startswith(b"null")


def event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def usage_event(payload: bytes, credits: int) -> bytes:
    """The usage chunk as the client gets it (when it asked): with the reply's `credits`."""
    chunk = orjson.loads(payload)
    chunk["usage"]["credits"] = credits
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def error_event(error: GatewayError) -> bytes:
    return sse_error(error)


class ChatStream:
    """The chat dialect as the event writer takes it (gateway.edge.sse.StreamDialect)."""

    done = DONE
    inspect = staticmethod(inspect)
    may_carry_usage = staticmethod(may_carry_usage)
    event = staticmethod(event)
    usage_event = staticmethod(usage_event)
    error_event = staticmethod(error_event)


CHAT_STREAM = ChatStream()
