"""A minimal, fast fake provider for the benchmark: fixed replies from a raw asyncio Protocol.

`tests/fake_provider.py` is the strict fake the tests use (aiohttp, validates
every request). Here speed is all that matters, so that the provider is never
the bottleneck: each request is answered with a prebuilt byte string.

    POST /v1/chat/completions   JSON (~800 B with usage), or with "stream": true
                                22 SSE events (role, 19 content, finish, usage) + [DONE]
    POST /v1/messages           an Anthropic Messages reply (JSON or SSE): the Claude routes
    POST /v1/responses          a Responses reply (JSON, or the typed SSE events with the
                                same 19 text deltas and usage in `response.completed`)

HTTP/1.1 keep-alive, requests with a Content-Length body (chunked request bodies
are refused with 411). `--delay-ms` answers after a fixed delay on a second port.

    python bench/fake.py --port 9100 [--slow-port 9101 --delay-ms 50]

prints `READY <port> <slow port>` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
from typing import Any, cast

import orjson

MODEL = "gpt-4o-mini-2024-07-18"
PIECES = [
    "Hello", " from", " the", " bench", " provider", ":", " a", " fixed", " reply", " of",
    " nineteen", " pieces", " so", " every", " run", " relays", " the", " same", " bytes.",
]
TEXT = "".join(PIECES)
USAGE = {
    "prompt_tokens": 24, "completion_tokens": len(PIECES), "total_tokens": 24 + len(PIECES),
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                  "accepted_prediction_tokens": 0,
                                  "rejected_prediction_tokens": 0},
}
BASE = {"id": "chatcmpl-bench0001", "created": 1764000000, "model": MODEL,
        "service_tier": "default", "system_fingerprint": "fp_bench0001"}
STREAM_RE = re.compile(rb'"stream"\s*:\s*true')


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def openai_json() -> bytes:
    message = {"role": "assistant", "content": TEXT, "refusal": None, "annotations": []}
    return orjson.dumps({**BASE, "object": "chat.completion", "choices": [
        {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
    ], "usage": USAGE})


def openai_stream() -> bytes:
    base = {**BASE, "object": "chat.completion.chunk"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**base, "choices": [choice], "usage": None})

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    events += [chunk({"content": piece}) for piece in PIECES]
    events.append(chunk({}, "stop"))
    events.append(_sse({**base, "choices": [], "usage": USAGE}))
    assert len(events) == 22
    return b"".join(events) + b"data: [DONE]\n\n"


def anthropic_message() -> dict[str, Any]:
    return {"id": "msg_bench0001", "type": "message", "role": "assistant",
            "model": "claude-haiku-4-5-20251001", "content": [{"type": "text", "text": TEXT}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 24, "output_tokens": len(PIECES),
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}


def anthropic_stream() -> bytes:
    message = anthropic_message()
    start = {**message, "content": [], "stop_reason": None,
             "usage": {**message["usage"], "output_tokens": 1}}
    events = [_sse({"type": "message_start", "message": start}, "message_start"),
              _sse({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}, "content_block_start")]
    events += [_sse({"type": "content_block_delta", "index": 0,
                     "delta": {"type": "text_delta", "text": p}}, "content_block_delta")
               for p in PIECES]
    events.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    events.append(_sse({"type": "message_delta",
                        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                        "usage": {"output_tokens": len(PIECES)}}, "message_delta"))
    events.append(_sse({"type": "message_stop"}, "message_stop"))
    return b"".join(events)


def responses_object() -> dict[str, Any]:
    """A completed Response (the shape tests/fakes/responses_reply.py validates)."""
    part = {"type": "output_text", "text": TEXT, "annotations": [], "logprobs": []}
    item = {"type": "message", "id": "msg_bench0001", "status": "completed",
            "role": "assistant", "content": [part]}
    usage = {"input_tokens": 24, "output_tokens": len(PIECES), "total_tokens": 24 + len(PIECES),
             "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
             "output_tokens_details": {"reasoning_tokens": 0}}
    return {"id": "resp_bench0001", "object": "response", "created_at": 1764000000,
            "status": "completed", "background": False, "error": None,
            "incomplete_details": None, "instructions": None, "max_output_tokens": None,
            "model": MODEL, "output": [item], "parallel_tool_calls": True,
            "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
            "service_tier": "default", "store": False, "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled",
            "usage": usage, "user": None, "metadata": {}}


def responses_stream() -> bytes:
    """The typed events of the real stream, numbered, usage only in `response.completed`."""
    final = responses_object()
    item = final["output"][0]
    part = item["content"][0]
    pending = {**final, "status": "in_progress", "output": [], "usage": None}
    at = {"output_index": 0, "item_id": item["id"]}
    payloads: list[dict[str, Any]] = [
        {"type": "response.created", "response": pending},
        {"type": "response.in_progress", "response": pending},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**item, "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", **at, "content_index": 0,
         "part": {**part, "text": ""}}]
    payloads += [{"type": "response.output_text.delta", **at, "content_index": 0, "delta": p,
                  "logprobs": []} for p in PIECES]
    payloads += [
        {"type": "response.output_text.done", **at, "content_index": 0, "text": TEXT,
         "logprobs": []},
        {"type": "response.content_part.done", **at, "content_index": 0, "part": part},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": final}]
    return b"".join(_sse({"type": data["type"], "sequence_number": n, **data}, data["type"])
                    for n, data in enumerate(payloads))


def _json_response(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _sse_response(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
            + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")


REPLIES = {
    (b"/v1/chat/completions", False): _json_response(openai_json()),
    (b"/v1/chat/completions", True): _sse_response(openai_stream()),
    (b"/v1/messages", False): _json_response(orjson.dumps(anthropic_message())),
    (b"/v1/messages", True): _sse_response(anthropic_stream()),
    (b"/v1/responses", False): _json_response(orjson.dumps(responses_object())),
    (b"/v1/responses", True): _sse_response(responses_stream()),
}
NOT_FOUND = _json_response(b'{"error":{"message":"not found","type":"invalid_request_error"}}') \
    .replace(b"200 OK", b"404 Not Found", 1)
LENGTH_REQUIRED = (b"HTTP/1.1 411 Length Required\r\ncontent-length: 0\r\n"
                   b"connection: close\r\n\r\n")


class FakeHttp(asyncio.Protocol):
    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._transport is not None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end].lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else None])
            elif b"\r\ntransfer-encoding:" in head:
                self._transport.write(LENGTH_REQUIRED)
                self._transport.close()
                return
            if len(self._buffer) < end + 4 + length:
                return
            body = self._buffer[end + 4 : end + 4 + length]
            self._buffer = self._buffer[end + 4 + length :]
            path = head[head.find(b" ") + 1 : head.find(b" http/")].split(b"?")[0]
            reply = REPLIES.get((path, STREAM_RE.search(body) is not None), NOT_FOUND)
            close = b"\r\nconnection: close" in head
            if self._delay:
                self._loop.call_later(self._delay, self._send, reply, close)
            else:
                self._send(reply, close)

    def _send(self, reply: bytes, close: bool) -> None:
        if self._transport is not None:
            self._transport.write(reply)
            if close:
                self._transport.close()


async def serve(port: int, slow_port: int, delay_ms: float) -> None:
    loop = asyncio.get_running_loop()
    fast = await loop.create_server(lambda: FakeHttp(0.0), "127.0.0.1", port, backlog=4096)
    servers = [fast]
    ports = [fast.sockets[0].getsockname()[1]]
    if slow_port >= 0:
        slow = await loop.create_server(lambda: FakeHttp(delay_ms / 1000), "127.0.0.1", slow_port,
                                        backlog=4096)
        servers.append(slow)
        ports.append(slow.sockets[0].getsockname()[1])
    print("READY", *ports, flush=True)
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    for server in servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--slow-port", type=int, default=-1, help="-1: none; 0: any free port")
    parser.add_argument("--delay-ms", type=float, default=50.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.port, args.slow_port, args.delay_ms))
    except ImportError:
        asyncio.run(serve(args.port, args.slow_port, args.delay_ms))


if __name__ == "__main__":
    main()
