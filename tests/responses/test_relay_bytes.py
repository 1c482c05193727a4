"""A relayed Responses stream reaches the client as the provider sent it: the relay hands
on each event as received (`event: <type>\\ndata: <json>`) and the dialect adds only the
blank line that ends it, whatever the provider's reads look like; the terminal event
ends the stream. A real socket server plays the provider, writing a recorded stream in
small pieces."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.dialects.responses.stream import ResponsesStream
from gateway.providers.relay import RelayProvider
from gateway.types import RESPONSES, ModelEntry, ProviderCall, Timeouts
from tests.dialects.fixtures import load


def recorded_stream() -> bytes:
    """The recorded events framed as OpenAI frames them, an event after the terminal one
    (which the relay must not read on to) and a keep-alive comment."""
    events = load("responses_stream_text")["events"]
    framed = [b"event: " + e["event"].encode() + b"\ndata: " + orjson.dumps(e["data"]) + b"\n\n"
              for e in events]
    return b": keep-alive\n\n" + b"".join(framed)


async def serve(body: bytes, piece: int) -> tuple[asyncio.Server, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        for at in range(0, len(body), piece):
            part = body[at:at + piece]
            writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("piece", [7, 100, 1 << 20])
def test_the_relayed_events_are_the_providers_bytes(piece: int) -> None:
    body = recorded_stream()

    async def relay() -> list[bytes]:
        server, port = await serve(body + b"event: late\ndata: {}\n\n", piece)
        model = ModelEntry(id="gpt-4o-mini", provider="openai", upstream_model="gpt-4o-mini",
                           credits=1, metered=True, byo=False,
                           api_base=f"http://127.0.0.1:{port}/v1")
        call = ProviderCall(model, {"model": "gpt-4o-mini", "input": "hi", "stream": True},
                            "sk-test", False, Timeouts(connect=5, idle=5, total=10),
                            dialect=RESPONSES)
        provider = RelayProvider()
        try:
            return [payload async for payload in provider.stream(call)]
        finally:
            await provider.close()
            server.close()
            await server.wait_closed()

    payloads = asyncio.run(relay())
    dialect = ResponsesStream()
    sent = b"".join(dialect.event(payload) for payload in payloads)
    assert sent == body.removeprefix(b": keep-alive\n\n")  # same bytes, nothing after the end
    assert payloads[-1].startswith(b"event: response.completed\n")
