"""The meter's pipelined script client (`gateway/metering/resp.py`) against a redis-server of
each test's own: replies matched to their calls, Redis's refusals, NOSCRIPT after a script
flush, a paused, stopped and restarted server, and the same under uvloop (the gateway's loop).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import uvloop

from gateway.metering.redis_client import script_client
from gateway.metering.resp import RespClient, Script
from gateway.storage.redis import (
    AuthenticationError,
    RedisConnectionError,
    RedisTimeoutError,
    ResponseError,
    connect,
    transient,
)
from tests.redis_server import RedisServer

ECHO = Script("return {KEYS[1], ARGV[1], ARGV[2]}")
INCR = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
FAIL = Script("return redis.error_reply('NOPE refused by the script')")
SLOW_TEST = 30.0  # a bound on a hung test, never an assertion about speed


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def client(server: RedisServer, *, timeout: float = 2.0, db: int = 0) -> RespClient:
    return RespClient("127.0.0.1", server.port, db=db, connect_timeout=timeout, timeout=timeout)


def sync(server: RedisServer, db: int = 0) -> redis.Redis:
    return redis.Redis(port=server.port, db=db, socket_timeout=5, decode_responses=True)


async def bounded(call: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(call, SLOW_TEST)


async def test_concurrent_calls_get_their_own_replies(server: RedisServer) -> None:
    resp = client(server)
    try:
        replies = await bounded(asyncio.gather(*(
            resp.evalsha(ECHO, [f"k{i}"], [i, f"v{i}" * (i % 7)]) for i in range(500))))
        assert replies == [[f"k{i}", str(i), f"v{i}" * (i % 7)] for i in range(500)]
        assert await resp.evalsha(ECHO, ["k"], [b"\x00\r\n", "\u00e9"]) == ["k", "\x00\r\n", "\u00e9"]
        total = await bounded(asyncio.gather(*(resp.evalsha(INCR, ["n"], [1]) for _ in range(300))))
        assert sorted(total) == list(range(1, 301))
    finally:
        await resp.aclose()


async def test_a_refusal_is_a_response_error_and_the_connection_stays_usable(
        server: RedisServer) -> None:
    resp = client(server)
    try:
        results = await asyncio.gather(resp.evalsha(ECHO, ["a"], [1, 2]),
                                       resp.evalsha(FAIL, [], []),
                                       resp.evalsha(ECHO, ["b"], [3, 4]), return_exceptions=True)
        assert results[0] == ["a", "1", "2"] and results[2] == ["b", "3", "4"]
        assert isinstance(results[1], ResponseError) and "NOPE" in str(results[1])
        assert not transient(results[1])
    finally:
        await resp.aclose()


async def test_noscript_after_a_script_flush_loads_the_script(server: RedisServer) -> None:
    resp = client(server)
    try:
        assert await resp.evalsha(ECHO, ["a"], [1, 2]) == ["a", "1", "2"]
        sync(server).script_flush()
        assert sync(server).script_exists(ECHO.sha.decode()) == [False]
        replies = await asyncio.gather(*(resp.evalsha(ECHO, ["a"], [i, 2]) for i in range(20)))
        assert replies == [["a", str(i), "2"] for i in range(20)]
        assert sync(server).script_exists(ECHO.sha.decode()) == [True]
    finally:
        await resp.aclose()


async def test_it_selects_the_database(server: RedisServer) -> None:
    resp = client(server, db=3)
    try:
        await resp.evalsha(INCR, ["counted"], [5])
        assert sync(server, db=3).get("counted") == "5"
        assert sync(server, db=0).get("counted") is None
    finally:
        await resp.aclose()


async def test_a_paused_server_times_out_every_waiting_call_then_recovers(
        server: RedisServer) -> None:
    resp = client(server, timeout=0.3)
    try:
        assert await resp.evalsha(ECHO, ["a"], [1, 2]) == ["a", "1", "2"]
        server.pause()
        results = await bounded(asyncio.gather(
            *(resp.evalsha(ECHO, ["a"], [i, 2]) for i in range(20)), return_exceptions=True))
        assert all(isinstance(r, RedisTimeoutError) and transient(r) for r in results)
        with pytest.raises(RedisTimeoutError):  # a new connection to a paused server too
            await bounded(resp.evalsha(ECHO, ["a"], [1, 2]))
        server.resume()
        assert await bounded(resp.evalsha(ECHO, ["a"], [1, 2])) == ["a", "1", "2"]
    finally:
        await resp.aclose()


async def test_a_stopped_server_is_a_connection_error_and_a_restart_reconnects(
        server: RedisServer) -> None:
    resp = client(server, timeout=0.5)
    try:
        assert await resp.evalsha(INCR, ["n"], [1]) == 1
        server.stop()
        with pytest.raises(RedisConnectionError) as refused:
            await bounded(resp.evalsha(INCR, ["n"], [1]))
        assert transient(refused.value)
        server.start()  # no persistence: a fresh server, without the script or the key
        assert await bounded(resp.evalsha(INCR, ["n"], [1])) == 1
        server.restart()  # the open connection dies with it: the call reconnects once
        assert await bounded(resp.evalsha(INCR, ["n"], [2])) == 2
    finally:
        await resp.aclose()


async def test_a_cancelled_call_leaves_the_others_their_replies(server: RedisServer) -> None:
    resp = client(server)
    try:
        calls = [asyncio.ensure_future(resp.evalsha(ECHO, ["a"], [i, 2])) for i in range(10)]
        await asyncio.sleep(0)
        calls[3].cancel()
        results = await bounded(asyncio.gather(*calls, return_exceptions=True))
        assert isinstance(results[3], asyncio.CancelledError)
        assert [r for i, r in enumerate(results) if i != 3] == [
            ["a", str(i), "2"] for i in range(10) if i != 3]
        assert await resp.evalsha(ECHO, ["b"], [1, 2]) == ["b", "1", "2"]
    finally:
        await resp.aclose()


def test_under_uvloop(server: RedisServer) -> None:
    """The gateway serves on uvloop, whose transports are not asyncio's classes."""

    async def scenario() -> None:
        resp = client(server, timeout=0.5)
        try:
            replies = await bounded(asyncio.gather(*(
                resp.evalsha(ECHO, [f"k{i}"], [i, "x"]) for i in range(200))))
            assert replies == [[f"k{i}", str(i), "x"] for i in range(200)]
            server.pause()
            with pytest.raises(RedisTimeoutError):
                await bounded(resp.evalsha(ECHO, ["a"], [1, 2]))
            server.resume()
            server.restart()
            assert await bounded(resp.evalsha(ECHO, ["a"], [1, 2])) == ["a", "1", "2"]
        finally:
            await resp.aclose()

    run: Callable[[Awaitable[None]], None] = uvloop.run
    run(scenario())


