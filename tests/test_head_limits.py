"""Issue 12 point 5: request heads are bounded in size, line count and receive time (raw sockets)."""

from __future__ import annotations

import httpx
import orjson
import pytest

from tests.conftest import GatewayFactory
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway, exchange

LIMITS = {"BOOKBAG_MAX_HEADER_BYTES": 8192, "BOOKBAG_MAX_HEADERS": 20,
          "BOOKBAG_HEADER_TIMEOUT": 1}


@pytest.fixture
def gw(make_gateway: GatewayFactory, provider: FakeProvider) -> RunningGateway:
    return make_gateway(**LIMITS)





def status_and_error(raw: bytes) -> tuple[int, dict[str, object], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), orjson.loads(body)["error"], head.lower()


def test_an_oversized_header_is_431_and_the_connection_closed(gw: RunningGateway) -> None:
    raw = exchange(gw.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000
                   + b"\r\n\r\n")
    status, error, head = status_and_error(raw)
    assert status == 431
    assert error["code"] == "request_header_fields_too_large"
    assert b"connection: close" in head


def test_too_many_headers_is_431(gw: RunningGateway) -> None:
    lines = b"".join(b"X-H%d: v\r\n" % i for i in range(30))
    status, error, _ = status_and_error(
        exchange(gw.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n"))
    assert status == 431
    assert error["code"] == "request_header_fields_too_large"


def test_an_unfinished_head_is_408_and_closed(gw: RunningGateway) -> None:
    status, error, head = status_and_error(
        exchange(gw.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaa"))
    assert status == 408
    assert error["code"] == "request_timeout"
    assert b"connection: close" in head


def test_large_bodies_and_keep_alive_are_unaffected(gw: RunningGateway) -> None:
    _, key = gw.workspace("free")
    big = "word " * 60_000  # a 300 KB body arrives in chunks much larger than the head limit
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"},
                      timeout=30) as client:
        for _ in range(3):  # one keep-alive connection, three heads
            r = client.post("/v1/chat/completions", json={
                "model": "gpt-4o-mini", "messages": [{"role": "user", "content": big}]})
            assert r.status_code == 200, r.text
            assert client.get("/healthz").status_code == 200
