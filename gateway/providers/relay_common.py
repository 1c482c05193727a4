"""What the byte relays share (OpenAI-compatible and Anthropic): a provider's error
answer as a gateway error with keys scrubbed, the SSE payload iterator with its `ready`
count, the two SSE splitters (chat's `data:` payloads; the named events of Messages and
Responses, passed on as framed), and failure reasons without addresses."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import orjson

from gateway.errors import GatewayError, ProviderAuthFailed, ProviderRejected, UpstreamError
from gateway.providers.upstream import UpstreamFailure
from gateway.types import ProviderCall

_PASS_THROUGH = {400, 404, 409, 413, 415, 422, 429}


def scrub(text: str, key: str | None) -> str:
    if key:
        text = text.replace(key, "[redacted]")
    return text


def upstream_status_error(status: int, body: bytes, call: ProviderCall) -> GatewayError:
    """A provider's non-200 answer as a gateway error (keys never echoed)."""
    message, code, param, type_ = "", None, None, None
    try:
        parsed: Any = orjson.loads(body)
        err = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or "")
            code = err.get("code") if isinstance(err.get("code"), str) else None
            param = err.get("param") if isinstance(err.get("param"), str) else None
            type_ = err.get("type") if isinstance(err.get("type"), str) else None
        elif isinstance(err, str):
            message = err
    except orjson.JSONDecodeError:
        message = body[:300].decode("utf-8", "replace")
    if status in (401, 403):
        if call.byo:
            return ProviderAuthFailed(
                f"The provider rejected the API key sent with this request (HTTP {status})."
            )
        return UpstreamError(
            f"The provider rejected the gateway's own API key for `{call.model.id}` (HTTP {status})."
        )
    message = scrub(message, call.api_key) or f"The provider answered HTTP {status}."
    if status in _PASS_THROUGH:
        return ProviderRejected(status, message, code=code, param=param, type_=type_)
    return UpstreamError(f"The provider failed (HTTP {status}): {message}"[:1000])


class SsePayloads:
    """The payloads of one SSE stream; `ready` counts those already received after this one
    (the stream's end, `[DONE]`, counts as one).

    A provider burst (several events in one read) can so be written to the client as
    one message (`edge/sse.py`): while `ready` > 0 the next payload is in memory.
    """

    def __init__(self, events: Callable[[ProviderCall, SsePayloads], AsyncGenerator[bytes, None]],
                 call: ProviderCall) -> None:
        self.ready = 0
        self._events = events(call, self)

    def __aiter__(self) -> SsePayloads:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        return self._events.__anext__()

    async def aclose(self) -> None:
        await self._events.aclose()


def split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The `data:` payloads of the complete events in `buffer` (`\n` line ends), and the
    rest. Comments (keep-alives), event names and ids are skipped."""
    # Every newline one of an event-ending pair: each event is one line, no need to split
    # the events into lines (the usual case: a provider sends `data: {...}\n\n`).
    one_line = buffer.count(b"\n") == 2 * buffer.count(b"\n\n")
    *events, rest = buffer.split(b"\n\n")
    if one_line:
        return [event[5:].strip() for event in events if event.startswith(b"data:")], rest
    return [line[5:].strip() for event in events for line in event.split(b"\n")
            if line.startswith(b"data:")], rest


def split_named_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The complete events in `buffer` (`\\n` line ends) as `event: <type>\\ndata: <json>`,
    and the rest: the dialects whose events are named (Messages, Responses). Comments and
    events without data are skipped; an event without an `event:` line is named by its
    data's `type`. An event in the usual shape is passed on as it came, not re-framed."""
    *blocks, rest = buffer.split(b"\n\n")
    out = []
    for block in blocks:
        if block.startswith(b"event: ") and block.count(b"\n") == 1 and b"\ndata: " in block:
            out.append(block)  # the usual shape: passed on as it came
            continue
        name = data = b""
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip()
            elif line.startswith(b"data:"):
                data = line[5:].strip()
        if not data:
            continue
        if not name:
            try:
                name = str(orjson.loads(data).get("type", "")).encode()
            except (orjson.JSONDecodeError, AttributeError):
                continue
        out.append(b"event: " + name + b"\ndata: " + data)
    return out, rest


def reason(exc: OSError) -> str:
    """What failed, without addresses or anything the request carried."""
    return str(exc) if isinstance(exc, UpstreamFailure) else f"{type(exc).__name__}."
