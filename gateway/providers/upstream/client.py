"""The upstream client: POST to http(s) upstreams over pooled keep-alive connections
(the package docstring says why it exists and what it guarantees)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from urllib.parse import urlsplit

from gateway.providers.upstream.connection import UpstreamFailure
from gateway.providers.upstream.pool import Pool
from gateway.providers.upstream.response import Response
from gateway.types import Timeouts


class UpstreamClient:
    """POST to http(s) upstreams over pooled keep-alive connections."""

    def __init__(self, *, connections: int = 1024, tls: ssl.SSLContext | None = None) -> None:
        self._cap, self._tls = connections, tls
        self._pools: dict[tuple[str, str, int], Pool] = {}
        self._targets: dict[str, tuple[Pool, bytes]] = {}  # url -> pool, request line + Host

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

    def _target(self, url: str) -> tuple[Pool, bytes]:
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
            pool = self._pools[key] = Pool(parts.hostname, port, self._cap, tls)
        if len(self._targets) > 4096:
            self._targets.clear()
        self._targets[url] = (pool, target)
        return pool, target

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools, self._targets = {}, {}
