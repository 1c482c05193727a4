"""The relay's HTTP/1.1 client: keep-alive pools, three timeouts, replies as they arrive.

Why not aiohttp: profiled under load (bench/profile.py --gil), its client was 25 % of the
gateway's CPU (ClientSession._request, header merging, TimeoutHandle, ClientResponse.start,
StreamWriter...). This does only what the relay needs on an asyncio Protocol and httptools'
C parser (llhttp, as uvicorn). One A/B run (bench/run.py --quick, JSON at 16 in flight):
the gateway's CPU per request went from 0.52 to 0.38 ms (streams 0.70 to 0.54).

- A pool per (scheme, host, port) of at most `connections`; at the cap requests queue.
- TimeoutError for `connect` (TCP + TLS), `idle` (between reply bytes, the first one
  included), `total` (queueing included; its own subclass DeadlineReached, raised also
  while a body still flows past it); else UpstreamFailure, whose text holds no header.
- Bodies: Content-Length, chunked or until the end; gzip/deflate decoded; not paced (the
  relay's replies are small: read whole, or LLM streams).
- Reused only after a complete keep-alive reply: never after an error, an incomplete read,
  `Connection: close` or a cancellation (which closes it, stopping the upstream call).
- The keep-alive race: a pooled connection is checked just before a request is written
  (closed as the loop saw, or a FIN or stray bytes on its socket): one the server closed
  while idle is dropped for another. A written request is never sent again (the provider
  may have run it).
"""

from __future__ import annotations

import asyncio
import select
import ssl
import zlib
from collections import deque
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

from gateway.types import Timeouts

KEEPALIVE_S = 15.0  # a connection idle longer is not reused (below common server timeouts)


class UpstreamFailure(ConnectionError):
    """The connection failed or the reply was not valid HTTP; the text names no secret."""


class DeadlineReached(TimeoutError):
    """The request's total deadline passed (not the idle limit between bytes)."""


def _expire(fut: asyncio.Future[Any], error: type[TimeoutError] = TimeoutError) -> None:
    if not fut.done():
        fut.set_exception(error())


