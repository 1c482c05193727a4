"""The relay's SSE splitting: the one-line fast path gives what splitting into lines gives."""

from __future__ import annotations

import pytest

from gateway.providers.relay import split_events


def _by_lines(buffer: bytes) -> tuple[list[bytes], bytes]:
    *events, rest = buffer.split(b"\n\n")
    return [line[5:].strip() for event in events for line in event.split(b"\n")
            if line.startswith(b"data:")], rest


CASES = [
    b'data: {"a":1}\n\ndata: {"b":2}\n\n',
    b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: {"c"',
    b'data: {"a":1}\n\ndata: {"b":2}\n',
    b": keep-alive\n\ndata: {\"a\":1}\n\n",
    b"event: message\ndata: {\"a\":1}\nid: 7\n\ndata: [DONE]\n\n",
    b"data: one\ndata: two\n\n",
    b"data: x\n\n\ndata: y\n\n",
    b"data: x\n\n\n\ndata: y\n\n",
    b"data:x\n\ndata:   y  \n\n",
    b"\n\n",
    b"data: [DONE]\n\n",
    b"retry: 10\n\ndata: a\n\npartial\n",
]


@pytest.mark.parametrize("buffer", CASES)
def test_split_events_matches_line_split(buffer: bytes) -> None:
    assert split_events(buffer) == _by_lines(buffer)


def test_split_events_payloads() -> None:
    payloads, rest = split_events(b": ping\n\nevent: x\ndata: {\"a\":1}\n\ndata: [DONE]\n\ndata: {")
    assert payloads == [b'{"a":1}', b"[DONE]"]
    assert rest == b"data: {"
