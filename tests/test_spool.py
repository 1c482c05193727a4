"""The spool: unmetered entries survive a database outage on local disk and reach the
ledger exactly once when it is back."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from gateway.ledger.spool import Spool, encode, ledger_sink
from gateway.storage.database import create_schema, make_engine, transaction
from gateway.types import BillingMode, LedgerEntry
from tests.conftest import GatewayFactory
from tests.fake_provider import ANTHROPIC_KEY, OPENAI_KEY, FakeProvider
from tests.harness import RunningGateway
from tests.postgres import PostgresServer
from tests.relay_pricing import relay_only_pricing

LOCAL = {"model": "bookbag-local",
         "messages": [{"role": "system", "content": "The office opens at 9am."},
                      {"role": "user", "content": "When does the office open?"}]}
BYO_KEY = "sk-byo-secret-for-spool-test-123456"


@pytest.fixture
def pricing(tmp_path: Path, provider: FakeProvider) -> Path:
    """No litellm route: nothing to import in the background, so gateways stop at once."""
    path = tmp_path / "pricing.toml"
    path.write_text(relay_only_pricing(provider))
    return path


def entry(n: int, workspace: str = "ws_spool") -> LedgerEntry:
    return LedgerEntry(request_id=f"req_spool_{n}", workspace_id=workspace,
                       billing_mode=BillingMode.LOCAL, model="bookbag-local", provider="local",
                       replies=1, reason="local_model", created_ms=1_700_000_000_000 + n)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    create_schema(engine)
    yield engine
    engine.dispose()


def ledger_ids(engine: Engine) -> list[str]:
    with transaction(engine) as (cur, _):
        cur.execute("SELECT request_id FROM ledger WHERE kind = 'reply' ORDER BY request_id")
        return [r[0] for r in cur.fetchall()]


def test_spooled_entries_reach_the_ledger_once_and_the_spool_empties(
    tmp_path: Path, engine: Engine
) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    for n in range(5):
        spool.append(entry(n))
    assert spool.backlog() == 5
    assert spool.drain(ledger_sink(engine)) == 5
    assert ledger_ids(engine) == [f"req_spool_{n}" for n in range(5)]
    assert spool.backlog() == 0 and not spool.has_backlog()
    assert spool.drain(ledger_sink(engine)) == 0


def test_a_replay_interrupted_by_a_crash_is_replayed_again_harmlessly(
    tmp_path: Path, engine: Engine
) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    for n in range(6):
        spool.append(entry(n))
    written: list[str] = []

    def dies_after_first_batch(entries: list[LedgerEntry]) -> None:
        ledger_sink(engine)(entries[:3])  # the first three commit, then the process dies
        written.extend(e.request_id for e in entries[:3])
        raise OSError("killed mid-replay")

    with pytest.raises(OSError, match="killed"):
        spool.drain(dies_after_first_batch)
    assert len(written) == 3 and spool.replaying.exists()
    spool.append(entry(6))  # appends go on during and after the failed replay
    again = Spool(tmp_path / "spool.jsonl")  # a restarted process
    assert again.backlog() == 7
    assert again.drain(ledger_sink(engine)) == 6  # the interrupted file first...
    assert again.drain(ledger_sink(engine)) == 1  # ...then what arrived since
    assert ledger_ids(engine) == [f"req_spool_{n}" for n in range(7)]
    assert not again.has_backlog()


def test_a_line_torn_by_a_crash_loses_only_itself(tmp_path: Path, engine: Engine) -> None:
    path = tmp_path / "spool.jsonl"
    spool = Spool(path)
    spool.append(entry(0))
    with path.open("ab") as f:
        f.write(encode(entry(1))[:25])  # the process died inside this write
    spool.append(entry(2))
    assert spool.drain(ledger_sink(engine)) == 2
    assert spool.skipped == 1
    assert ledger_ids(engine) == ["req_spool_0", "req_spool_2"]


def test_appends_from_many_threads_are_all_kept(tmp_path: Path, engine: Engine) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: spool.append(entry(n)), range(200)))
    assert spool.drain(ledger_sink(engine)) == 200
    assert len(ledger_ids(engine)) == 200


def test_a_large_spool_is_replayed_in_batches(tmp_path: Path, engine: Engine) -> None:
    path = tmp_path / "spool.jsonl"
    path.write_bytes(b"".join(encode(entry(n)) for n in range(1234)))
    batches: list[int] = []

    def sink(entries: list[LedgerEntry]) -> None:
        batches.append(len(entries))
        ledger_sink(engine)(entries)

    assert Spool(path).drain(sink) == 1234
    assert batches == [500, 500, 234]
    assert len(ledger_ids(engine)) == 1234


# --- PostgreSQL stopped under load ------------------------------------------


@pytest.fixture
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.destroy()


def post(gw: RunningGateway, key: str, body: dict[str, object],
         headers: dict[str, str] | None = None) -> httpx.Response:
    with gw.client(key) as c:
        return c.post("/v1/chat/completions", json=body, headers=headers or {})


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def test_postgresql_stopped_mid_test_unmetered_replies_spool_and_arrive_once(
    pg_server: PostgresServer, make_gateway: GatewayFactory, tmp_path: Path,
    provider: FakeProvider,
) -> None:
    # pg_server first: the gateways stop before their database is destroyed.
    spool_path = tmp_path / "pg-spool.jsonl"
    gw = make_gateway(BOOKBAG_DATABASE_URL=pg_server.url(), BOOKBAG_SPOOL_PATH=str(spool_path))
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # a spool path under a file: every append fails
    no_spool = make_gateway(BOOKBAG_DATABASE_URL=pg_server.url(),
                            BOOKBAG_SPOOL_PATH=str(blocked / "spool.jsonl"))
    ws, key = gw.workspace()
    first = post(gw, key, LOCAL)
    assert first.status_code == 200
    assert post(no_spool, key, LOCAL).status_code == 200
    assert len(gw.wait_ledger(ws, 2)) == 2
    provider.openai_keys.add(BYO_KEY)
    try:
        pg_server.stop()
        time.sleep(gw.settings.key_cache_ttl + 0.1)  # the key's cache entries have expired
        down = [post(gw, key, LOCAL) for _ in range(8)]
        byo = post(gw, key, {**LOCAL, "model": "gpt-4o-mini"},
                   headers={"X-Bookbag-Provider-Key": BYO_KEY})
        started = time.perf_counter()
        metered = post(gw, key, {**LOCAL, "model": "gpt-4o-mini"})
        metered_ms = (time.perf_counter() - started) * 1000
        lost = [post(no_spool, key, LOCAL) for _ in range(3)]
    finally:
        provider.openai_keys.discard(BYO_KEY)
    assert [r.status_code for r in down] == [200] * 8
    assert byo.status_code == 200, byo.text
    assert metered.status_code == 503  # fail closed: never let through uncharged
    # A spool that cannot be written is counted, never turned into an error.
    assert [r.status_code for r in lost] == [200] * 3
    assert no_spool.gw.pipeline.recorder.lost == 3
    assert gw.gw.pipeline.recorder.lost == 0

    with httpx.Client(base_url=gw.url) as c:
        ready = c.get("/readyz")
    assert ready.status_code == 200
    assert set(ready.json()["degraded"]) == {"database", "spool"}
    assert ready.json()["spool_backlog"] == 9
    # A replay attempt may have moved the first lines to `.replaying`; both files count.
    files = [spool_path, gw.gw.spool.replaying]
    text = "".join(p.read_text() for p in files if p.exists())
    assert len(text.splitlines()) == 9
    for secret in (BYO_KEY, OPENAI_KEY, ANTHROPIC_KEY, key):
        assert secret not in text

    pg_server.start()
    restarted = time.perf_counter()
    wait_for(lambda: not spool_path.exists() and not gw.gw.spool.replaying.exists())
    print(f"\nPostgreSQL stopped: 9/9 unmetered replies 200 and spooled, metered 503 in "
          f"{metered_ms:.0f} ms; spool drained {time.perf_counter() - restarted:.1f} s after "
          "the restart; ledger has each entry once")
    ids = [r["request_id"] for r in gw.ledger(ws)]
    expected = {first.headers["x-request-id"], byo.headers["x-request-id"],
                *(r.headers["x-request-id"] for r in down)}
    assert expected <= set(ids)
    assert len(ids) == len(set(ids)) == 2 + 9  # every entry exactly once (+ no_spool's first)
    with httpx.Client(base_url=gw.url) as c:
        wait_for(lambda: c.get("/readyz").json()["degraded"] == [])
    assert post(gw, key, {**LOCAL, "model": "gpt-4o-mini"}).status_code == 200
