"""count_tokens fails open when Redis is down (its own rate-limit buckets live there, and it
costs nothing), while a metered message needs what a metered chat completion needs: with
the Redis meter it is refused (503, Anthropic's `overloaded_error`)."""

from __future__ import annotations

import pytest

from tests.conftest import GatewayFactory
from tests.messages.conftest import HELLO
from tests.redis_server import RedisServer


@pytest.mark.parametrize("meter", ["redis", "sql"])
def test_count_tokens_fails_open_and_messages_fail_closed(
        make_gateway: GatewayFactory, redis_server: RedisServer, meter: str) -> None:
    gw = make_gateway(BOOKBAG_REDIS_URL=redis_server.url, BOOKBAG_METER=meter,
                      BOOKBAG_REDIS_TIMEOUT="0.3")
    ws, key = gw.workspace("free")
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    count = {"model": "gpt-4o-mini", "messages": HELLO}
    message = {"model": "gpt-4o-mini", "max_tokens": 20, "messages": HELLO}
    with gw.client() as c:
        assert c.post("/v1/messages/count_tokens", json=count, headers=headers).status_code == 200
        assert c.post("/v1/messages", json=message, headers=headers).status_code == 200
        gw.wait_ledger(ws, 1)  # the Redis meter's charge reaches SQL through its outbox
        redis_server.kill()
        for _ in range(3):
            r = c.post("/v1/messages/count_tokens", json=count, headers=headers)
            assert r.status_code == 200 and r.json()["input_tokens"] > 0
            r = c.post("/v1/messages/count_tokens", json={**count, "model": "claude-haiku-4-5"},
                       headers=headers)  # asked of the provider, still uncounted
            assert r.status_code == 200 and r.json()["input_tokens"] > 0
        after = c.post("/v1/messages", json=message, headers=headers)
    if meter == "redis":
        assert after.status_code == 503
        assert after.json()["error"]["type"] == "overloaded_error"
    else:  # balances in SQL, no rate limit on the plan: nothing needs Redis
        assert after.status_code == 200
    assert [(r["api"], r["credits"]) for r in gw.ledger(ws)] == \
        [("messages", 1)] * (1 if meter == "redis" else 2)
