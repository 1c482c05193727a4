"""A reply whose head is in: its body read whole or as it arrives, gzip/deflate decoded,
and its connection handed back to the pool (or closed) on release."""

from __future__ import annotations

import zlib

from gateway.providers.upstream.connection import Connection, DeadlineReached, UpstreamFailure
from gateway.providers.upstream.pool import Pool


class Response:
    """A reply whose head is in: `status`, then `await read()` or `async for chunk in it`
    (the body as it arrives, decoded). `release()` must follow, in a `finally`."""

    def __init__(self, conn: Connection, pool: Pool, deadline: float, idle: float) -> None:
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
