"""A translated stream that still tells the writer what is already in memory.

The event writer (gateway/edge/sse.py) writes a provider's burst as one message
while the stream's `ready` says more payloads are in memory. A translator maps
each upstream payload to zero or more payloads of the client's dialect; as a
plain async generator it has no `ready`, so every translated payload went out
as its own write (23 writes per reply against 2 on the chat relay, counted on
the wire; docs/performance.md). `TranslatedStream` keeps the translated
payloads in a queue and, after handing one out, translates the upstream's
next payloads while they are in memory (its own `ready`), never waiting on the
network: `ready` is then exactly the translated payloads queued.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import orjson

from gateway.errors import UpstreamError


class TranslatedStream:
    def __init__(self, inner: AsyncIterator[bytes], feed: Callable[[bytes], list[bytes]],
                 finish: Callable[[], list[bytes]] | None = None) -> None:
        self._inner = inner
        self._feed = feed  # one upstream payload -> its translations (may raise)
        self._finish = finish  # what the translator adds after the upstream's end
        self._queue: deque[bytes] = deque()
        self._done = False
        self._failure: BaseException | None = None  # met while reading ahead: raised next

    @property
    def ready(self) -> int:
        return len(self._queue) + (1 if self._failure is not None else 0)

    def __aiter__(self) -> TranslatedStream:
        return self

    async def __anext__(self) -> bytes:
        while not self._queue:
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise failure
            if self._done:
                raise StopAsyncIteration
            await self._pull()
        item = self._queue.popleft()
        try:
            while not self._queue and not self._done and self._inner_ready():
                await self._pull()  # in memory: no wait on the network
        except Exception as exc:  # the item goes out first; the failure after it
            self._failure = exc
        return item

    def _inner_ready(self) -> bool:
        ready: int = getattr(self._inner, "ready", 0)
        return ready > 0

    async def _pull(self) -> None:
        try:
            payload = await anext(self._inner)
        except StopAsyncIteration:
            self._done = True
            if self._finish is not None:
                self._queue.extend(self._finish())
            return
        self._queue.extend(self._feed(payload))

    async def aclose(self) -> None:
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            await close()


class EventTranslator(Protocol):
    """Chat chunks in, named events out (chat -> Messages, chat -> Responses)."""

    def feed(self, chunk: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]: ...

    def finish(self) -> list[tuple[str, dict[str, Any]]]: ...


def from_chat(chunks: AsyncIterator[bytes], translator: EventTranslator,
              encode: Callable[[str, dict[str, Any]], bytes]) -> TranslatedStream:
    """Chat chunk payloads through `translator`, each event encoded as its dialect's payload;
    a chunk the translator cannot read is the provider's failure."""

    def feed(payload: bytes) -> list[bytes]:
        try:
            chunk = orjson.loads(payload)
            events = translator.feed(chunk) if isinstance(chunk, dict) else []
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamError("The provider sent a chunk that could not be "
                                "translated.") from exc
        return [encode(name, data) for name, data in events]

    def finish() -> list[bytes]:
        return [encode(name, data) for name, data in translator.finish()]

    return TranslatedStream(chunks, feed, finish)
