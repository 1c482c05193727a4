"""The Responses dialect's stream: what an event carries, how it is framed, how a stream ends.

What the edge's event writer (gateway/edge/sse.py, `StreamDialect`) asks of it, for a
stream of typed Responses events. A payload is one event as SSE frames it, without the
blank line that ends it: `event: <type>\ndata: <json>` (the relay passes the provider's
events on as it received them, gateway/providers/relay_common.py `split_named_events`;
the translator frames its own the same way). It goes out as it came, `\n\n` added: the
writer reads an event's type from its `event:` line and parses the JSON of a delta only
while nothing was delivered yet, and of the terminal event, never re-framing what it
relays. The events that carry the whole Response (`response.created`, `.in_progress`) are
kept as bytes, parsed only when a failure must echo that Response.

- Output: any `*.delta` event with a non-empty `delta` (output text, refusal, function call
  arguments, reasoning text and summaries, custom tool input, audio ...).
- Usage: the Response's in `response.completed` or `response.incomplete`, the provider's
  terminal success (SPEC "Three dialects": both are replies, charged like a clean finish).
  That event is the end of the stream, so the writer must always pass it on: the flow sets
  `include_usage` on a Responses `StreamReply`. `usage_event` adds the reply's `credits`
  to `response.usage`; `inspect` hands the writer the usage in the chat shape
  (`prompt_tokens`, `completion_tokens`) that the settlement records.
- The end: the provider's terminal event; there is no extra marker (`done` is empty).
- A failure: `response.failed`, a Response ending `cancelled`, or an `error` event from the
  provider is a provider failure, never charged. A stream that simply stops is one too. The
  provider's iterator ends normally in those cases, so the writer asks `failure()` after the
  relay (None after a terminal success) rather than trusting the end of the iterator.
- The in-band error after a failure is `response.failed` (the Response as
  `response.created` showed it, `status: failed`, numbered after the last event sent);
  nothing when the provider's own `response.failed` already ended the stream; an `error`
  event (which carries the gateway's own code) when the provider's terminal success was
  sent but the gateway could not record the reply.

One instance per stream: it remembers the Response and the last `sequence_number`.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.dialects.named_events import data_of
from gateway.dialects.responses.failed import failed_response
from gateway.errors import GatewayError, UpstreamError

SUCCESS = frozenset({b"response.completed", b"response.incomplete"})
FAILURE = frozenset({b"response.failed", b"response.cancelled", b"error"})
_TERMINAL = SUCCESS | FAILURE
_NAME = b"event: "
TERMINAL_EVENTS = tuple(_NAME + kind + b"\n" for kind in sorted(_TERMINAL))
_FAILED = _NAME + b"response.failed\n"
_ANNOUNCE = frozenset({b"response.created", b"response.in_progress"})  # carry the Response
_SEQUENCE = b'"sequence_number":'


def event_type(payload: bytes) -> bytes:
    """The event's type, from its `event:` line."""
    end = payload.find(b"\n")
    return payload[len(_NAME):end] if payload.startswith(_NAME) and end > 0 else b""


