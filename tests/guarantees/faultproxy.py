"""A TCP fault proxy on loopback, between the gateway and Redis or PostgreSQL.

    proxy = FaultProxy(target_port).start()     # its own event loop, in a thread
    proxy.port                                  # point the gateway here
    proxy.set("latency", seconds=0.3)           # every chunk, both ways, delayed
    proxy.set("blackhole")                      # bytes accepted and never forwarded; new
                                                # connections accepted and left silent
    proxy.set("reset")                          # every connection reset (RST), new ones too
    proxy.set("forward")                        # healthy again
    proxy.stop()

Modes apply to connections already open as well as new ones, the way a
network fault would. Only 127.0.0.1 is ever connected to.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass

MODES = ("forward", "latency", "blackhole", "reset")


@dataclass(eq=False)  # hashed by identity: kept in a set
class _Pair:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), not FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        assert target_host in ("127.0.0.1", "localhost"), "the fault proxy is loopback only"
        self.target = (target_host, target_port)
        self.mode = "forward"
        self.latency = 0.0
        self.port = 0
        self.connections = 0
        self._pairs: set[_Pair] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="fault-proxy")
        self._server: asyncio.AbstractServer | None = None
        self._changed = asyncio.Event()

    # --- control (any thread) ----------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def set(self, mode: str, seconds: float = 0.0) -> None:
        assert mode in MODES, mode
        asyncio.run_coroutine_threadsafe(self._set(mode, seconds), self._loop).result(10)

    def stop(self) -> None:
        if self._server is None:
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._server = None

    # --- the loop --------------------------------------------------------------------

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set(self, mode: str, seconds: float) -> None:
        self.mode, self.latency = mode, seconds
        if mode == "reset":
            for pair in list(self._pairs):
                self._drop(pair)
        self._changed.set()
        self._changed = asyncio.Event()

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for pair in list(self._pairs):
            self._drop(pair)
        self._changed.set()

    def _drop(self, pair: _Pair) -> None:
        _reset(pair.client)
        if pair.upstream is not None:
            _reset(pair.upstream)
        self._pairs.discard(pair)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        pair = _Pair(writer)
        self._pairs.add(pair)
        try:
            while self.mode == "blackhole":  # accepted, never answered: wait for a change
                await self._changed.wait()
            if self.mode == "reset":
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            pair.upstream = up_writer
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._drop(pair)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            while self.mode == "blackhole":
                await self._changed.wait()
            if self.mode == "reset":
                return
            if self.mode == "latency" and self.latency:
                await asyncio.sleep(self.latency)
            writer.write(data)
            await writer.drain()
