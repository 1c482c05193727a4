"""Per-key rate limits: from the plan or the key, on every /v1 route, before anything is
reserved; shared through Redis; failing open for unmetered requests when Redis is down."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.catalog import RateLimit
from gateway.metering.redis_keys import shard_of
from gateway.ratelimit.limiter import gcra
from tests import harness
from tests.conftest import GatewayFactory
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway
from tests.lifecycle_support import HELLO, admin, chat
from tests.redis_cluster import raw_client
from tests.redis_server import RedisServer

LIMITED = "6/60s"


@pytest.fixture
def limited_pricing(tmp_path: Path, provider: FakeProvider) -> Path:
    """The test catalog with a rate limit on the free plan."""
    path = tmp_path / "limited.toml"
    text = harness.test_pricing(provider).replace("[plans.free]\ncredits = 100",
                                          f'[plans.free]\ncredits = 100\nrate_limit = "{LIMITED}"')
    assert LIMITED in text
    path.write_text(text)
    return path


def requests() -> list[tuple[str, str, dict[str, Any] | None]]:
    """One request to each kind of /v1 route: metered, unmetered, embeddings, reads."""
    return [
        ("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO}),
        ("POST", "/v1/chat/completions", {"model": "bookbag-local", "messages": HELLO}),
        ("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO,
                                          "stream": True}),
        ("POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"}),
        ("GET", "/v1/models", None),
        ("GET", "/v1/balance", None),
    ]


def test_the_plan_limit_applies_to_every_route(
    make_gateway: GatewayFactory, limited_pricing: Path, provider: FakeProvider,
) -> None:
    gw = make_gateway(BOOKBAG_PRICING=str(limited_pricing))
    ws, key = gw.workspace("free")
    with gw.client(key) as c:
        for i, (method, path, body) in enumerate(requests()):
            r = c.request(method, path, json=body)
            assert r.status_code == 200, (path, r.text)
            assert (r.headers["x-ratelimit-limit"], r.headers["x-ratelimit-remaining"]) == (
                "6", str(5 - i))
            assert 0 < int(r.headers["x-ratelimit-reset"]) <= 60
        calls = provider.count()
        for method, path, body in requests():
            r = c.request(method, path, json=body)
            assert r.status_code == 429, path
            error = r.json()["error"]
            assert (error["code"], error["type"]) == ("rate_limit_exceeded", "rate_limit_error")
            # 6 per 60 s: one more request is allowed every 10 s.
            assert 1 <= int(r.headers["retry-after"]) <= 10
            assert (r.headers["x-ratelimit-limit"], r.headers["x-ratelimit-remaining"]) == (
                "6", "0")
            assert r.headers["x-request-id"].startswith("req_")
    # Refused before anything else: no provider call, no hold, no charge.
    assert provider.count() == calls
    assert len(gw.ledger(ws)) == 3  # the replies of the first round


def test_the_limit_is_per_key_and_a_key_may_set_its_own(
    make_gateway: GatewayFactory, limited_pricing: Path,
) -> None:
    gw = make_gateway(BOOKBAG_PRICING=str(limited_pricing))
    ws, key = gw.workspace("free")
    other = gw.key(ws)
    tight = gw.accounts.create_key(ws, rate_limit="2/60s").key
    for _ in range(6):
        assert chat(gw, key, "bookbag-local").status_code == 200
    assert chat(gw, key, "bookbag-local").status_code == 429
    assert chat(gw, other, "bookbag-local").status_code == 200  # another key, its own budget
    assert [chat(gw, tight, "bookbag-local").status_code for _ in range(3)] == [200, 200, 429]
    # A plan without a limit: no limit and no headers, unless the key or workspace sets one.
    ws2, free_key = gw.workspace("hobby")
    r = chat(gw, free_key, "bookbag-local")
    assert r.status_code == 200 and "x-ratelimit-limit" not in r.headers
    with admin(gw) as c:
        r = c.patch(f"/admin/workspaces/{ws2}", json={"rate_limit": "1/60s"})
        assert r.status_code == 200, r.text
        assert c.patch(f"/admin/workspaces/{ws2}", json={"rate_limit": "lots"}).status_code == 400
        made = c.post(f"/admin/workspaces/{ws2}/keys", json={"rate_limit": "1/60s"}).json()
    assert [chat(gw, made["key"], "bookbag-local").status_code for _ in range(2)] == [200, 429]


def test_openai_clients_see_a_rate_limit_error(
    make_gateway: GatewayFactory, limited_pricing: Path,
) -> None:
    gw = make_gateway(BOOKBAG_PRICING=str(limited_pricing))
    _, key = gw.workspace("free")
    client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    for _ in range(6):
        client.chat.completions.create(model="bookbag-local", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="bookbag-local", messages=HELLO)
    assert caught.value.code == "rate_limit_exceeded"


def test_gcra_allows_the_burst_then_the_rate() -> None:
    limit = RateLimit(100, 10.0)
    tat = None
    allowed = 0
    for _ in range(150):  # all at once: the burst
        verdict, new = gcra(tat, 0.0, limit)
        if new is not None:
            tat, allowed = new, allowed + 1
    assert allowed == 100 and verdict.retry_after == pytest.approx(0.1)
    verdict, new = gcra(tat, 100.0, limit)  # 100 ms later: one more
    assert verdict.allowed and verdict.remaining == 0
    verdict, _ = gcra(new, 150.0, limit)
    assert not verdict.allowed and verdict.retry_after == pytest.approx(0.05)
    verdict, _ = gcra(new, 10_100.0, limit)  # ten seconds of quiet: the whole burst again
    assert verdict.allowed and verdict.remaining == 99


@pytest.fixture
def redis_server(tmp_path: Path) -> Any:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


def test_the_limit_is_shared_across_processes_through_redis(
    make_gateway: GatewayFactory, limited_pricing: Path, redis_server: RedisServer,
) -> None:
    env = {"BOOKBAG_PRICING": str(limited_pricing), "BOOKBAG_REDIS_URL": redis_server.url}
    gws = [make_gateway(**env) for _ in range(2)]
    _, key = gws[0].workspace("free")
    codes = [chat(gws[i % 2], key, "bookbag-local").status_code for i in range(8)]
    assert codes == [200] * 6 + [429] * 2


def test_the_limit_is_shared_across_processes_on_a_redis_cluster(
    make_gateway: GatewayFactory, limited_pricing: Path, cluster_url: str,
) -> None:
    """On the session's Redis Cluster; the state lives under the workspace's shard tag."""
    env = {"BOOKBAG_PRICING": str(limited_pricing), "BOOKBAG_REDIS_URL": cluster_url}
    gws = [make_gateway(**env) for _ in range(2)]
    ws, key = gws[0].workspace("free")
    codes = [chat(gws[i % 2], key, "bookbag-local").status_code for i in range(8)]
    assert codes == [200] * 6 + [429] * 2

    async def names() -> list[str]:
        raw = raw_client(cluster_url)
        try:
            return [n.decode() async for n in raw.scan_iter(match="bk:*:rl:*")]
        finally:
            await raw.aclose()

    found = asyncio.run(names())
    assert len(found) == 1 and found[0].startswith(f"bk:{{s{shard_of(ws):02d}}}:rl:key_"), found


@pytest.mark.parametrize("meter", ["redis", "sql"])
def test_redis_down_fails_open_for_unmetered_and_closed_for_metered(
    make_gateway: GatewayFactory, limited_pricing: Path, redis_server: RedisServer, meter: str,
) -> None:
    gw = make_gateway(BOOKBAG_PRICING=str(limited_pricing), BOOKBAG_REDIS_URL=redis_server.url,
                      BOOKBAG_METER=meter, BOOKBAG_REDIS_TIMEOUT="0.3")
    ws, key = gw.workspace("free")
    assert chat(gw, key).status_code == 200
    redis_server.kill()
    with gw.client(key) as c:
        for _ in range(8):  # past the limit: nothing is counted while Redis is gone
            r = c.post("/v1/chat/completions", json={"model": "bookbag-local", "messages": HELLO})
            assert r.status_code == 200 and "x-ratelimit-limit" not in r.headers
        r = c.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"})
        assert r.status_code == 200
        r = c.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": HELLO})
        assert (r.status_code, r.json()["error"]["code"]) == (503, "service_unavailable")
    assert sum(e["credits"] for e in gw.ledger(ws)) == 1


def test_malformed_limits_are_refused(gateway: RunningGateway) -> None:
    ws, _ = gateway.workspace("free")
    with pytest.raises(ValueError, match="rate_limit"):
        gateway.accounts.create_key(ws, rate_limit="100 per minute")
    with admin(gateway) as c:
        r = c.post(f"/admin/workspaces/{ws}/keys", json={"rate_limit": "0/10s"})
    assert r.status_code == 400
