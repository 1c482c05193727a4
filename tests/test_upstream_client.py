"""The relay's HTTP client (gateway/providers/upstream.py) against real loopback servers.

What the gateway suite (tests/fake_provider.py) does not reach: the pool (reuse, cap,
queueing), the keep-alive race, body framings and encodings, cancellation, timeouts, TLS.
Every test runs on both event loops the gateway may use (asyncio, uvloop). No timing is
asserted: timeouts are provoked by servers that never answer.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import re
import select
import socket
import ssl
import threading
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.providers.upstream import Response, UpstreamClient, UpstreamFailure
from gateway.types import Timeouts
from tests.harness import eventually

T = Timeouts(connect=5, idle=5, total=10)
HEADERS = [("Content-Type", "application/json"), ("Authorization", "Bearer sk-secret-1")]
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    def run(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
            return runner.run(coro)
    return run


Reply = Callable[[int, asyncio.StreamWriter], Awaitable[bool]]  # request no. -> keep the connection


class Server:
    """A loopback HTTP/1.1 server; `reply` writes the answer to request n (from 0)."""

    def __init__(self, reply: Reply, tls: ssl.SSLContext | None = None) -> None:
        self.reply, self.tls = reply, tls
        self.requests: list[bytes] = []  # request heads, in arrival order
        self.connections = self.open = self.most_open = 0
        self.client_closed = asyncio.Event()  # a client closed a connection mid-request

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    def url(self, path: str = "/v1/chat") -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = re.search(rb"(?i)content-length: (\d+)", head)
                await reader.readexactly(int(length[1]) if length else 0)
                self.requests.append(head)
                if not await self.reply(len(self.requests) - 1, writer):
                    return
                await writer.drain()
        finally:
            self.open -= 1
            writer.close()


def ok(body: bytes = b'{"ok":true}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), extra, body)


def answer(body: bytes = b'{"ok":true}', extra: bytes = b"") -> Reply:
    async def reply(n: int, w: asyncio.StreamWriter) -> bool:
        w.write(ok(body, extra))
        return True
    return reply


async def post(client: UpstreamClient, url: str, t: Timeouts = T) -> tuple[int, bytes]:
    resp = await client.post(url, b'{"q":1}', HEADERS, t)
    try:
        return resp.status, await resp.read()
    finally:
        resp.release()


def pool_of(client: UpstreamClient) -> Any:
    (pool,) = client._pools.values()
    return pool


def pool_of_count(client: UpstreamClient) -> int:
    """Connections open or opening, all pools."""
    return sum(pool.count for pool in client._pools.values())


def test_a_connection_is_reused(run: Any) -> None:
    async def main() -> None:
        async with Server(answer()) as srv:
            client = UpstreamClient()
            for _ in range(3):
                assert await post(client, srv.url()) == (200, b'{"ok":true}')
            await client.close()
        assert srv.connections == 1
        assert srv.requests[0].startswith(b"POST /v1/chat HTTP/1.1\r\nHost: 127.0.0.1:")
        assert b"Authorization: Bearer sk-secret-1\r\nContent-Length: 7\r\n" in srv.requests[0]
    run(main())


def test_at_the_cap_requests_queue_for_a_connection(run: Any) -> None:
    async def main() -> None:
        go = asyncio.Event()

        async def reply(n: int, w: asyncio.StreamWriter) -> bool:
            await go.wait()
            w.write(ok(b"%d" % n))
            return True

        async with Server(reply) as srv:
            client = UpstreamClient(connections=2)
            calls = [asyncio.ensure_future(post(client, srv.url())) for _ in range(5)]
            await eventually(lambda: len(srv.requests) == 2)
            assert pool_of(client).count == 2 and len(pool_of(client).waiters) == 3
            go.set()
            results = await asyncio.gather(*calls)
            await client.close()
        assert sorted(results) == [(200, b"%d" % n) for n in range(5)]
        assert (srv.connections, srv.most_open) == (2, 2)
    run(main())


def test_connection_close_is_honoured(run: Any) -> None:
    async def main() -> None:
        async with Server(answer(extra=b"Connection: close\r\n")) as srv:
            client = UpstreamClient()
            for _ in range(2):
                assert (await post(client, srv.url()))[0] == 200
            await client.close()
        assert srv.connections == 2
    run(main())


def test_an_idle_connection_the_server_closed_is_replaced(run: Any) -> None:
    async def reply(n: int, w: asyncio.StreamWriter) -> bool:
        w.write(ok())
        return False  # closes, without saying so in the reply

    async def main() -> None:
        async with Server(reply) as srv:
            client = UpstreamClient()
            assert (await post(client, srv.url()))[0] == 200
            await eventually(lambda: pool_of(client).idle[0].lost)  # the loop saw the close
            assert (await post(client, srv.url()))[0] == 200
            await client.close()
        assert (srv.connections, len(srv.requests)) == (2, 2)
    run(main())


def test_a_close_the_loop_has_not_seen_yet_is_caught_before_writing(run: Any) -> None:
    """The keep-alive race: the server's FIN is on the socket, the loop has not read it."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    close_now, requests = threading.Event(), []

    def serve() -> None:  # two connections, one request each; the first is closed when told
        for i in range(2):
            conn, _ = listener.accept()
            with conn:
                requests.append(conn.recv(65536))
                conn.sendall(ok(b"%d" % i))
                if i == 0:
                    close_now.wait(10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    async def main() -> list[tuple[int, bytes]]:
        client = UpstreamClient()
        url = f"http://127.0.0.1:{port}/v1/chat"
        first = await post(client, url)
        fd = pool_of(client).idle[0].transport.get_extra_info("socket").fileno()
        close_now.set()
        select.select([fd], [], [], 10)  # blocks the loop: the FIN waits, unseen by it
        second = await post(client, url)
        await client.close()
        return [first, second]

    try:
        assert run(main()) == [(200, b"0"), (200, b"1")]
    finally:
        thread.join(10)
        listener.close()
    assert len(requests) == 2


@pytest.mark.parametrize("partial", [b"", b"HTTP/1.1 200 OK\r\nContent-Le", ok()[:-3]])
def test_no_retry_once_the_request_was_written(run: Any, partial: bytes) -> None:
    """A reused connection that breaks after the request went out: an error, never a resend
    (the provider may have run it), whether or not reply bytes came first."""
    async def reply(n: int, w: asyncio.StreamWriter) -> bool:
        w.write(ok() if n == 0 else partial)
        return n == 0

    async def main() -> None:
        async with Server(reply) as srv:
            client = UpstreamClient()
            assert (await post(client, srv.url()))[0] == 200
            with pytest.raises(UpstreamFailure) as info:
                await post(client, srv.url())
            assert pool_of_count(client) == 0
            await client.close()
        assert len(srv.requests) == 2
        assert "sk-secret" not in str(info.value)
    run(main())


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


BODY = b'{"choices":[{"text":"' + b"x" * 3000 + b'"}]}'
FRAMINGS: dict[str, tuple[bytes, bytes]] = {  # name -> (headers, body on the wire)
    "content-length": (b"Content-Length: %d\r\n" % len(BODY), BODY),
    "chunked": (b"Transfer-Encoding: chunked\r\n", chunked(BODY[:7], BODY[7:2000], BODY[2000:])),
    "until-close": (b"Connection: close\r\n", BODY),
    "gzip": (b"Content-Encoding: gzip\r\nContent-Length: %d\r\n" % len(gzip.compress(BODY)),
             gzip.compress(BODY)),
    "gzip-chunked": (b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
                     chunked(gzip.compress(BODY)[:10], gzip.compress(BODY)[10:])),
    "deflate": (b"Content-Encoding: deflate\r\nContent-Length: %d\r\n" % len(zlib.compress(BODY)),
                zlib.compress(BODY)),
    "raw-deflate": (b"Content-Encoding: deflate\r\nContent-Length: %d\r\n"
                    % len(zlib.compress(BODY, wbits=-15)), zlib.compress(BODY, wbits=-15)),
}


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
@pytest.mark.parametrize("how", ["read", "iterate"])
def test_bodies_framed_and_encoded(run: Any, framing: str, how: str) -> None:
    headers, wire = FRAMINGS[framing]

    async def reply(n: int, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\n" + headers + b"\r\n")
        for i in range(0, len(wire), 700):  # in pieces, the reader sees several reads
            w.write(wire[i:i + 700])
            await w.drain()
            await asyncio.sleep(0)
        return framing != "until-close"

    async def main() -> bytes:
        async with Server(reply) as srv:
            client = UpstreamClient()
            resp = await client.post(srv.url(), b"{}", HEADERS, T)
            try:
                body = await resp.read() if how == "read" else b"".join([c async for c in resp])
            finally:
                resp.release()
            again = await post(client, srv.url())
            await client.close()
        assert again == (200, BODY)
        assert srv.connections == (2 if framing == "until-close" else 1)
        return body

    assert run(main()) == BODY


def test_a_corrupt_gzip_body_is_an_error(run: Any) -> None:
    async def main() -> None:
        async with Server(answer(b"not gzip", b"Content-Encoding: gzip\r\n")) as srv:
            client = UpstreamClient()
            with pytest.raises(UpstreamFailure, match="compressed body is corrupt"):
                await post(client, srv.url())
            await client.close()
    run(main())


def test_cancelling_a_request_closes_its_connection(run: Any) -> None:
    async def main() -> None:
        async def reply(n: int, w: asyncio.StreamWriter) -> bool:
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            return True  # ... and then nothing: the server reads on, and sees the close

        async with Server(reply) as srv:
            client = UpstreamClient()
            resp = await client.post(srv.url(), b"{}", HEADERS, T)
            first = asyncio.Event()
            reading = asyncio.ensure_future(read_on(resp, first))
            await first.wait()
            await asyncio.sleep(0)  # the reader waits for the next chunk
            reading.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reading
            resp.release()
            await eventually(lambda: srv.open == 0)  # the server's read ended: closed
            assert pool_of_count(client) == 0
            await client.close()
    run(main())


async def read_on(resp: Response, first: asyncio.Event) -> None:
    assert await anext(resp) == b"first"
    first.set()
    await anext(resp)


async def silent(n: int, w: asyncio.StreamWriter) -> bool:
    await asyncio.Event().wait()  # never answers
    return False


def test_timeouts(run: Any) -> None:
    async def trickle(n: int, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while not w.is_closing():  # a byte every 10 ms: never idle, never done
            w.write(b"1\r\nx\r\n")
            await asyncio.sleep(0.01)
        return False

    async def main() -> None:
        async with Server(silent) as quiet, Server(trickle) as slow:
            client = UpstreamClient(connections=1)
            with pytest.raises(TimeoutError):  # idle: no byte at all
                await post(client, quiet.url(), Timeouts(connect=5, idle=0.05, total=10))
            with pytest.raises(TimeoutError):  # total: bytes keep coming, the reply never ends
                await post(client, slow.url(), Timeouts(connect=5, idle=5, total=0.1))
            hung = asyncio.ensure_future(post(client, quiet.url()))
            await eventually(lambda: len(quiet.requests) == 2)
            with pytest.raises(TimeoutError):  # total, spent queueing behind the hung request
                await post(client, quiet.url(), Timeouts(connect=5, idle=5, total=0.05))
            hung.cancel()
            await asyncio.gather(hung, return_exceptions=True)
            assert pool_of_count(client) == 0
            await client.close()
    run(main())


def test_connection_refused_frees_its_slot(run: Any) -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # bound, not listening: refused
            client = UpstreamClient(connections=1)
            for _ in range(2):
                with pytest.raises(ConnectionRefusedError):
                    await post(client, f"http://127.0.0.1:{port}/v1")
            assert pool_of_count(client) == 0
            await client.close()
    run(main())


def test_a_header_with_a_line_break_is_refused(run: Any) -> None:
    async def main() -> None:
        client = UpstreamClient()
        with pytest.raises(UpstreamFailure, match="line break"):
            await client.post("http://127.0.0.1:9/v1", b"", [("Authorization", "a\r\nX: y")], T)
    run(main())


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls(run: Any, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async def main() -> None:
        async with Server(answer(), tls=server_tls) as srv:
            trusting = UpstreamClient(tls=ssl.create_default_context(cafile=str(cert)))
            for _ in range(2):
                assert await post(trusting, srv.url()) == (200, b'{"ok":true}')
            await trusting.close()
            default = UpstreamClient()  # the system's CAs: the self-signed cert is refused
            with pytest.raises(ssl.SSLCertVerificationError):
                await post(default, srv.url())
            await default.close()
        assert srv.connections == 1  # the refused handshake never reached the handler
    run(main())
