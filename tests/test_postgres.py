"""The gateway on PostgreSQL (every table; the `sql` meter, chosen without Redis)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.app import meter_kind
from tests.conftest import GatewayFactory
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway
from tests.postgres import fresh_database
from tests.relay_pricing import relay_only_pricing

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def pricing(tmp_path: Path, provider: FakeProvider) -> Path:
    """No litellm route: nothing to import in the background, so gateways stop at once."""
    path = tmp_path / "pricing.toml"
    path.write_text(relay_only_pricing(provider))
    return path


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture
def pg_gateway(make_gateway: GatewayFactory, pg_url: str) -> RunningGateway:
    return make_gateway(BOOKBAG_DATABASE_URL=pg_url)


def test_postgresql_without_redis_uses_the_sql_meter(pg_gateway: RunningGateway) -> None:
    assert pg_gateway.engine.dialect.name == "postgresql"
    assert meter_kind(pg_gateway.settings) == "sql"


def test_metered_replies_then_402_with_the_ledger_in_postgresql(
    pg_gateway: RunningGateway, provider: FakeProvider
) -> None:
    ws, key = pg_gateway.workspace("enterprise", custom_allotment=3)
    with pg_gateway.client(key) as c:
        replies = [c.post("/v1/chat/completions", json=CHAT) for _ in range(3)]
        refused = c.post("/v1/chat/completions", json=CHAT)
        local = c.post("/v1/chat/completions",
                       json={**CHAT, "model": "bookbag-local"})
    assert [r.status_code for r in replies] == [200, 200, 200]
    assert [r.headers["x-bookbag-credits-remaining"] for r in replies] == ["2", "1", "0"]
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "insufficient_credits"
    assert local.status_code == 200  # unmetered: a zero balance does not block it
    assert provider.count("/v1/chat/completions") == 3  # the 402 never reached the provider

    rows = pg_gateway.wait_ledger(ws, 4)
    metered = [r for r in rows if r["billing_mode"] == "metered"]
    assert sorted(r["request_id"] for r in metered) == \
        sorted(r.headers["x-request-id"] for r in replies)
    assert all(r["credits"] == 1 and r["allotment_delta"] == -1 for r in metered)
    assert [r["credits"] for r in rows if r["billing_mode"] == "local"] == [0]
    balance = pg_gateway.balance(key)
    assert (balance["balance"], balance["allotment"], balance["reserved"]) == (0, 3, 0)


def test_concurrent_reserves_on_postgresql_never_overdraw(pg_gateway: RunningGateway) -> None:
    import concurrent.futures

    ws, key = pg_gateway.workspace("enterprise", custom_allotment=10)

    def one(_: int) -> int:
        with httpx.Client(base_url=pg_gateway.url, timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as c:
            return c.post("/v1/chat/completions", json=CHAT).status_code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(40)))
    assert codes.count(200) == 10 and codes.count(402) == 30
    rows = pg_gateway.wait_ledger(ws, 10)
    assert sum(r["credits"] for r in rows) == 10
    assert len({r["request_id"] for r in rows}) == len(rows) == 10
