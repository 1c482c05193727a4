"""The HTTP/1.1 server protocol: uvicorn's httptools protocol, refusing malformed requests in
the OpenAI error shape, and bounding request heads.

A request that is not valid HTTP (a bare CR or LF in a header, a NUL, a
folded header line, a non-numeric Content-Length...) never reaches the app:
the parser refuses it. uvicorn answers those with a plain-text 400; this
answers with the same status in the shape every other error on that path has
(`400 invalid_request`; Anthropic's shape under /v1/messages, as far as the request
line was read), then closes the connection, as uvicorn does.

Request heads are bounded (issue 12 point 5): more than `max_header_bytes`
of head or more than `max_headers` header lines is a 431, a head not
complete within `header_timeout` seconds of its first byte is a 408; each
closes the connection, so nothing of the head is kept.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.dialects.messages.errors import error_body
from gateway.errors import GatewayError, InvalidRequest, RequestTimeout, render
from gateway.settings import Settings

_MALFORMED = InvalidRequest(
    "The request is not valid HTTP/1.1 (malformed request line, header or framing).")
_MESSAGES_PREFIX = b"/v1/messages"  # as gateway/edge/failures.py: Anthropic's shape there


class HeadersTooLarge(GatewayError):
    status = 431
    type = "invalid_request_error"
    code = "request_header_fields_too_large"


_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class GatewayHttpProtocol(HttpToolsProtocol):
    max_header_bytes = 64 * 1024
    max_headers = 100
    header_timeout = 10.0

    _refusal: GatewayError | None = None
    _head_bytes = 0
    _head_done = True
    _waiting_head = True  # the next byte begins a request head
    _header_count = 0
    _head_timer: asyncio.TimerHandle | None = None

    def send_400_response(self, msg: str) -> None:
        refusal = self._refusal or _MALFORMED
        url: bytes = getattr(self, "url", b"")  # what the parser read of the request line
        body = error_body(refusal) if url.startswith(_MESSAGES_PREFIX) else render(refusal)
        status = refusal.status
        content = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n",
            b"\r\n",
            body,
        ])
        self._cancel_head_timer()
        self.transport.write(b"".join(content))
        self.transport.close()

    def _refuse(self, error: GatewayError) -> None:
        self._refusal = error
        self.send_400_response(error.message)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return
        if self._waiting_head:
            self._waiting_head = False  # the first byte of a new head
            self._head_done = False
            self._head_bytes = 0
            self._header_count = 0
            self._start_head_timer()
        counting = not self._head_done
        super().data_received(data)
        if counting and not self._head_done and self._refusal is None:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._refuse(HeadersTooLarge(
                    f"The request head is larger than {self.max_header_bytes} bytes."))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.max_headers:
            self._refusal = HeadersTooLarge(f"The request has more than {self.max_headers} headers.")
            raise ValueError("too many headers")  # the parser stops; send_400_response answers
        if len(name) + len(value) > self.max_header_bytes:
            self._refusal = HeadersTooLarge(
                f"A request header is larger than {self.max_header_bytes} bytes.")
            raise ValueError("header too large")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_done = True
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._waiting_head = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _start_head_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._head_done and self._refusal is None and not self.transport.is_closing():
            self._refuse(RequestTimeout(
                f"The request head was not received within {self.header_timeout:g} s."))


def protocol_for(settings: Settings) -> type[GatewayHttpProtocol]:
    """The protocol class with this deployment's head limits."""
    return type("GatewayHttpProtocol", (GatewayHttpProtocol,), {
        "max_header_bytes": settings.max_header_bytes,
        "max_headers": settings.max_headers,
        "header_timeout": settings.header_timeout,
    })


@functools.cache
def _limits_from_env() -> tuple[int, int, float]:
    settings = Settings.from_env()
    return settings.max_header_bytes, settings.max_headers, settings.header_timeout


class EnvHttpProtocol(GatewayHttpProtocol):
    """What `serve` names to uvicorn: the head limits read from the environment `serve`
    exported, once per process. uvicorn imports a protocol by name in each worker process
    (`--workers N`); a class built by `protocol_for` cannot be sent there."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_header_bytes, self.max_headers, self.header_timeout = _limits_from_env()
