"""Two gateway processes sharing Redis and PostgreSQL never overdraw (issue 3).

1,000 concurrent requests alternate between the two processes against a
balance of 250, on models costing 1 and 2 credits: the total charged never
exceeds 250, less than 2 credits are left unused, every 200 has exactly one
ledger entry in PostgreSQL, and both processes served requests. A quarter of
the requests use a key capped at 40 credits per period (spend controls), in a
workspace with plenty of credits: it is charged at most its cap (and less than
2 below it), and is refused with `spend_cap_reached` past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
import pytest

from gateway.accounts.workspaces import Accounts
from gateway.catalog import load
from gateway.clock import SystemClock
from gateway.storage.database import create_schema, make_engine
from tests.fake_provider import FakeProvider
from tests.guarantees.process import GatewayProcess, base_env
from tests.postgres import fresh_database
from tests.redis_server import RedisServer

REQUESTS = 1000
BALANCE = 250
CAP = 40


def two_model_pricing(path: Path, fake: FakeProvider) -> Path:
    path.write_text(f"""
[models."one"]
provider = "openai"
credits = 1
api_base = "{fake.openai_base}"

[models."two"]
provider = "openai"
credits = 2
api_base = "{fake.openai_base}"

[plans.enterprise]
credits = "custom"
""")
    return path


async def fire(urls: list[str], key: str, capped: str) -> list[tuple[int, int, str, int, bool, str]]:
    """(gateway index, status, request id, credits charged, capped key?, error code) of each
    request, all at once; every fourth request uses the capped key."""
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        async def one(i: int) -> tuple[int, int, str, int, bool, str]:
            which, with_cap = i % 2, i % 4 == 1
            body = {"model": "one" if i % 3 else "two",
                    "messages": [{"role": "user", "content": f"request {i}"}]}
            r = await client.post(urls[which] + "/v1/chat/completions", json=body,
                                  headers={"Authorization": f"Bearer {capped if with_cap else key}"})
            charged = int(r.headers.get("x-bookbag-credits-charged", "0"))
            code = r.json()["error"]["code"] if r.status_code != 200 else ""
            return which, r.status_code, r.headers.get("x-request-id", ""), charged, with_cap, code

        # One request to each gateway first, so that both are known to serve (on 2 busy
        # cores, a gateway slower to warm up could otherwise see only 402s), then the burst.
        # Requests 0 and 3 go to gateways a and b with the uncapped key.
        first = [await one(0), await one(3)]
        rest = (i for i in range(REQUESTS) if i not in (0, 3))
        return first + list(await asyncio.gather(*(one(i) for i in rest)))


@pytest.mark.parametrize("topology", ["single", "cluster"])
def test_two_gateways_on_redis_and_postgres_never_overdraw(
    tmp_path: Path, provider: FakeProvider, topology: str, request: pytest.FixtureRequest,
) -> None:
    """`cluster`: the session's Redis Cluster (three primaries, tests/redis_cluster.py)."""
    pricing = two_model_pricing(tmp_path / "pricing.toml", provider)
    redis = RedisServer(tmp_path / "redis")
    redis_url = redis.start().url if topology == "single" else str(
        request.getfixturevalue("cluster_url"))
    gateways: list[GatewayProcess] = []
    try:
        with fresh_database() as db_url, contextlib.ExitStack() as cleanup:
            engine = make_engine(db_url)
            cleanup.callback(engine.dispose)  # even when an assertion fails
            create_schema(engine)
            accounts = Accounts(engine, load(pricing), SystemClock())
            ws = accounts.create_workspace("two gateways", "enterprise", custom_allotment=BALANCE)
            key = accounts.create_key(ws.id).key
            # The capped key is in a workspace of its own with plenty of credits: its cap binds.
            roomy = accounts.create_workspace("capped", "enterprise", custom_allotment=10_000)
            capped = accounts.create_key(roomy.id)
            accounts.set_cap(roomy.id, "key", capped.id, CAP)
            env = base_env(tmp_path, pricing, db_url, BOOKBAG_REDIS_URL=redis_url,
                           BOOKBAG_PROVIDER_TIMEOUT="5,30,30", BOOKBAG_HOLD_TTL="60",
                           # Not a fault test: the 0.5 s fail-fast default would turn a
                           # 1,000-request burst on 2 busy cores into 503s.
                           BOOKBAG_REDIS_TIMEOUT="10")
            for name in ("a", "b"):
                (tmp_path / name).mkdir()
                gateways.append(GatewayProcess(tmp_path / name, env).start())

            results = asyncio.run(fire([g.url for g in gateways], key, capped.key))

            assert {r[1] for r in results} <= {200, 402}, sorted({r[1] for r in results})
            capped_charged = sum(r[3] for r in results if r[4] and r[1] == 200)
            assert CAP - 2 < capped_charged <= CAP, capped_charged  # the cap, under concurrency
            assert {r[5] for r in results if r[4] and r[1] == 402} == {"spend_cap_reached"}
            ok = [r for r in results if r[1] == 200 and not r[4]]
            charged = sum(r[3] for r in ok)
            assert charged <= BALANCE
            assert BALANCE - charged < 2  # only a 2-credit request can be refused at 1 left
            assert {r[0] for r in ok} == {0, 1}, "both processes served requests"
            assert not any(r[5] == "spend_cap_reached" for r in results if not r[4])

            # The outbox moves every charge to PostgreSQL: wait for it to drain.
            ids = {r[2] for r in ok}
            deadline = time.monotonic() + 30
            while True:
                with engine.connect() as conn:
                    rows = conn.exec_driver_sql(
                        "SELECT request_id, credits FROM ledger WHERE kind = 'reply' "
                        "AND workspace_id = %(ws)s", {"ws": ws.id}).fetchall()
                if len(rows) >= len(ok) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert len(rows) == len(ok)
            assert {r[0] for r in rows} == ids  # every 200 has exactly one entry, nothing else
            assert sum(r[1] for r in rows) == charged
            capped_ok = sum(1 for r in results if r[4] and r[1] == 200)
            assert provider.count("/v1/chat/completions") == len(ok) + capped_ok  # no 402 called it
            print(f"\ntwo gateways ({topology}): {len(ok)} x 200, {len(results) - len(ok)} x 402, "
                  f"charged {charged}/{BALANCE} (capped key {capped_charged}/{CAP}), "
                  f"served a={sum(1 for r in ok if r[0] == 0)} b={sum(1 for r in ok if r[0] == 1)}")
    finally:
        for g in gateways:
            g.stop()
        redis.stop()