class _Conn(asyncio.Protocol):
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
        handle = self.loop.call_later(min(idle, left), _expire, fut,
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


class _Pool:
    """The connections to one (scheme, host, port): idle ones (LIFO) and queued requests."""

    def __init__(self, host: str, port: int, cap: int, tls: ssl.SSLContext | None) -> None:
        self.host, self.port, self.cap, self.tls = host, port, cap, tls
        self.count = 0  # connections open or opening
        self.idle: deque[_Conn] = deque()
        self.waiters: deque[asyncio.Future[_Conn | None]] = deque()
        self.open: set[_Conn] = set()

    async def acquire(self, deadline: float, connect: float) -> _Conn:
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - KEEPALIVE_S
        while self.idle:
            conn = self.idle.pop()
            if conn.usable(cutoff):
                return conn
            self.discard(conn)
        if self.count < self.cap:
            self.count += 1
        elif (handed := await self._queue(loop, deadline)) is not None:  # else: a free slot
            if handed.usable(cutoff):
                return handed
            handed.transport.close()  # its slot is ours
            self.open.discard(handed)
        try:
            timeout = min(connect, deadline - loop.time())
            if timeout <= 0:
                raise TimeoutError
            _, conn = await asyncio.wait_for(loop.create_connection(
                lambda: _Conn(loop), self.host, self.port, ssl=self.tls,
                server_hostname=self.host if self.tls else None), timeout)
        except BaseException:
            self._give(None)
            raise
        self.open.add(conn)
        return conn

    async def _queue(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Conn | None:
        fut: asyncio.Future[_Conn | None] = loop.create_future()
        self.waiters.append(fut)
        handle = loop.call_at(deadline, _expire, fut)
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._give(fut.result())  # handed over just as this request gave up
            raise
        finally:
            handle.cancel()

    def put(self, conn: _Conn) -> None:
        conn.active, conn.idle_since = False, conn.loop.time()
        self._give(conn)
        while self.idle and self.idle[0].idle_since < conn.idle_since - KEEPALIVE_S:
            self.discard(self.idle.popleft())

    def discard(self, conn: _Conn) -> None:
        conn.transport.close()
        self.open.discard(conn)
        self._give(None)

    def _give(self, conn: _Conn | None) -> None:
        """A connection (or, None, a free slot) to the first queued request, else to the pool."""
        while self.waiters:
            if not (fut := self.waiters.popleft()).done():
                return fut.set_result(conn)
        if conn is None:
            self.count -= 1
        else:
            self.idle.append(conn)

    def close(self) -> None:
        for conn in self.open:
            conn.transport.close()
        for fut in self.waiters:
            if not fut.done():
                fut.set_exception(UpstreamFailure("The upstream client was closed."))
        self.open, self.idle = set(), deque()


class Response:
    """A reply whose head is in: `status`, then `await read()` or `async for chunk in it`
    (the body as it arrives, decoded). `release()` must follow, in a `finally`."""

    def __init__(self, conn: _Conn, pool: _Pool, deadline: float, idle: float) -> None:
        self.status, self._conn, self._pool = conn.status, conn, pool
        self._deadline, self._idle = deadline, idle
        self._ended = self._released = False
        self._zlib: zlib._Decompress | None = None
        self._wbits: int | None = None  # None: identity; 0: deflate (zlib or raw); else gzip
        if conn.encoding in (b"gzip", b"x-gzip", b"deflate"):
            self._wbits = 0 if conn.encoding == b"deflate" else 16 + zlib.MAX_WBITS
        elif conn.encoding not in (b"", b"identity"):
            raise UpstreamFailure("The provider sent a Content-Encoding other than gzip or deflate.")

    async def read(self) -> bytes:
        while not self._conn.done:
            await self._conn.wait(self._deadline, self._idle)
        self._ended = True
        return self._decode(self._conn.take(), True)

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        while not self._ended:
            if conn.body or conn.done:
                self._ended = conn.done
                if not self._ended and conn.loop.time() > self._deadline:
                    raise DeadlineReached  # the deadline is hard: a fast stream ends there too
                if data := self._decode(conn.take(), self._ended):
                    return data
            else:
                await conn.wait(self._deadline, self._idle)
        raise StopAsyncIteration

    def release(self) -> None:
        """Back to the pool after a complete keep-alive reply; otherwise closed."""
        conn = self._conn
        if self._released:
            return
        self._released = True
        if conn.done and conn.keep_alive and not (conn.error or conn.lost):
            self._pool.put(conn)
        else:
            self._pool.discard(conn)

    def _decode(self, data: bytes, final: bool) -> bytes:
        if self._wbits is None or not (data or self._zlib):
            return data
        try:
            if self._zlib is None:  # a deflate body's first byte tells zlib (0x?8) from raw
                raw = self._wbits == 0 and data[0] & 0x0F != 8
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS if raw else self._wbits or zlib.MAX_WBITS)
            out = self._zlib.decompress(data)
            if final and not self._zlib.eof:
                raise zlib.error("truncated")
        except zlib.error as exc:
            raise UpstreamFailure("The provider's compressed body is corrupt.") from exc
        return out


class UpstreamClient:
    """POST to http(s) upstreams over pooled keep-alive connections."""

    def __init__(self, *, connections: int = 1024, tls: ssl.SSLContext | None = None) -> None:
        self._cap, self._tls = connections, tls
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._targets: dict[str, tuple[_Pool, bytes]] = {}  # url -> pool, request line + Host

    async def post(self, url: str, body: bytes, headers: Sequence[tuple[str, str]],
                   timeouts: Timeouts) -> Response:
        """Send the request; returns once the reply's status and headers are in."""
        deadline = asyncio.get_running_loop().time() + timeouts.total
        pool, head = self._targets.get(url) or self._target(url)
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
        if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):
            raise UpstreamFailure("A request header holds a line break.")
        request = b"%b%bContent-Length: %d\r\n\r\n%b" % (head, lines.encode(), len(body), body)
        conn = await pool.acquire(deadline, timeouts.connect)
        try:
            conn.send(request)
            while not conn.head:
                await conn.wait(deadline, timeouts.idle)
            return Response(conn, pool, deadline, timeouts.idle)
        except BaseException:
            pool.discard(conn)
            raise

    def _target(self, url: str) -> tuple[_Pool, bytes]:
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
            head = f"POST {path} HTTP/1.1\r\nHost: {parts.netloc.rpartition('@')[2]}\r\n"
            target = head.encode("ascii")
        except (ValueError, UnicodeError) as exc:
            raise UpstreamFailure("The provider's URL is not valid.") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamFailure("The provider's URL is not http(s).")
        if (pool := self._pools.get(key := (parts.scheme, parts.hostname, port))) is None:
            if parts.scheme == "https":
                self._tls = self._tls or ssl.create_default_context()
            tls = self._tls if parts.scheme == "https" else None
            pool = self._pools[key] = _Pool(parts.hostname, port, self._cap, tls)
        if len(self._targets) > 4096:
            self._targets.clear()
        self._targets[url] = (pool, target)
        return pool, target

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools, self._targets = {}, {}
