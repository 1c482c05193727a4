"""Issue 12 point 5: authenticated from the headers before the body is read, on every body route."""

from __future__ import annotations

import socket

import orjson
import pytest

from tests.conftest import GatewayFactory
from tests.fake_provider import FakeProvider


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/chat/completions/preview",
                                  "/v1/embeddings"])
@pytest.mark.parametrize("auth", [None, "Bearer bb-not-a-key"])
def test_an_unauthenticated_request_is_401_before_its_body_and_closed(
    make_gateway: GatewayFactory, provider: FakeProvider, path: str, auth: str | None,
) -> None:
    gw = make_gateway(BOOKBAG_BODY_TIMEOUT=60)
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: 19000000\r\n").encode()
    if auth:
        head += f"Authorization: {auth}\r\n".encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=20) as sock:
        sock.sendall(head + b"\r\n" + b'{"model": "')  # 19 MB declared, a few bytes sent
        received = b""
        while True:
            chunk = sock.recv(65536)  # before the fix: no answer until the body timeout
            if not chunk:
                break  # closed by the server: the rest of the body is never read
            received += chunk
    status_line, _, rest = received.partition(b"\r\n")
    assert status_line.split(b" ")[1] == b"401"
    head_part, _, body = rest.partition(b"\r\n\r\n")
    assert b"connection: close" in head_part.lower()
    assert orjson.loads(body)["error"]["code"] == "invalid_api_key"
