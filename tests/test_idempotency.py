"""Idempotency-Key: one provider call and one charge per key; replays, 409, 422, release, expiry.

Every test runs the real gateway against the fake provider. The SQL store is
exercised on the embedded default (and shared by two processes on the `sql`
meter); the Redis store against the local Redis, directly and through two
gateways sharing it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from gateway.clock import ManualClock
from gateway.errors import IdempotencyInProgress, IdempotencyKeyReused, ServiceUnavailable
from gateway.metering.redis_keys import shard_of
from tests.conftest import GatewayFactory
from tests.fake_provider import OPENAI_KEY, FakeProvider
from tests.harness import RunningGateway, free_port
from tests.postgres import fresh_database
from tests.redis_cluster import raw_client
from tests.redis_server import RedisServer

CHAT = "/v1/chat/completions"
BODY: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def post(gw: RunningGateway, key: str, idem: str | bytes | None, body: dict[str, Any] | None = None,
         **headers: str) -> httpx.Response:
    extra: dict[str, Any] = dict(headers)
    if idem is not None:
        extra["Idempotency-Key"] = idem
    with gw.client(key) as c:
        return c.post(CHAT, json=body or BODY, headers=extra)


def events(text: str) -> list[str]:
    return [e[len("data: "):] for e in text.split("\n\n") if e.startswith("data: ")]


def db_path(gw: RunningGateway) -> Path:
    return Path(gw.settings.database_url.removeprefix("sqlite:///"))


def idem_rows(gw: RunningGateway, ws: str) -> list[dict[str, Any]]:
    with sqlite3.connect(db_path(gw)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM idempotency WHERE workspace_id = ?",
                                              (ws,))]


def db_exec(gw: RunningGateway, sql: str, params: tuple[Any, ...]) -> None:
    with sqlite3.connect(db_path(gw)) as conn:
        conn.execute(sql, params)


def wait_for(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


# --- the rules ---------------------------------------------------------------


def test_sequential_duplicate_is_replayed_without_a_new_charge(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    ws, key = gateway.workspace("free")
    first = post(gateway, key, "order-1")
    second = post(gateway, key, "order-1")
    assert first.status_code == second.status_code == 200
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    assert second.headers["content-type"] == "application/json"
    assert second.headers["x-bookbag-credits-charged"] == first.headers["x-bookbag-credits-charged"] == "1"
    assert second.headers["x-request-id"] != first.headers["x-request-id"]
    assert second.headers["x-bookbag-original-request-id"] == first.headers["x-request-id"]
    assert provider.count(CHAT) == 1
    rows = gateway.ledger(ws)
    assert [r["request_id"] for r in rows] == [first.headers["x-request-id"]]
    assert gateway.balance(key)["balance"] == 99


def test_key_is_scoped_to_the_workspace(gateway: RunningGateway, provider: FakeProvider) -> None:
    ws_a, key_a = gateway.workspace("free")
    ws_b, key_b = gateway.workspace("free")
    assert post(gateway, key_a, "shared").status_code == 200
    other = post(gateway, key_b, "shared")
    assert other.status_code == 200 and "idempotent-replayed" not in other.headers
    # Another key of the same workspace shares its keys.
    same_ws = post(gateway, gateway.key(ws_a), "shared")
    assert same_ws.headers["idempotent-replayed"] == "true"
    assert provider.count(CHAT) == 2
    assert len(gateway.ledger(ws_a)) == len(gateway.ledger(ws_b)) == 1


def test_concurrent_duplicates_make_one_call_and_one_charge(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    ws, key = gateway.workspace("free")
    provider.fail("slow_stream", interval=0.5)  # the one call that gets through takes a while
    results: list[httpx.Response] = []
    barrier = threading.Barrier(20)

    def one(c: httpx.Client) -> None:
        barrier.wait()
        results.append(c.post(CHAT, json=BODY, headers={"Idempotency-Key": "burst"}))

    with gateway.client(key, limits=httpx.Limits(max_connections=20)) as c:
        threads = [threading.Thread(target=one, args=(c,)) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(results) == 20
    statuses = sorted(r.status_code for r in results)
    assert set(statuses) <= {200, 409}, statuses
    assert 409 in statuses
    originals = [r for r in results if r.status_code == 200 and "idempotent-replayed" not in r.headers]
    assert len(originals) == 1
    for r in results:
        if r.status_code == 409:
            assert r.json()["error"]["code"] == "idempotency_in_progress"
            assert r.headers["retry-after"] == "1"
        elif r is not originals[0]:
            assert r.content == originals[0].content
    assert provider.count(CHAT) == 1
    assert len(gateway.ledger(ws)) == 1
    assert gateway.balance(key)["balance"] == 99
    # Once the first finished, the same key replays.
    assert post(gateway, key, "burst").headers["idempotent-replayed"] == "true"


def test_same_key_different_body_is_422(gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    assert post(gateway, key, "k").status_code == 200
    other = {**BODY, "messages": [{"role": "user", "content": "something else"}]}
    r = post(gateway, key, "k", other)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "idempotency_key_reused"
    assert provider.count(CHAT) == 1 and len(gateway.ledger(ws)) == 1


def test_body_hash_is_canonical_and_covers_bookbag_metadata(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    _, key = gateway.workspace("free")
    body = {"model": "gpt-4o-mini", "temperature": 0.5,
            "messages": [{"content": "hi", "role": "user"}], "metadata": {"agent_id": "a1"}}
    assert post(gateway, key, "m", body).status_code == 200
    reordered = {"metadata": {"agent_id": "a1"}, "messages": [{"role": "user", "content": "hi"}],
                 "temperature": 0.5, "model": "gpt-4o-mini"}
    assert post(gateway, key, "m", reordered).headers["idempotent-replayed"] == "true"
    # Bookbag's metadata is part of the body that is compared.
    other_agent = {**body, "metadata": {"agent_id": "a2"}}
    assert post(gateway, key, "m", other_agent).status_code == 422
    assert provider.count(CHAT) == 1


def test_malformed_key_is_400_and_the_longest_is_accepted(gateway: RunningGateway,
                                                         provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    for bad in ("", "x" * 256, b"caf\xc3\xa9", "tab\there"):
        r = post(gateway, key, bad)
        assert r.status_code == 400, bad
        assert r.json()["error"]["code"] == "invalid_request"
        assert r.json()["error"]["param"] == "Idempotency-Key"
    assert provider.count(CHAT) == 0 and gateway.ledger(ws) == []
    longest = "k" * 200 + " ~!{}" + "z" * 50
    assert post(gateway, key, longest).status_code == 200
    assert post(gateway, key, longest).headers["idempotent-replayed"] == "true"


# --- failures release the key --------------------------------------------------------


def test_provider_failure_releases_the_key(gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    provider.fail("status", status=500, message="upstream broke")
    assert post(gateway, key, "retry-me").status_code == 502
    assert idem_rows(gateway, ws) == []
    retry = post(gateway, key, "retry-me")
    assert retry.status_code == 200 and "idempotent-replayed" not in retry.headers
    assert provider.count(CHAT) == 2
    assert len(gateway.ledger(ws)) == 1
    assert gateway.balance(key)["balance"] == 99


def test_insufficient_credits_releases_the_key(gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("enterprise", custom_allotment=3)
    body = {**BODY, "model": "gpt-4o"}  # 5 credits
    assert post(gateway, key, "topup-then-retry", body).status_code == 402
    gateway.run(gateway.gw.meter.grant(gateway.accounts.topup_entry(ws, 10)))
    r = post(gateway, key, "topup-then-retry", body)
    assert r.status_code == 200 and "idempotent-replayed" not in r.headers
    assert provider.count(CHAT) == 1
    assert [row["credits"] for row in gateway.ledger(ws)] == [5]


def test_broken_stream_releases_the_key(gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    provider.fail("cut", after=2, path=CHAT)
    body = {**BODY, "stream": True}
    broken = post(gateway, key, "s", body)
    assert "[DONE]" not in broken.text and '"error"' in broken.text
    wait_for(lambda: idem_rows(gateway, ws) == [])
    again = post(gateway, key, "s", body)
    assert events(again.text)[-1] == "[DONE]" and "idempotent-replayed" not in again.headers
    assert provider.count(CHAT) == 2
    assert len(gateway.wait_ledger(ws, 1)) == 1
    assert gateway.balance(key)["balance"] == 99


# --- streams -----------------------------------------------------------------------


def test_stream_is_replayed_as_a_stream(gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    first = post(gateway, key, "stream-1", body)
    assert first.status_code == 200
    wait_for(lambda: [r["state"] for r in idem_rows(gateway, ws)] == ["done"])
    with gateway.client(key) as c, c.stream("POST", CHAT, json=body,
                                            headers={"Idempotency-Key": "stream-1"}) as replay:
        assert replay.headers["content-type"].startswith("text/event-stream")
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.headers["x-bookbag-original-request-id"] == first.headers["x-request-id"]
        assert replay.headers["x-bookbag-credits-reserved"] == "1"
        replay_text = "".join(replay.iter_text())
    first_events, replay_events = events(first.text), events(replay_text)
    assert replay_events == first_events
    assert replay_events[-1] == "[DONE]"
    usage = orjson.loads(replay_events[-2])
    assert usage["usage"]["credits"] == 1  # the usage chunk as the client got it
    assert provider.count(CHAT) == 1
    assert len(gateway.ledger(ws)) == 1
    assert gateway.balance(key)["balance"] == 99
    # A stream key replayed by a JSON request of a different body is refused.
    assert post(gateway, key, "stream-1").status_code == 422


def test_stream_cut_off_by_its_client_after_content_is_never_charged_twice(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    ws, key = gateway.workspace("free")
    provider.fail("slow_stream", interval=0.2, path=CHAT)
    body = {**BODY, "stream": True}
    with gateway.client(key) as c, c.stream("POST", CHAT, json=body,
                                            headers={"Idempotency-Key": "left"}) as r:
        for line in r.iter_lines():
            if '"content"' in line and '"content":""' not in line:
                break  # content reached us: leave
    rows = gateway.wait_ledger(ws, 1)
    assert len(rows) == 1  # delivered content is charged
    wait_for(lambda: [r["state"] for r in idem_rows(gateway, ws)] == ["done"])
    again = post(gateway, key, "left", body)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "idempotency_response_unavailable"
    assert again.headers["x-should-retry"] == "false"
    assert provider.count(CHAT) == 1
    assert len(gateway.ledger(ws)) == 1


# --- retention --------------------------------------------------------------------


def test_expired_key_starts_fresh_and_is_swept(make_gateway: GatewayFactory,
                                               provider: FakeProvider) -> None:
    clock = ManualClock(time.time())
    gw = make_gateway(clock=clock, BOOKBAG_IDEMPOTENCY_RETENTION="60")
    ws, key = gw.workspace("free")
    assert post(gw, key, "daily").status_code == 200
    clock.advance(30)
    assert post(gw, key, "daily").headers["idempotent-replayed"] == "true"
    clock.advance(31)  # past the retention
    wait_for(lambda: idem_rows(gw, ws) == [])  # the periodic sweep purged it
    fresh = post(gw, key, "daily")
    assert fresh.status_code == 200 and "idempotent-replayed" not in fresh.headers
    assert provider.count(CHAT) == 2
    assert len(gw.ledger(ws)) == 2
    assert gw.balance(key)["balance"] == 98


def test_claim_on_an_expired_record_starts_fresh_before_any_sweep(
    make_gateway: GatewayFactory, provider: FakeProvider
) -> None:
    clock = ManualClock(time.time())
    gw = make_gateway(clock=clock, BOOKBAG_IDEMPOTENCY_RETENTION="60", BOOKBAG_SWEEP_INTERVAL="3600")
    ws, key = gw.workspace("free")
    assert post(gw, key, "k").status_code == 200
    clock.advance(61)
    assert len(idem_rows(gw, ws)) == 1  # not swept yet
    # Even a different body is a new request once the key expired.
    other = {**BODY, "messages": [{"role": "user", "content": "a new day"}]}
    fresh = post(gw, key, "k", other)
    assert fresh.status_code == 200 and "idempotent-replayed" not in fresh.headers
    assert provider.count(CHAT) == 2 and len(gw.ledger(ws)) == 2


# --- a process that died holding a key -------------------------------------------------


def test_dead_claim_without_a_charge_is_taken_over(gateway: RunningGateway,
                                                   provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    now = int(time.time() * 1000)
    db_exec(gateway, "INSERT INTO idempotency (workspace_id, key, body_hash, request_id, state, "
            "created_ms, lease_ms, expires_ms) VALUES (?, 'dead', ?, 'req_dead', 'in_flight', ?, ?, ?)",
            (ws, _hash(BODY), now - 20_000, now - 1, now + 60_000))
    r = post(gateway, key, "dead")
    assert r.status_code == 200 and "idempotent-replayed" not in r.headers
    assert provider.count(CHAT) == 1 and len(gateway.ledger(ws)) == 1
    assert post(gateway, key, "dead").headers["idempotent-replayed"] == "true"


def test_live_claim_is_in_progress(gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    now = int(time.time() * 1000)
    db_exec(gateway, "INSERT INTO idempotency (workspace_id, key, body_hash, request_id, state, "
            "created_ms, lease_ms, expires_ms) VALUES (?, 'live', ?, 'req_live', 'in_flight', ?, ?, ?)",
            (ws, _hash(BODY), now, now + 60_000, now + 60_000))
    r = post(gateway, key, "live")
    assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_in_progress"
    assert provider.count(CHAT) == 0


def test_crash_between_settle_and_finish_replays_and_never_charges_twice(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    """The process died after the charge and before marking the key done: the staged
    response and the ledger entry make the retry a replay."""
    ws, key = gateway.workspace("free")
    first = post(gateway, key, "crash")
    db_exec(gateway, "UPDATE idempotency SET state = 'in_flight', lease_ms = ? "
            "WHERE workspace_id = ?", (int(time.time() * 1000) - 1, ws))
    retry = post(gateway, key, "crash")
    assert retry.status_code == 200 and retry.headers["idempotent-replayed"] == "true"
    assert retry.content == first.content
    assert provider.count(CHAT) == 1 and len(gateway.ledger(ws)) == 1
    assert [r["state"] for r in idem_rows(gateway, ws)] == ["done"]


def test_crash_after_charge_without_a_stored_response_is_refused_not_recharged(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    ws, key = gateway.workspace("free")
    post(gateway, key, "lost")
    db_exec(gateway, "UPDATE idempotency SET state = 'in_flight', lease_ms = ?, kind = NULL, "
            "body = NULL WHERE workspace_id = ?", (int(time.time() * 1000) - 1, ws))
    retry = post(gateway, key, "lost")
    assert retry.status_code == 409
    assert retry.json()["error"]["code"] == "idempotency_response_unavailable"
    assert provider.count(CHAT) == 1 and len(gateway.ledger(ws)) == 1
    assert gateway.balance(key)["balance"] == 99


# --- secrets -------------------------------------------------------------------------


def test_stored_and_replayed_responses_hold_no_provider_key(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    ws, key = gateway.workspace("free")
    byo = "sk-byo-idem-" + uuid.uuid4().hex
    provider.add_key(byo)
    post(gateway, key, "own")
    post(gateway, key, "own-stream", {**BODY, "stream": True})
    post(gateway, key, "byo", X_Bookbag_Provider_Key=byo)
    replays = [post(gateway, key, "own"), post(gateway, key, "byo", X_Bookbag_Provider_Key=byo),
               post(gateway, key, "own-stream", {**BODY, "stream": True})]
    assert all(r.headers["idempotent-replayed"] == "true" for r in replays)
    wait_for(lambda: len(idem_rows(gateway, ws)) == 3)
    dump = b"".join(
        line.encode() for line in sqlite3.connect(db_path(gateway)).iterdump()
    )
    assert b"idempotency" in dump
    for secret in (OPENAI_KEY, byo):
        assert secret.encode() not in dump
        for r in replays:
            assert secret not in r.text and secret not in str(r.headers)


# --- the openai SDK ----------------------------------------------------------------


def test_openai_sdk_retry_after_a_provider_error_is_charged_once(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    ws, key = gateway.workspace("free")
    provider.fail("status", status=500)
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key)  # max_retries=2 by default
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}],
        extra_headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    assert reply.choices[0].message.content == "Hello from fake gpt-4o-mini: hello"
    assert provider.count(CHAT) == 2  # the 502 released the key; the SDK's retry ran
    assert len(gateway.ledger(ws)) == 1
    assert gateway.balance(key)["balance"] == 99


def test_openai_sdk_retry_after_its_own_timeout_replays(gateway: RunningGateway,
                                                        provider: FakeProvider) -> None:
    """The SDK gives up on a slow first attempt and retries with the same key: the gateway
    finished the first one (charged once), and the retry gets it as a replay (after 409s)."""
    ws, key = gateway.workspace("free")
    provider.fail("slow_stream", interval=1.0)  # the non-stream reply waits 1 s
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, timeout=0.4, max_retries=2)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}],
        extra_headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    assert raw.headers["idempotent-replayed"] == "true"
    assert raw.parse().choices[0].message.content == "Hello from fake gpt-4o-mini: hello"
    assert provider.count(CHAT) == 1
    assert len(gateway.ledger(ws)) == 1
    assert gateway.balance(key)["balance"] == 99


# --- several processes -------------------------------------------------------------


def burst(gateways: list[RunningGateway], key: str, idem: str, n: int,
          body: dict[str, Any] | None = None) -> list[httpx.Response]:
    results: list[httpx.Response] = []
    barrier = threading.Barrier(n)

    clients = [gw.client(key, limits=httpx.Limits(max_connections=n)) for gw in gateways]

    def one(i: int) -> None:
        barrier.wait()
        results.append(clients[i % len(clients)].post(CHAT, json=body or BODY,
                                                      headers={"Idempotency-Key": idem}))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for c in clients:
        c.close()
    assert len(results) == n
    return results


def assert_one_charge(results: list[httpx.Response], provider: FakeProvider,
                      gw: RunningGateway, ws: str, key: str) -> None:
    assert {r.status_code for r in results} <= {200, 409}, [
        (r.status_code, r.text[:200]) for r in results if r.status_code not in (200, 409)]
    assert len([r for r in results if r.status_code == 200
                and "idempotent-replayed" not in r.headers]) == 1
    assert provider.count(CHAT) == 1
    assert len(gw.ledger(ws)) == 1
    assert gw.balance(key)["balance"] == 99


def test_two_processes_on_the_sql_meter_share_keys(make_gateway: GatewayFactory,
                                                   provider: FakeProvider) -> None:
    a = make_gateway(BOOKBAG_METER="sql")
    b = make_gateway(BOOKBAG_METER="sql")  # same database file, its own writer and loop
    ws, key = a.workspace("free")
    provider.fail("slow_stream", interval=0.5)
    results = burst([a, b], key, "two-procs", 20)
    assert_one_charge(results, provider, a, ws, key)
    assert post(b, key, "two-procs").headers["idempotent-replayed"] == "true"
    assert post(a, key, "two-procs").headers["idempotent-replayed"] == "true"


def _hash(body: dict[str, Any]) -> str:
    from gateway.idempotency.service import body_hash

    return body_hash(body)


# --- Redis ---------------------------------------------------------------------------


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """A redis-server of the test's own, or the session's Redis Cluster (emptied)."""
    if request.param == "cluster":
        return str(request.getfixturevalue("cluster_url"))
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


def test_with_redis_down_unmetered_keys_run_and_metered_ones_fail_closed(
    redis_server: RedisServer, make_gateway: GatewayFactory, provider: FakeProvider
) -> None:
    gw = make_gateway(BOOKBAG_METER="memory", BOOKBAG_REDIS_URL=redis_server.url)
    ws, key = gw.workspace("free")
    local = {**BODY, "model": "bookbag-local"}
    assert post(gw, key, "local-1", local).status_code == 200
    assert post(gw, key, "local-1", local).headers["idempotent-replayed"] == "true"
    redis_server.stop()
    r = post(gw, key, "local-2", local)
    assert r.status_code == 200 and "idempotent-replayed" not in r.headers
    metered = post(gw, key, "metered-1")
    assert metered.status_code == 503
    assert metered.json()["error"]["code"] == "service_unavailable"
    assert provider.count(CHAT) == 0
    assert [row["billing_mode"] for row in gw.ledger(ws)] == ["local", "local"]
    assert gw.balance(key)["balance"] == 100


def test_two_processes_on_the_redis_meter_share_keys(redis_url: str, make_gateway: GatewayFactory,
                                                     provider: FakeProvider) -> None:
    a = make_gateway(BOOKBAG_REDIS_URL=redis_url, BOOKBAG_REDIS_TIMEOUT="2")
    b = make_gateway(BOOKBAG_REDIS_URL=redis_url, BOOKBAG_REDIS_TIMEOUT="2")
    assert type(a.gw.meter).__name__ == "RedisMeter"
    ws, key = a.workspace("free")
    provider.fail("slow_stream", interval=0.5)
    results = burst([a, b], key, "redis-burst", 20)
    assert {r.status_code for r in results} <= {200, 409}, [
        (r.status_code, r.text[:200]) for r in results if r.status_code not in (200, 409)]
    assert len([r for r in results if r.status_code == 200
                and "idempotent-replayed" not in r.headers]) == 1
    assert provider.count(CHAT) == 1
    assert post(b, key, "redis-burst").headers["idempotent-replayed"] == "true"
    assert idem_rows(a, ws) == []  # the keys live in Redis, not in the database
    # A stream finished on one process replays as a stream on the other.
    body = {**BODY, "stream": True}
    first = post(a, key, "redis-stream", body)
    replay = post(b, key, "redis-stream", body)
    assert replay.headers["idempotent-replayed"] == "true"
    assert events(replay.text) == events(first.text)
    assert provider.count(CHAT) == 2
    assert len(a.wait_ledger(ws, 2)) == 2  # through the outbox
    time.sleep(0.3)
    assert len(a.ledger(ws)) == 2
    assert a.balance(key)["balance"] == b.balance(key)["balance"] == 98


async def test_redis_store_rules(redis_url: str) -> None:
    from gateway.idempotency.redis import RedisIdempotencyStore
    from gateway.idempotency.service import Claim, Idempotency, IdempotencyKey, Replay, json_response

    prefix = f"test-idem-{uuid.uuid4().hex[:8]}:"
    store = RedisIdempotencyStore(redis_url, prefix=prefix)
    clock = ManualClock(time.time())
    charged: set[str] = set()

    async def in_ledger(request_id: str, workspace_id: str) -> bool:
        return request_id in charged

    idem = Idempotency(store, clock, in_ledger, retention=60, lease=10)
    k = IdempotencyKey("key-1", "h1")
    raw = raw_client(redis_url)
    try:
        first = await idem.claim("ws_a", k, "req_1", metered=True)
        assert isinstance(first, Claim)
        name = store.name("ws_a", "key-1")
        # Under the workspace's shard tag, the slot of its balance and holds (issue 17).
        assert name == f"{prefix}{{s{shard_of('ws_a'):02d}}}:idem:ws_a:key-1"
        assert 0 < await raw.pttl(name) <= 60_000
        with pytest.raises(IdempotencyInProgress):
            await idem.claim("ws_a", k, "req_2", metered=True)
        # A claim resent by the same request (a reconnect after it ran) is still its own.
        now = int(clock.now() * 1000)
        assert await store.claim("ws_a", "key-1", "h1", "req_1", now_ms=now, lease_ms=now + 10_000,
                                 expires_ms=now + 60_000) is None
        with pytest.raises(IdempotencyKeyReused):
            await idem.claim("ws_a", IdempotencyKey("key-1", "h2"), "req_2", metered=True)
        # Another workspace's key of the same name is independent.
        assert isinstance(await idem.claim("ws_b", k, "req_b", metered=True), Claim)

        await first.stage(json_response(b'{"ok":1}', {"x-bookbag-credits-charged": "1",
                                                       "authorization": "Bearer nope"}))
        await first.finish()
        replay = await idem.claim("ws_a", k, "req_3", metered=True)
        assert isinstance(replay, Replay)
        assert replay.original_request_id == "req_1"
        assert replay.response.body == b'{"ok":1}'
        assert replay.response.headers == {"x-bookbag-credits-charged": "1"}  # whitelist only
        assert b"nope" not in b"".join(v for v in (await raw.hgetall(name)).values())

        # A release frees the key; a release by a request that lost it does nothing.
        k2 = IdempotencyKey("key-2", "h")
        c2 = await idem.claim("ws_a", k2, "req_4", metered=True)
        assert isinstance(c2, Claim)
        await store.release("ws_a", "key-2", "req_someone_else")
        with pytest.raises(IdempotencyInProgress):
            await idem.claim("ws_a", k2, "req_5", metered=True)
        await c2.release()
        c2b = await idem.claim("ws_a", k2, "req_6", metered=True)
        assert isinstance(c2b, Claim)

        # Its holder died (lease over): no charge -> taken over; the dead holder can no
        # longer stage or release it.
        clock.advance(11)
        taken = await idem.claim("ws_a", k2, "req_7", metered=True)
        assert isinstance(taken, Claim) and taken.request_id == "req_7"
        assert not await store.stage("ws_a", "key-2", "req_6", json_response(b"{}", {}))
        await store.release("ws_a", "key-2", "req_6")
        with pytest.raises(IdempotencyInProgress):
            await idem.claim("ws_a", k2, "req_8", metered=True)

        # Died after its charge, response staged -> replayed.
        c3 = await idem.claim("ws_a", IdempotencyKey("key-3", "h"), "req_9", metered=True)
        assert isinstance(c3, Claim)
        await c3.stage(json_response(b'{"n":3}', {}))
        charged.add("req_9")
        clock.advance(11)
        replay3 = await idem.claim("ws_a", IdempotencyKey("key-3", "h"), "req_10", metered=True)
        assert isinstance(replay3, Replay) and replay3.response.body == b'{"n":3}'

        # Died after its charge with no response -> refused, never run again.
        c4 = await idem.claim("ws_a", IdempotencyKey("key-4", "h"), "req_11", metered=True)
        assert isinstance(c4, Claim)
        charged.add("req_11")
        clock.advance(11)
        with pytest.raises(IdempotencyInProgress) as lost:
            await idem.claim("ws_a", IdempotencyKey("key-4", "h"), "req_12", metered=True)
        assert lost.value.code == "idempotency_response_unavailable"

        # Past the retention, a claim starts fresh (even with another body).
        clock.advance(61)
        fresh = await idem.claim("ws_a", IdempotencyKey("key-1", "other"), "req_13", metered=True)
        assert isinstance(fresh, Claim)
    finally:
        async for name in raw.scan_iter(match=prefix + "*"):
            await raw.delete(name)
        await raw.aclose()
        await idem.close()


async def test_records_of_the_legacy_layout_keep_working_on_a_single_node(
    redis_server: RedisServer,
) -> None:
    """An upgrade with keys in flight: a record an older gateway wrote at its old name
    (`bookbag:{<workspace>}:idem:<key>`) is still in progress, replayed once done, and
    taken over when its holder died; new records go to the new name."""
    from gateway.idempotency.redis import RedisIdempotencyStore
    from gateway.idempotency.service import Claim, Idempotency, IdempotencyKey, Replay

    prefix, legacy = f"new-{uuid.uuid4().hex[:8]}:", f"old-{uuid.uuid4().hex[:8]}:"
    store = RedisIdempotencyStore(redis_server.url, prefix=prefix, legacy_prefix=legacy)
    clock = ManualClock(time.time())
    idem = Idempotency(store, clock, _never_charged, retention=60, lease=10)
    raw = raw_client(redis_server.url)
    now = int(clock.now() * 1000)

    async def old_gateway_claims(key: str, request_id: str) -> str:
        name = f"{legacy}{{ws_a}}:idem:{key}"
        await raw.hset(name, mapping={"state": "in_flight", "hash": "h", "rid": request_id,
                                      "created": now, "lease": now + 10_000,
                                      "expires": now + 60_000})
        return name

    try:
        done = await old_gateway_claims("k-done", "req_old_1")
        with pytest.raises(IdempotencyInProgress):  # in flight on the old gateway
            await idem.claim("ws_a", IdempotencyKey("k-done", "h"), "req_new_1", metered=True)
        await raw.hset(done, mapping={"state": "done", "kind": "json", "status": 200,
                                      "headers": "{}", "body": b'{"old":1}'})
        replay = await idem.claim("ws_a", IdempotencyKey("k-done", "h"), "req_new_2",
                                  metered=True)
        assert isinstance(replay, Replay) and replay.response.body == b'{"old":1}'
        with pytest.raises(IdempotencyKeyReused):
            await idem.claim("ws_a", IdempotencyKey("k-done", "other"), "req_new_3",
                             metered=True)

        await old_gateway_claims("k-dead", "req_old_2")
        clock.advance(11)  # the old gateway died holding it, uncharged: taken over
        taken = await idem.claim("ws_a", IdempotencyKey("k-dead", "h"), "req_new_4",
                                 metered=True)
        assert isinstance(taken, Claim) and taken.request_id == "req_new_4"

        fresh = await idem.claim("ws_a", IdempotencyKey("k-new", "h"), "req_new_5", metered=True)
        assert isinstance(fresh, Claim)
        assert await raw.exists(store.name("ws_a", "k-new"))
        assert not await raw.exists(f"{legacy}{{ws_a}}:idem:k-new")
    finally:
        for pattern in (prefix + "*", legacy + "*"):
            async for name in raw.scan_iter(match=pattern):
                await raw.delete(name)
        await raw.aclose()
        await idem.close()


async def _never_charged(request_id: str, workspace_id: str) -> bool:
    return False


async def test_unmetered_request_runs_when_the_store_is_down() -> None:
    """Local, BYO and metering-off replies never fail because of the idempotency store."""
    from gateway.idempotency.redis import RedisIdempotencyStore
    from gateway.idempotency.service import Idempotency, IdempotencyKey

    store = RedisIdempotencyStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)

    async def in_ledger(request_id: str, workspace_id: str) -> bool:
        return False

    idem = Idempotency(store, ManualClock(time.time()), in_ledger, retention=60, lease=10)
    try:
        assert await idem.claim("ws", IdempotencyKey("k", "h"), "req", metered=False) is None
        with pytest.raises(ServiceUnavailable):
            await idem.claim("ws", IdempotencyKey("k", "h"), "req", metered=True)
    finally:
        await idem.close()


def test_two_processes_on_postgresql_share_keys(make_gateway: GatewayFactory,
                                                provider: FakeProvider) -> None:
    with fresh_database() as url:
        a = make_gateway(BOOKBAG_DATABASE_URL=url)
        b = make_gateway(BOOKBAG_DATABASE_URL=url)
        assert a.gw.engine.dialect.name == "postgresql"
        ws, key = a.workspace("free")
        provider.fail("slow_stream", interval=0.5)
        results = burst([a, b], key, "pg-burst", 20)
        assert_one_charge(results, provider, a, ws, key)
        assert post(b, key, "pg-burst").headers["idempotent-replayed"] == "true"
        body = {**BODY, "stream": True}
        first = post(b, key, "pg-stream", body)
        replay = post(a, key, "pg-stream", body)
        assert replay.headers["idempotent-replayed"] == "true"
        assert events(replay.text) == events(first.text)
        assert provider.count(CHAT) == 2 and len(a.ledger(ws)) == 2
        a.stop()
        b.stop()
