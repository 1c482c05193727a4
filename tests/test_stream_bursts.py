"""Streams whose events arrive together (a provider's burst) are relayed whole and in order.

The fake provider in `fast` mode writes a whole stream with one write, so the relay
reads many events at once and the gateway writes them to the client together
(`SsePayloads.ready`, `MeteredStream._flush`). These tests check what the
client receives and what is charged; nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.providers.relay import RelayProvider
from gateway.types import ModelEntry, ProviderCall, Timeouts
from tests.fake_provider import OPENAI_KEY, FakeProvider
from tests.harness import RunningGateway, running, sqlite_settings
from tests.relay_pricing import relay_only_pricing

CHAT = "/v1/chat/completions"
BODY: dict[str, Any] = {"model": "gpt-4o-mini", "stream": True,
                        "messages": [{"role": "user", "content": "one two three four five"}]}


@pytest.fixture(scope="module")
def bursty() -> Iterator[FakeProvider]:
    provider = FakeProvider(fast=True).start()
    yield provider
    provider.stop()


@pytest.fixture
def gateway(tmp_path: Path, bursty: FakeProvider) -> Iterator[RunningGateway]:
    bursty.reset()
    pricing = tmp_path / "pricing.toml"
    pricing.write_text(relay_only_pricing(bursty))
    with running(sqlite_settings(tmp_path, pricing)) as gw:
        yield gw


def events(lines: list[str]) -> list[Any]:
    return [orjson.loads(line.removeprefix("data: ")) for line in lines
            if line.startswith("data: {")]


def text_of(chunks: list[Any]) -> str:
    return "".join(ch["delta"].get("content") or "" for c in chunks for ch in c.get("choices", []))


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_burst_arrives_whole_and_is_charged_once(gateway: RunningGateway,
                                                   include_usage: bool) -> None:
    ws, key = gateway.workspace("free")
    body = {**BODY, "stream_options": {"include_usage": True}} if include_usage else BODY
    with gateway.client(key) as c, c.stream("POST", CHAT, json=body) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = events(lines)
    assert text_of(chunks) == "Hello from fake gpt-4o-mini: one two three four five"
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert usage == ([{**usage[0], "credits": 1}] if include_usage else [])
    rows = gateway.wait_ledger(ws, 1)
    assert [row["credits"] for row in rows] == [1]
    assert gateway.balance(key)["balance"] == 99


def test_an_error_inside_a_burst_comes_after_the_events_before_it(
        gateway: RunningGateway, bursty: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    bursty.fail("inband_error", after=3, message="upstream exploded")
    with gateway.client(key) as c, c.stream("POST", CHAT, json=BODY) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert "data: [DONE]" not in lines
    *relayed, last = events(lines)
    assert last["error"]["code"] == "upstream_error"
    assert text_of(relayed) == "Hello from fake "  # the three content pieces before the error
    assert gateway.ledger(ws) == []
    assert gateway.balance(key)["balance"] == 100


def test_the_relay_counts_the_payloads_already_received(bursty: FakeProvider) -> None:
    model = ModelEntry(id="gpt-4o-mini", provider="openai", upstream_model="gpt-4o-mini",
                       credits=1, metered=True, byo=False, api_base=bursty.openai_base)
    call = ProviderCall(model, {**BODY, "stream_options": {"include_usage": True}}, OPENAI_KEY,
                        False, Timeouts(connect=5, idle=5, total=10))

    async def collect() -> list[tuple[bytes, int]]:
        relay = RelayProvider()
        try:
            stream = relay.stream(call)
            return [(payload, stream.ready) async for payload in stream]
        finally:
            await relay.close()

    seen = asyncio.run(collect())
    chunks = [orjson.loads(payload) for payload, _ in seen]
    assert text_of(chunks) == "Hello from fake gpt-4o-mini: one two three four five"
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    readies = [ready for _, ready in seen]
    assert readies[-1] in (0, 1)  # 1 when [DONE] came in the same read
    for i, ready in enumerate(readies):  # a count runs down to 0 before the next read
        assert 0 <= ready <= len(readies) - i  # those after it, and [DONE]
        if i and readies[i - 1]:
            assert ready == readies[i - 1] - 1


def body_writes(url: str, key: str, body: dict[str, Any]) -> int:
    """How many chunks of the HTTP/1.1 chunked body carried a streamed reply: each is one
    write of the gateway (the server frames every `send` as one chunk)."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(url)
    payload = orjson.dumps(body)
    request = (f"POST {CHAT} HTTP/1.1\r\nHost: {where.netloc}\r\nAuthorization: Bearer {key}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
               "Connection: close\r\n\r\n").encode() + payload
    with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
        sock.sendall(request)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower(), head
    writes = 0
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return writes
        writes += 1
        rest = rest[size + 2:]


def test_a_translated_burst_is_written_together_like_a_relayed_one(
        tmp_path: Path, bursty: FakeProvider) -> None:
    """A provider's burst reaches the client in a few writes on a translated route too
    (Messages events -> chat chunks, gateway/providers/translated_stream.py), not one write
    per translated chunk."""
    from tests.harness import test_pricing

    bursty.reset()
    pricing = tmp_path / "pricing.toml"
    pricing.write_text(test_pricing(bursty))
    with running(sqlite_settings(tmp_path, pricing)) as gw:
        _, key = gw.workspace("free")
        relayed = body_writes(gw.url, key, BODY)
        translated = body_writes(gw.url, key, {**BODY, "model": "claude-haiku-4-5"})
    assert translated <= relayed + 1, (relayed, translated)