async def test_the_meter_client_follows_the_redis_py_client(server: RedisServer) -> None:
    plain = connect(f"redis://127.0.0.1:{server.port}/2", timeout=0.5)
    tls = connect("rediss://127.0.0.1:1/0", timeout=0.5)
    try:
        resp = script_client(plain)
        assert resp is not None
        try:
            await resp.evalsha(INCR, ["here"], [1])
            assert sync(server, db=2).get("here") == "1"
        finally:
            await resp.aclose()
        over_tls = script_client(tls)  # the same pipelined client over TLS (test_redis_tls.py)
        assert isinstance(over_tls, RespClient)
        await over_tls.aclose()
    finally:
        await plain.aclose()
        await tls.aclose()


async def test_it_authenticates_when_the_server_wants_a_password(server: RedisServer) -> None:
    admin = sync(server)
    admin.config_set("requirepass", "s3cret")
    try:
        good = RespClient("127.0.0.1", server.port, password="s3cret", db=1, connect_timeout=2.0,
                          timeout=2.0)
        bad = RespClient("127.0.0.1", server.port, password="wrong", connect_timeout=2.0,
                         timeout=2.0)
        try:
            assert await good.evalsha(INCR, ["n"], [4]) == 4
            with pytest.raises(AuthenticationError):
                await bad.evalsha(INCR, ["n"], [4])
        finally:
            await good.aclose()
            await bad.aclose()
    finally:
        redis.Redis(port=server.port, password="s3cret").config_set("requirepass", "")
