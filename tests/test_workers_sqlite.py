"""Two `serve --workers 2` on one SQLite file (four processes, the embedded default, no Redis).

What a user of `serve --workers N` expects of it, checked on real processes:
- 1,000 concurrent requests alternate between the two servers against a balance of 250,
  on models costing 1 and 2 credits: the total charged never exceeds 250, less than 2
  credits are left unused, every 200 has exactly one ledger entry and the ledger's sum is
  the credits the replies' headers say; a key capped at 40 credits in a roomy workspace is
  charged at most its cap and refused with `spend_cap_reached` past it; both servers
  served replies, and no hold is left.
- One `Idempotency-Key` sent 40 times at once to both servers: one charge, one ledger entry.
- A key revoked through the operator API of one server stops working on every worker of
  both within a few seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.accounts.workspaces import Accounts
from gateway.catalog import load
from gateway.clock import SystemClock
from gateway.storage.database import create_schema, make_engine, transaction
from tests.fake_provider import FakeProvider
from tests.guarantees.process import ADMIN_TOKEN, GatewayProcess, base_env
from tests.test_two_gateways import two_model_pricing

REQUESTS = 1000
BALANCE = 250
CAP = 40


Servers = tuple[list[GatewayProcess], Accounts, Path]


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory, fake: FakeProvider) -> Iterator[Servers]:
    """Started once for the module (four workers take a while to start on 2 busy cores);
    every test works in workspaces of its own."""
    tmp_path = tmp_path_factory.mktemp("two-servers")
    pricing = two_model_pricing(tmp_path / "pricing.toml", fake)
    db_url = f"sqlite:///{tmp_path / 'shared.db'}"
    engine = make_engine(db_url)
    create_schema(engine)
    engine.dispose()
    env = base_env(tmp_path, pricing, db_url, BOOKBAG_PROVIDER_TIMEOUT="5,30,30",
                   BOOKBAG_HOLD_TTL="60", BOOKBAG_KEY_CACHE_TTL="1")
    servers: list[GatewayProcess] = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        servers.append(GatewayProcess(tmp_path / name, env, workers=2))
    try:
        for server in servers:
            server.start()
        engine = make_engine(db_url)
        yield servers, Accounts(engine, load(pricing), SystemClock()), tmp_path / "shared.db"
        engine.dispose()
    finally:
        for server in servers:
            server.stop()


def chat(i: int) -> dict[str, object]:
    return {"model": "one" if i % 3 else "two",
            "messages": [{"role": "user", "content": f"request {i}"}]}


async def burst(urls: list[str], key: str, capped: str) -> list[tuple[int, int, str, int, bool, str]]:
    """(server, status, request id, credits charged, capped key?, error code) of each request."""
    # One connection per request, none queued: httpcore assigns queued requests to
    # connections in O(n^2), which would make the client, not the gateways, the bottleneck.
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        async def one(i: int) -> tuple[int, int, str, int, bool, str]:
            which, with_cap = i % 2, i % 4 == 1
            r = await client.post(urls[which] + "/v1/chat/completions", json=chat(i),
                                  headers={"Authorization": f"Bearer {capped if with_cap else key}"})
            code = r.json()["error"]["code"] if r.status_code != 200 else ""
            return (which, r.status_code, r.headers.get("x-request-id", ""),
                    int(r.headers.get("x-bookbag-credits-charged", "0")), with_cap, code)

        return list(await asyncio.gather(*(one(i) for i in range(REQUESTS))))


def test_two_servers_of_two_workers_share_one_sqlite_file(
    two_servers: Servers, provider: FakeProvider,
) -> None:
    servers, accounts, db = two_servers
    ws = accounts.create_workspace("shared", "enterprise", custom_allotment=BALANCE)
    key = accounts.create_key(ws.id).key
    roomy = accounts.create_workspace("capped", "enterprise", custom_allotment=10_000)
    capped = accounts.create_key(roomy.id)
    accounts.set_cap(roomy.id, "key", capped.id, CAP)

    results = asyncio.run(burst([s.url for s in servers], key, capped.key))

    assert {r[1] for r in results} <= {200, 402}, sorted({(r[1], r[5]) for r in results})
    capped_ok = [r for r in results if r[4] and r[1] == 200]
    capped_charged = sum(r[3] for r in capped_ok)
    assert CAP - 2 < capped_charged <= CAP, capped_charged  # the cap, under concurrency
    assert {r[5] for r in results if r[4] and r[1] == 402} == {"spend_cap_reached"}
    ok = [r for r in results if r[1] == 200 and not r[4]]
    charged = sum(r[3] for r in ok)
    assert charged <= BALANCE
    assert BALANCE - charged < 2  # only a 2-credit request can be refused at 1 left
    assert {r[0] for r in ok} == {0, 1}, "both servers served requests"
    assert provider.count("/v1/chat/completions") == len(ok) + len(capped_ok)  # no 402 called it

    with transaction(make_engine(f"sqlite:///{db}")) as (cur, _):
        cur.execute("SELECT workspace_id, request_id, credits FROM ledger WHERE kind = 'reply'")
        rows = cur.fetchall()
        cur.execute("SELECT COUNT(*) FROM holds")
        holds = cur.fetchone()[0]
    mine = {r[1]: r[2] for r in rows if r[0] == ws.id}
    assert set(mine) == {r[2] for r in ok}  # every 200 has exactly one entry, nothing else
    assert sum(mine.values()) == charged
    theirs = {r[1]: r[2] for r in rows if r[0] == roomy.id}
    assert set(theirs) == {r[2] for r in capped_ok}
    assert sum(theirs.values()) == capped_charged
    assert holds == 0
    balance = accounts.balance(ws.id)
    assert (balance["balance"], balance["reserved"]) == (BALANCE - charged, 0)
    print(f"\ntwo serve --workers 2 on one SQLite file: {len(ok)} x 200, "
          f"{len(results) - len(ok) - len(capped_ok)} x 402, charged {charged}/{BALANCE} "
          f"(capped key {capped_charged}/{CAP}), served a={sum(1 for r in ok if r[0] == 0)} "
          f"b={sum(1 for r in ok if r[0] == 1)}")


def test_one_idempotency_key_across_every_worker_charges_once(
    two_servers: Servers, provider: FakeProvider,
) -> None:
    servers, accounts, db = two_servers
    ws = accounts.create_workspace("idem", "enterprise", custom_allotment=100)
    key = accounts.create_key(ws.id).key
    body = {"model": "one", "messages": [{"role": "user", "content": "once"}]}

    async def duplicates() -> list[httpx.Response]:
        limits = httpx.Limits(max_keepalive_connections=0)  # new connections: every worker
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            return list(await asyncio.gather(*(
                client.post(servers[i % 2].url + "/v1/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {key}",
                                     "Idempotency-Key": "one-reply"})
                for i in range(40))))

    replies = asyncio.run(duplicates())
    assert {r.status_code for r in replies} <= {200, 409}
    first = [r for r in replies if r.status_code == 200
             and r.headers.get("idempotent-replayed") != "true"]
    assert len(first) == 1
    # After it finished, a retry on either server replays it.
    for server in servers:
        again = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30,
                           headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "one-reply"})
        assert again.status_code == 200
        assert again.headers["idempotent-replayed"] == "true"
    with transaction(make_engine(f"sqlite:///{db}")) as (cur, sql):
        cur.execute(sql("SELECT SUM(credits), COUNT(*) FROM ledger WHERE kind = 'reply' "
                        "AND workspace_id = ?"), (ws.id,))
        assert tuple(cur.fetchone()) == (1, 1)
    assert accounts.balance(ws.id)["balance"] == 99


def test_a_revoked_key_stops_on_every_worker_within_seconds(
    two_servers: Servers, provider: FakeProvider,
) -> None:
    servers, accounts, _ = two_servers
    ws = accounts.create_workspace("revoke", "enterprise", custom_allotment=1000)
    created = accounts.create_key(ws.id)
    body = {"model": "one", "messages": [{"role": "user", "content": "hi"}]}
    auth = {"Authorization": f"Bearer {created.key}"}

    def statuses() -> set[int]:
        # Fresh connections, many of them: the kernel spreads them over both workers of each.
        with httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            return {client.post(s.url + "/v1/chat/completions", json=body, headers=auth).status_code
                    for s in servers for _ in range(12)}

    assert statuses() == {200}  # every worker has the key in its cache now
    revoked = httpx.delete(f"{servers[0].url}/admin/keys/{created.id}",
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
    assert revoked.status_code == 200, revoked.text
    deadline = time.monotonic() + 10  # the key cache's TTL is 1 s here; "a few seconds"
    while (seen := statuses()) != {401}:
        assert time.monotonic() < deadline, seen
        time.sleep(0.2)


def test_the_summary_says_what_two_workers_run_on_sqlite(tmp_path: Path) -> None:
    from gateway.cli.serve import summary
    from gateway.settings import Settings

    pricing = tmp_path / "p.toml"
    pricing.write_text('[models."local"]\nprovider = "local"\ncredits = 1\n\n'
                       '[plans.free]\ncredits = 100\n')
    env = {"BOOKBAG_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
           "BOOKBAG_PRICING": str(pricing)}
    one = "\n".join(summary(Settings.from_env(env), load(pricing), created=False, workers=1))
    assert "meter          memory  (embedded: this process owns the balances)" in one
    assert "per worker" not in one
    # `serve --workers 2` sets BOOKBAG_METER=sql before it builds the settings.
    two = "\n".join(summary(Settings.from_env({**env, "BOOKBAG_METER": "sql"}), load(pricing),
                            created=False, workers=2))
    assert "(2 workers)" in two
    assert "meter          sql  (balances in the SQLite file, shared by the 2 workers" in two
    assert "per worker     rate limits and the in-flight cap" in two
    with_redis = Settings.from_env({**env, "BOOKBAG_REDIS_URL": "redis://127.0.0.1:1/0"})
    text = "\n".join(summary(with_redis, load(pricing), created=False, workers=2))
    assert "meter          redis  (balances in Redis" in text and "per worker" not in text
