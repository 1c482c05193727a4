"""The event writer: a `StreamReply` relayed over ASGI as server-sent events.

1. Headers go out once the provider sent its first payload (an error before
   that is an ordinary HTTP error, raised by the flow).
2. Each payload is written as one event; payloads the provider sent together
   (its iterator says how many more are `ready`) go out as one message. Once
   a flush carried output (the dialect says what counts), the settlement is
   told the reply was delivered.
3. The usage payload (the gateway always asks for it) is passed on only when
   the client asked, with `credits` added by the dialect.
3b. A dialect whose provider ends a failed stream in-band and then closes cleanly
   (Responses: `response.failed`) says so through `failure()` once the provider's
   iterator ends: that stream is a provider failure, never a completion.
4. When the stream ends -- completed, provider error, the gateway's deadline,
   or the client leaving (a watcher task reads `receive` and cancels the
   relay) -- the settlement decides charge or void (gateway/flow/settlement.py),
   durable before the tail: the dialect's end marker after success, its in-band
   error otherwise, nothing to a client that left. The upstream is closed either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol, runtime_checkable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.errors import GatewayError, UpstreamError
from gateway.flow.outcome import StreamReply

log = logging.getLogger("bookbag.stream")

STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class StreamDialect(Protocol):
    """What the writer needs of a dialect (gateway/dialects/chat/stream.py)."""

    @property
    def done(self) -> bytes:
        """The end marker after a stream that completed."""

    def inspect(self, payload: bytes) -> tuple[bool, dict[str, Any] | None]:
        """(carries output, usage if this is the usage payload)"""

    def may_carry_usage(self, payload: bytes) -> bool:
        """False only when the payload surely holds no usage (skips parsing)."""

    def event(self, payload: bytes) -> bytes:
        """One payload framed as an event."""

    def usage_event(self, payload: bytes, credits: int) -> bytes:
        """The usage payload as passed on, with the reply's credits."""

    def error_event(self, error: GatewayError) -> bytes:
        """The in-band error that ends a failed stream."""


@runtime_checkable
class EndsInBand(Protocol):
    """A dialect whose provider reports a failed stream as an event and a clean end
    (gateway/dialects/responses/stream.py): asked how the stream ended."""

    def failure(self) -> GatewayError | None:
        """None after the provider's terminal success, else the provider's failure."""


class SseResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, reply: StreamReply, dialect: StreamDialect,
                 headers: dict[str, str]) -> None:
        # Not Response.__init__: with no body it would announce `content-length: 0`.
        self.status_code = 200
        self.background = None
        self.init_headers({**headers, **reply.headers, **STREAM_HEADERS})
        self._reply = reply
        self._settlement = reply.settlement
        self._dialect = dialect
        self._in_band = dialect if isinstance(dialect, EndsInBand) else None
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
        dialect, reply = self._dialect, self._reply
        rest = reply.rest
        usage: dict[str, Any] | None = None
        held: list[bytes] = []  # events received together, written as one message
        held_content = False
        try:
            payload: bytes | None = reply.first
            while payload is not None:
                if not (self.delivered or held_content) or dialect.may_carry_usage(payload):
                    content, chunk_usage = dialect.inspect(payload)
                else:  # after the first content only the usage payload matters: skip parsing
                    content, chunk_usage = False, None
                if chunk_usage is not None:
                    usage = chunk_usage
                    if reply.include_usage:
                        held.append(dialect.usage_event(payload, reply.credits))
                else:
                    if content and not (self.delivered or held_content):
                        # The server drops writes to a closed connection without a word: let
                        # the watcher see a client that already left (e.g. while the provider
                        # was still thinking) before this payload may count as delivered.
                        await asyncio.sleep(0)
                        if self.client_gone:
                            return
                    held.append(dialect.event(payload))
                    held_content = held_content or content
                if not getattr(rest, "ready", 0):  # the next payload needs a read: write now
                    await self._flush(send, held, held_content)
                    held_content = False
                try:
                    payload = await anext(rest, None)
                except Exception:
                    await self._flush(send, held, held_content)  # what came before the failure
                    raise
            await self._flush(send, held, held_content)
            failed = self._in_band.failure() if self._in_band is not None else None
            if failed is not None:
                raise failed
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
                await rest.aclose()  # type: ignore[attr-defined]  # async generators have aclose

    async def _flush(self, send: Send, held: list[bytes], content: bool) -> None:
        """Write the held events as one message (one write for a provider's burst)."""
        if held:
            event = held[0] if len(held) == 1 else b"".join(held)
            await send({"type": "http.response.body", "body": event, "more_body": True})
            events = self._settlement.events
            if events is not None:  # kept for the Idempotency-Key's replay
                events.append(event)
            held.clear()
        if content:
            self.delivered = True
            self._settlement.output_delivered()

    async def _end(self, send: Send) -> None:
        failed = await self._settlement.end(completed=self.completed,
                                            client_gone=self.client_gone,
                                            error=self.error, usage=self.usage)
        if failed is not None:
            self.completed, self.error = False, failed
        if self.client_gone:
            return
        dialect = self._dialect
        tail = dialect.done if self.completed else \
            dialect.error_event(self.error or UpstreamError("stream failed"))
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": tail, "more_body": False})
