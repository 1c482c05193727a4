"""One upstream connection: an asyncio Protocol whose httptools callbacks fill in the reply
to the request in flight, and the two errors the upstream client raises."""

from __future__ import annotations

import asyncio
import select
from typing import Any, cast

import httptools


class UpstreamFailure(ConnectionError):
    """The connection failed or the reply was not valid HTTP; the text names no secret."""


class DeadlineReached(TimeoutError):
    """The request's total deadline passed (not the idle limit between bytes)."""


def expire(fut: asyncio.Future[Any], error: type[TimeoutError] = TimeoutError) -> None:
    """A timer's callback: fail `fut` with `error` unless it has already been answered."""
    if not fut.done():
        fut.set_exception(error())


class Connection(asyncio.Protocol):
    """One connection; httptools' callbacks fill in the reply to the request in flight."""

    transport: asyncio.Transport  # set by connection_made, before anyone else sees the object

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.parser, self.poll = loop, httptools.HttpResponseParser(self), select.poll()
        self.lost = self.active = False
        self.idle_since = 0.0
        self.waiter: asyncio.Future[None] | None = None
        self.error: UpstreamFailure | None = None
        self.send(b"")  # (resets the reply state)

    def send(self, request: bytes) -> None:
        self.status = 0
        self.head = self.done = self.framed = self.keep_alive = False
        self.encoding, self.body = b"", list[bytes]()
        if request:
            self.active = True
            self.transport.write(request)

    def usable(self, cutoff: float) -> bool:
        """Open, used recently, nothing waiting on its socket (a FIN the loop has not read:
        the server closed it while it was idle)."""
        return not (self.lost or self.error or self.idle_since < cutoff or self.poll.poll(0))

    async def wait(self, deadline: float, idle: float) -> None:
        """Until the reply moves on or the connection ends; TimeoutError after `idle`."""
        if self.error is not None:
            raise self.error
        left = deadline - self.loop.time()
        if left <= 0:
            raise DeadlineReached
        fut = self.waiter = self.loop.create_future()
        handle = self.loop.call_later(min(idle, left), expire, fut,
                                      DeadlineReached if left <= idle else TimeoutError)
        try:
            await fut
        finally:
            handle.cancel()
            self.waiter = None

    def take(self) -> bytes:
        data = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body = []
        return data

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, message: str) -> None:
        self.error = self.error or UpstreamFailure(message)
        self.transport.close()
        self._wake()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if (sock := transport.get_extra_info("socket")) is not None:
            self.poll.register(sock.fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        if not self.active or self.done:
            return self._fail("The provider sent bytes that answer no request.")
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(f"The provider's reply is not valid HTTP/1.1 ({type(exc).__name__}).")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.active and not self.done:
            if self.head and not self.framed:  # a body that ends with the connection
                self.done = True
            elif self.error is None:
                self.error = UpstreamFailure(
                    "The provider closed the connection before the reply was complete."
                    if self.head else "The provider closed the connection without answering.")
        self._wake()

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.done:  # stops the parser: these bytes must not touch the finished reply
            raise UpstreamFailure("The provider sent bytes that answer no request.")

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-encoding":
            self.encoding = value.strip().lower()
        elif name in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.head = self.status >= 200  # an informational (1xx) reply precedes the real one
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self._wake()

    def on_message_complete(self) -> None:
        if self.status < 200:
            self.encoding, self.framed = b"", False
        else:
            self.done, self.keep_alive = True, self.parser.should_keep_alive()
            self._wake()
