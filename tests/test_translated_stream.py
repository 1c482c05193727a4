"""TranslatedStream: a translated stream keeps telling the writer what is in memory
(gateway/providers/translated_stream.py), so a burst still goes out as one write."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import UpstreamError
from gateway.providers.translated_stream import TranslatedStream


class Upstream:
    """Payloads that arrive in reads: each read's payloads are in memory together (`ready`
    counts those after the one handed out, as the relay's SsePayloads does)."""

    def __init__(self, reads: list[list[bytes]]) -> None:
        self._reads = reads
        self._buffer: list[bytes] = []
        self.ready = 0
        self.network_waits = 0
        self.closed = False

    def __aiter__(self) -> Upstream:
        return self

    async def __anext__(self) -> bytes:
        if not self._buffer:
            if not self._reads:
                raise StopAsyncIteration
            self.network_waits += 1
            await asyncio.sleep(0)
            self._buffer = list(self._reads.pop(0))
        payload = self._buffer.pop(0)
        self.ready = len(self._buffer)
        return payload

    async def aclose(self) -> None:
        self.closed = True


def double(payload: bytes) -> list[bytes]:
    if payload == b"skip":
        return []
    if payload == b"bad":
        raise UpstreamError("untranslatable")
    return [payload + b"1", payload + b"2"]


async def drain(stream: TranslatedStream) -> list[tuple[bytes, int]]:
    return [(item, stream.ready) async for item in stream]


async def test_a_burst_stays_in_memory_and_ready_counts_its_translations() -> None:
    upstream = Upstream([[b"a", b"skip", b"b"], [b"c"]])
    stream = TranslatedStream(upstream, double, lambda: [b"end"])
    seen = await drain(stream)
    # a1 a2 b1 b2 came from one read: ready is 0 (write now) only where a read must follow
    assert seen == [(b"a1", 1), (b"a2", 2), (b"b1", 1), (b"b2", 0),
                    (b"c1", 1), (b"c2", 0), (b"end", 0)]
    assert upstream.network_waits == 2  # no read ahead past what was in memory
    await stream.aclose()
    assert upstream.closed


async def test_a_failure_met_while_reading_ahead_comes_after_the_payload_before_it() -> None:
    stream = TranslatedStream(Upstream([[b"a", b"bad"]]), double)
    assert await anext(stream) == b"a1"
    assert await anext(stream) == b"a2"
    with pytest.raises(UpstreamError):
        await anext(stream)


async def test_a_payload_with_no_translation_waits_for_the_next_read() -> None:
    upstream = Upstream([[b"skip"], [b"x"]])
    stream = TranslatedStream(upstream, double)
    assert await drain(stream) == [(b"x1", 1), (b"x2", 0)]
