"""Issue 12 point 6: one workspace cannot take the whole upstream pool (per-workspace in-flight cap)."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx

from tests.conftest import GatewayFactory
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway
from tests.lifecycle_support import chat


def wait_for(predicate: object, what: str) -> None:
    deadline = time.monotonic() + 20
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_workspace_over_its_in_flight_cap_gets_429_and_others_are_served(
    make_gateway: GatewayFactory, provider: FakeProvider,
) -> None:
    gw = make_gateway(BOOKBAG_MAX_INFLIGHT_PER_WORKSPACE=2)
    _, key = gw.workspace("free")
    _, other = gw.workspace("free")
    provider.fail("hang", times=2)
    held: list[httpx.Response | Exception] = []

    def hold() -> None:
        try:
            held.append(chat(gw, key))
        except Exception as exc:  # released by provider.reset(): any outcome is fine here
            held.append(exc)

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    wait_for(lambda: provider.count() == 2, "two requests in flight at the provider")
    before = gw.balance(key)

    over = chat(gw, key)
    assert over.status_code == 429
    assert over.json()["error"]["code"] == "rate_limit_exceeded"
    assert over.headers["retry-after"] == "1"
    assert gw.balance(key) == before  # nothing reserved, nothing charged
    assert provider.count() == 2  # never sent upstream

    assert chat(gw, key, model="bookbag-local").status_code == 200  # not counted
    assert chat(gw, other).status_code == 200  # another workspace is served

    provider.reset()  # the hung calls end (their connections dropped)
    for t in threads:
        t.join(timeout=30)
    assert len(held) == 2
    assert chat(gw, key).status_code == 200  # the slots were given back


def test_streams_give_their_slot_back(
    make_gateway: GatewayFactory, provider: FakeProvider,
) -> None:
    gw = make_gateway(BOOKBAG_MAX_INFLIGHT_PER_WORKSPACE=1)
    _, key = gw.workspace("free")
    for _ in range(3):
        with gw.client(key) as c, c.stream("POST", "/v1/chat/completions", json={
            "model": "gpt-4o-mini", "stream": True,
            "messages": [{"role": "user", "content": "hello"}],
        }) as response:
            assert response.status_code == 200
            body = b"".join(response.iter_bytes())
        assert b"[DONE]" in body
    for _ in range(2):
        assert chat(gw, key).status_code == 200


def test_the_cap_can_be_turned_off(make_gateway: GatewayFactory, provider: FakeProvider) -> None:
    gw = make_gateway(BOOKBAG_MAX_INFLIGHT_PER_WORKSPACE=0)
    _, key = gw.workspace("free")
    provider.fail("hang", times=3)
    threads = [threading.Thread(target=lambda: _quiet(gw, key)) for _ in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: provider.count() == 3, "three requests in flight at the provider")
    provider.reset()
    for t in threads:
        t.join(timeout=30)


def _quiet(gw: RunningGateway, key: str) -> None:
    with contextlib.suppress(Exception):  # released by provider.reset(): any outcome is fine
        chat(gw, key)
