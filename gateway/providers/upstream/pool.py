"""The keep-alive pool of one (scheme, host, port): at most `cap` connections, idle ones
reused last-in first-out, requests queued at the cap until a connection or a slot frees."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

from gateway.providers.upstream.connection import Connection, UpstreamFailure, expire

KEEPALIVE_S = 15.0  # a connection idle longer is not reused (below common server timeouts)


class Pool:
    """The connections to one (scheme, host, port): idle ones (LIFO) and queued requests."""

    def __init__(self, host: str, port: int, cap: int, tls: ssl.SSLContext | None) -> None:
        self.host, self.port, self.cap, self.tls = host, port, cap, tls
        self.count = 0  # connections open or opening
        self.idle: deque[Connection] = deque()
        self.waiters: deque[asyncio.Future[Connection | None]] = deque()
        self.open: set[Connection] = set()

    async def acquire(self, deadline: float, connect: float) -> Connection:
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
                lambda: Connection(loop), self.host, self.port, ssl=self.tls,
                server_hostname=self.host if self.tls else None), timeout)
        except BaseException:
            self._give(None)
            raise
        self.open.add(conn)
        return conn

    async def _queue(self, loop: asyncio.AbstractEventLoop, deadline: float) -> Connection | None:
        fut: asyncio.Future[Connection | None] = loop.create_future()
        self.waiters.append(fut)
        handle = loop.call_at(deadline, expire, fut)
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._give(fut.result())  # handed over just as this request gave up
            raise
        finally:
            handle.cancel()

    def put(self, conn: Connection) -> None:
        conn.active, conn.idle_since = False, conn.loop.time()
        self._give(conn)
        while self.idle and self.idle[0].idle_since < conn.idle_since - KEEPALIVE_S:
            self.discard(self.idle.popleft())

    def discard(self, conn: Connection) -> None:
        conn.transport.close()
        self.open.discard(conn)
        self._give(None)

    def _give(self, conn: Connection | None) -> None:
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
