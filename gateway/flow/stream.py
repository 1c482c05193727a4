"""SSE relay with settlement: the stream's hold resolves in `finally`, shielded from cancellation.

1. Headers go out once the provider sent its first chunk (an error before
   that is an ordinary HTTP error, handled by the pipeline).
2. Each chunk is written as `data: ...\\n\\n`; chunks the provider sent together
   (the provider's iterator says how many more are `ready`) go out as one
   message. The reply counts as delivered once a chunk with any output has
   been written: any non-empty delta field beyond the role (content, tool
   calls, refusal, reasoning, audio, or a field a provider adds).
3. The usage chunk (the gateway always asks for it) is passed on only when
   the client asked, with `credits` added.
4. When the provider finishes: settle (durable), then `data: [DONE]`.
   A provider error: an in-band `data: {"error": ...}`, no [DONE], void.
   The gateway's total deadline (DeadlineExceeded): the in-band error too, but
   settled if delivered. The client leaving: settle if delivered (the provider
   bills it), else void; the upstream is cancelled either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.crashpoints import Crash, no_crash
from gateway.errors import DeadlineExceeded, GatewayError, UpstreamError, sse_error

log = logging.getLogger("bookbag.stream")

DONE = b"data: [DONE]\n\n"
Finish = Callable[[bool, dict[str, Any] | None], Awaitable[None]]


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


# A delta's value that carries nothing: the opening chunk's `"content": ""`, `"refusal": null`.
_EMPTY: tuple[object, ...] = (None, "", [], {})


def _may_carry_usage(payload: bytes) -> bool:
    """False only when the chunk surely has no usage: no `"usage"` key, or it is null.

    With `include_usage` (always asked of the provider) every chunk ends with
    `"usage":null`: one backward search finds it, then a look at its value.
    """
    at = payload.rfind(b'"usage"')
    return at >= 0 and not payload[at + 7:at + 20].lstrip(b" \t\r\n:").startswith(b"null")


class MeteredStream(Response):
    """An SSE response relaying provider chunks, whose `finish` settles or voids the hold.

    `finish(charge, usage)` is called exactly once, shielded: `charge=True`
    when the reply was delivered (completed, or the client left after
    content reached it), `False` otherwise. It must be durable when it
    returns; the `[DONE]` line is written only after it.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        first: bytes,
        rest: AsyncIterator[bytes],
        *,
        finish: Finish,
        include_usage: bool,
        credits: int,
        headers: dict[str, str],
        events: list[bytes] | None = None,
        crash: Crash = no_crash,
    ) -> None:
        # Not Response.__init__: with no body it would announce `content-length: 0`.
        self.status_code = 200
        self.background = None
        self.init_headers(headers)
        self._first = first
        self._rest = rest
        self._finish = finish
        self._include_usage = include_usage
        self._credits = credits
        self._events = events  # when given, every event the client received (idempotent replay)
        self._crash = crash  # test-only crash points (crashpoints.py)
        self.delivered = False
        self.completed = False
        self.client_gone = False
        self.error: GatewayError | None = None
        self.usage: dict[str, Any] | None = None
        self._relaying = True  # until `_relay` returns: the watcher may cancel it
        self._cut = False  # the watcher cancelled the relay (the client left)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        # The relay runs in this task; a watcher task reads `receive` and, when the client
        # leaves mid-relay, cancels this task (one task per stream, no `asyncio.wait`).
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        watcher = asyncio.ensure_future(self._watch(receive, task))
        try:
            try:
                await self._relay(send)
            finally:
                self._relaying = False
        except asyncio.CancelledError:
            # Only the watcher's cancel ends here quietly; any other is passed on.
            if not (self._cut and task.uncancel() <= cancelling):
                raise
        finally:
            watcher.cancel()
            await asyncio.shield(self._end(send))

    async def _watch(self, receive: Receive, relay: asyncio.Task[Any]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.client_gone = True
                if self._relaying:
                    self._cut = True
                    relay.cancel()
                return

    async def _relay(self, send: Send) -> None:
        usage: dict[str, Any] | None = None
        held: list[bytes] = []  # events received together, written as one message
        held_content = False
        try:
            payload: bytes | None = self._first
            while payload is not None:
                if not (self.delivered or held_content) or _may_carry_usage(payload):
                    content, chunk_usage = inspect(payload)
                else:  # after the first content only the usage chunk matters: skip parsing
                    content, chunk_usage = False, None
                if chunk_usage is not None:
                    usage = chunk_usage
                    if self._include_usage:
                        chunk = orjson.loads(payload)
                        chunk["usage"]["credits"] = self._credits
                        held.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
                else:
                    if content and not (self.delivered or held_content):
                        # The server drops writes to a closed connection without a word: let
                        # the watcher see a client that already left (e.g. while the provider
                        # was still thinking) before this chunk may count as delivered.
                        await asyncio.sleep(0)
                        if self.client_gone:
                            return
                    held.append(b"data: " + payload + b"\n\n")
                    held_content = held_content or content
                if not getattr(self._rest, "ready", 0):  # the next payload needs a read: write now
                    await self._flush(send, held, held_content)
                    held_content = False
                try:
                    payload = await anext(self._rest, None)
                except Exception:
                    await self._flush(send, held, held_content)  # what came before the failure
                    raise
            await self._flush(send, held, held_content)
            self.completed = True
            self.usage = usage
        except GatewayError as exc:
            self.error = exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in a provider: never leave the hold unresolved
            log.exception("stream relay failed")
            self.error = UpstreamError(f"The stream failed: {type(exc).__name__}.")
        finally:
            with contextlib.suppress(Exception):
                await self._rest.aclose()  # type: ignore[attr-defined]  # async generators have aclose

    async def _flush(self, send: Send, held: list[bytes], content: bool) -> None:
        """Write the held events as one message (one write for a provider's burst)."""
        if held:
            await self._send(send, held[0] if len(held) == 1 else b"".join(held))
            held.clear()
        if content:
            self.delivered = True
            self._crash("mid_stream")

    async def _send(self, send: Send, event: bytes) -> None:
        await send({"type": "http.response.body", "body": event, "more_body": True})
        if self._events is not None:
            self._events.append(event)

    async def _end(self, send: Send) -> None:
        # Delivered output is charged unless the provider broke off: the client leaving and
        # the gateway's own deadline are not the provider's failure (it bills both).
        charge = self.completed or (self.delivered and (
            self.client_gone or isinstance(self.error, DeadlineExceeded)))
        try:
            await self._finish(charge, self.usage)
        except GatewayError as exc:
            self.completed, self.error = False, exc
        except Exception:
            log.exception("settling a stream failed")
            self.completed = False
            self.error = UpstreamError("The reply could not be recorded; it was not charged.")
        if self.client_gone:
            return
        tail = DONE if self.completed else sse_error(self.error or UpstreamError("stream failed"))
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": tail, "more_body": False})