def chat_usage(usage: Any) -> dict[str, Any] | None:
    """A Response's usage in the names the settlement records (chat's)."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    total = usage.get("total_tokens")
    if total is None and isinstance(prompt, int) and isinstance(completion, int):
        total = prompt + completion
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def frame(kind: bytes, data: bytes) -> bytes:
    """An event as a payload of this dialect (no blank line yet)."""
    return _NAME + kind + b"\ndata: " + data


def sequence_of(payload: bytes) -> int | None:
    """The event's `sequence_number`, read from the bytes (the last such key: the objects an
    event nests, a Response or an item, carry none)."""
    at = payload.rfind(_SEQUENCE)
    if at < 0:
        return None
    digits = payload[at + len(_SEQUENCE):at + len(_SEQUENCE) + 20].lstrip()
    end = 0
    while end < len(digits) and digits[end:end + 1].isdigit():
        end += 1
    return int(digits[:end]) if end else None


class ResponsesStream:
    """The Responses dialect for one stream, as the event writer takes it.

    `response_id` / `model` name the Response of a stream that fails before the provider
    said `response.created` (it always does first; this is only a fallback)."""

    done = b""

    def __init__(self, *, response_id: str = "resp_unknown", model: str = "") -> None:
        self._unknown: dict[str, Any] = {
            "id": response_id, "object": "response", "created_at": 0, "model": model,
            "status": "in_progress", "output": [], "parallel_tool_calls": True,
            "tool_choice": "auto", "tools": [], "error": None, "incomplete_details": None,
            "instructions": None, "metadata": {}, "temperature": None, "top_p": None}
        self._announced = b""  # the last event that carried the Response (created/in_progress)
        self._sent = 0  # events sent to the client
        self._tail = b""  # the last of them (its sequence_number is read when needed)
        self.terminal: str | None = None  # the provider's terminal event, once seen
        self._failure: str | None = None  # the provider's message, when it failed
        self._failed_sent = False  # the provider's own response.failed reached the client
        self._parsed: tuple[bytes, dict[str, Any]] | None = None  # the terminal event, parsed

    # --- what the writer asks ------------------------------------------------------

    def may_carry_usage(self, payload: bytes) -> bool:
        """Only a terminal event holds usage; every terminal one is parsed (a failure too:
        `failure()` must know it)."""
        return payload.startswith(TERMINAL_EVENTS) or not payload.startswith(_NAME)

    def inspect(self, payload: bytes) -> tuple[bool, dict[str, Any] | None]:
        name = event_type(payload)
        if name in _ANNOUNCE:  # kept as bytes: parsed only if a failure must echo it
            self._announced = payload
            return False, None
        if name and not name.endswith(b".delta") and name not in _TERMINAL:
            return False, None  # no output, no usage: not parsed
        data = data_of(payload)
        if not isinstance(data, dict):
            return False, None
        kind = data.get("type")
        if not isinstance(kind, str):
            return False, None
        if kind.endswith(".delta"):
            delta = data.get("delta")
            return bool(delta), None
        if kind.encode() in _TERMINAL:
            self._parsed = (payload, data)  # usage_event adds the credits to it
            return False, self._terminal(kind, data)
        return False, None

    def event(self, payload: bytes) -> bytes:
        """The event as it came (`\n\n` ends it)."""
        self._sent += 1
        self._tail = payload
        if payload.startswith(_FAILED):
            self._failed_sent = True
        return payload + b"\n\n"

    def usage_event(self, payload: bytes, credits: int) -> bytes:
        """The terminal success as the client gets it: `credits` in `response.usage`."""
        parsed = self._parsed
        data = parsed[1] if parsed is not None and parsed[0] is payload else data_of(payload)
        data["response"]["usage"]["credits"] = credits
        return self.event(frame(str(data["type"]).encode(), orjson.dumps(data)))

    def error_event(self, error: GatewayError) -> bytes:
        if self._failed_sent:
            return b""  # the provider's response.failed already ended the stream
        last = sequence_of(self._tail)
        sequence = self._sent if last is None else last + 1
        if self.succeeded:  # the Response ended well; recording it did not
            data: dict[str, Any] = {"type": "error", "code": error.code,
                                    "message": error.message, "param": error.param,
                                    "sequence_number": sequence}
        else:
            data = {"type": "response.failed", "sequence_number": sequence,
                    "response": failed_response(self._announced_response(), code=error.code,
                                                message=error.message, status=error.status)}
        return self.event(frame(str(data["type"]).encode(), orjson.dumps(data)))

    def _announced_response(self) -> dict[str, Any]:
        """The Response as `response.created` / `.in_progress` last showed it (the fallback
        when the provider said neither, or not in JSON)."""
        data = data_of(self._announced) if self._announced else None
        response = data.get("response") if isinstance(data, dict) else None
        return response if isinstance(response, dict) else self._unknown

    # --- how the stream ended ------------------------------------------------------

    @property
    def succeeded(self) -> bool:
        """The provider sent its terminal success: `response.completed` / `.incomplete`."""
        return self.terminal in ("response.completed", "response.incomplete")

    def failure(self) -> GatewayError | None:
        """After the provider's iterator ended: None for a terminal success, else the
        provider failure (not charged) the writer ends the stream with."""
        if self.succeeded:
            return None
        if self._failure is not None:
            return UpstreamError(f"The provider's response failed: {self._failure}")
        return UpstreamError("The provider ended the stream before the response finished.")

    def _terminal(self, kind: str, data: dict[str, Any]) -> dict[str, Any] | None:
        response = data.get("response")
        response = response if isinstance(response, dict) else {}
        cancelled = response.get("status") == "cancelled"
        self.terminal = "response.cancelled" if cancelled else kind
        if self.succeeded:
            return chat_usage(response.get("usage"))
        error = response.get("error") if kind != "error" else data
        message = error.get("message") if isinstance(error, dict) else None
        self._failure = str(message or kind)
        return None
