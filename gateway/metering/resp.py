"""A small pipelined Redis client for the meter's Lua scripts: EVALSHA on one connection.

redis-py's per-command cost (pool, lock, retry wrapper, per-argument encoding,
StreamWriter, a timeout context per read) was half a metered request's CPU. Here
the commands of a loop turn go out in one write, hiredis parses the replies, which
are matched to the commands in order, and one timer watches the oldest unanswered one.

Errors are redis-py's, so `storage/redis.py`'s `transient()` and `unavailable()` apply: a
ConnectionError (refused, reset) is retried once on a new connection, as redis-py's one
retry (every meter script is safe to run twice); a TimeoutError (paused or hung) drops the
connection, fails every command waiting on it and is never retried (it may still run);
NOSCRIPT sends the script whole once (EVAL loads it); other refusals are ResponseErrors.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis

from gateway.storage.redis import (
    AuthenticationError,
    BusyLoadingError,
    NoScriptError,
    RedisConnectionError,
    RedisTimeoutError,
    ResponseError,
)

Arg = str | int | bytes


class Script:
    """A Lua script and its SHA1, as EVALSHA names it."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest().encode()


def pack(*args: Arg) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


_REFUSALS: dict[str, type[Exception]] = {"NOSCRIPT": NoScriptError,
                                          "LOADING": BusyLoadingError}


class _Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._reader = hiredis.Reader(encoding="utf-8", replyError=ResponseError)
        self._transport: asyncio.Transport | None = None
        self._waiting: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._out: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self.error: Exception | None = None  # set once: the connection is of no more use

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"Connection to Redis lost: {exc or 'closed by the server'}"))

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(RedisConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False:
                return
            _, future = self._waiting.popleft()
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, ResponseError):
                message = str(reply)
                future.set_exception(_REFUSALS.get(message.split(" ", 1)[0], ResponseError)(message))
            else:
                future.set_result(reply)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        if self.error is not None:
            raise self.error
        future = self._loop.create_future()
        deadline = self._loop.time() + self._timeout
        self._waiting.append((deadline, future))
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(command)
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._check)
        return future

    def _flush(self) -> None:
        if self._out and self._transport is not None and self.error is None:
            self._transport.write(b"".join(self._out))
        self._out.clear()

    def _check(self) -> None:
        """The oldest unanswered command sets the deadline (replies come in order)."""
        self._timer = None
        if self._waiting and self._loop.time() >= self._waiting[0][0]:
            self.fail(RedisTimeoutError("Timeout reading from Redis"))
        elif self._waiting:
            self._timer = self._loop.call_at(self._waiting[0][0], self._check)

    def fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()
            self._transport = None
        self._out.clear()
        while self._waiting:
            _, future = self._waiting.popleft()
            if not future.done():
                future.set_exception(exc)


class RespClient:
    """EVALSHA over one pipelined connection to `host:port` (or the Unix socket `path`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, *, path: str | None = None,
                 db: int = 0, username: str | None = None, password: str | None = None,
                 connect_timeout: float, timeout: float, tls: ssl.SSLContext | None = None
                 ) -> None:
        self._address = (host, port)
        self._tls = tls  # rediss://: the same pipelining over TLS
        self._path = path
        self._setup = [pack("AUTH", *([username] if username else []), password)] \
            if password else []
        if db:
            self._setup.append(pack("SELECT", db))
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None

    async def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Arg], *,
                      asking: bool = False) -> Any:
        """`asking`: Redis Cluster's ASK redirection, `ASKING` sent just before (one write)."""
        command = pack(b"EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self._call(command, asking)
        except NoScriptError:  # Redis restarted or its script cache was flushed
            return await self._call(pack(b"EVAL", script.source, len(keys), *keys, *args), asking)

    async def evalsha_wait(self, script: Script, keys: Sequence[str], args: Sequence[Arg],
                           replicas: int, timeout_ms: int, *, asking: bool = False
                           ) -> tuple[Any, int]:
        """The script and `WAIT replicas timeout_ms` in one write on this connection (WAIT
        counts only this connection's writes): (the script's reply, replicas that have it).
        WAIT holds up the commands pipelined behind it until the replicas answer. `asking`:
        `ASKING` first (an ASK redirect), in the same write, so WAIT counts the write made
        on the importing node."""
        wait = pack(b"WAIT", replicas, timeout_ms)
        try:
            return await self._pair(pack(b"EVALSHA", script.sha, len(keys), *keys, *args), wait,
                                    asking)
        except NoScriptError:
            return await self._pair(pack(b"EVAL", script.source, len(keys), *keys, *args), wait,
                                    asking)

    async def _pair(self, first: bytes, second: bytes, asking: bool) -> tuple[Any, int]:
        try:
            return await self._send_pair(await self._connected(), first, second, asking)
        except RedisConnectionError:  # as `_call`: once more on a new connection
            return await self._send_pair(await self._connected(), first, second, asking)

    @staticmethod
    async def _send_pair(connection: _Connection, first: bytes, second: bytes, asking: bool
                         ) -> tuple[Any, int]:
        ask = connection.send(pack(b"ASKING")) if asking else None
        one, two = connection.send(first), connection.send(second)  # one write, in order
        try:
            if ask is not None:
                await ask
            result = await one
        except BaseException:
            two.cancel()  # its reply is read and dropped
            raise
        return result, int(await two)

    async def command(self, *args: Arg) -> Any:
        """Any other command on the same pipelined connection (INFO, WAIT)."""
        return await self._call(pack(*args))

    async def _call(self, command: bytes, asking: bool = False) -> Any:
        try:
            return await self._send(await self._connected(), command, asking)
        except RedisConnectionError:  # a connection that died with a Redis restart: once more
            return await self._send(await self._connected(), command, asking)

    @staticmethod
    async def _send(connection: _Connection, command: bytes, asking: bool) -> Any:
        if not asking:
            return await connection.send(command)
        ask = connection.send(pack(b"ASKING"))
        reply = connection.send(command)  # the same loop turn: written together, in order
        await ask
        return await reply

    async def _connected(self) -> _Connection:
        connection = self._connection
        if connection is not None and connection.error is None:
            return connection
        if self._connecting is None or self._connecting.done():  # one connect for all callers
            self._connecting = asyncio.ensure_future(self._connect())
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._path is not None:
                    _, connection = await loop.create_unix_connection(
                        lambda: _Connection(loop, self._timeout), self._path)
                else:
                    _, connection = await loop.create_connection(
                        lambda: _Connection(loop, self._timeout), *self._address, ssl=self._tls)
        except TimeoutError as exc:  # before OSError, its base class: a timeout is not retried
            raise RedisTimeoutError("Timeout connecting to Redis") from exc
        except OSError as exc:
            raise RedisConnectionError(f"Error connecting to Redis: {exc}") from exc
        try:
            await asyncio.gather(*(connection.send(command) for command in self._setup))
        except ResponseError as exc:
            connection.fail(RedisConnectionError("Redis refused the connection setup"))
            raise AuthenticationError(f"Redis refused the connection setup: {exc}") from exc
        self._connection = connection
        return connection

    async def aclose(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._connection is not None:
            self._connection.fail(RedisConnectionError("Connection closed by the client"))
            self._connection = None
