"""/metrics in Prometheus text format (parsed by the client's own parser), and the request log line."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.logs import JsonFormatter
from tests.conftest import GatewayFactory
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway
from tests.redis_server import RedisServer

CHAT = {"messages": [{"role": "user", "content": "the secret recipe is 42 cloves"}]}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(gateway: RunningGateway) -> Samples:
    with gateway.client() as c:  # an open route: no key
        r = c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def test_counters_move_with_requests(gateway: RunningGateway, provider: FakeProvider) -> None:
    _, key = gateway.workspace("free")
    _, poor_key = gateway.workspace("enterprise", custom_allotment=4)
    before = scrape(gateway)
    with gateway.client(key) as c:
        for _ in range(2):
            assert c.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4o-mini"}).status_code == 200
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "bookbag-local"}).status_code == 200
        with c.stream("POST", "/v1/chat/completions",
                      json={**CHAT, "model": "gpt-4o-mini", "stream": True}) as s:
            assert s.status_code == 200
            assert s.read().endswith(b"data: [DONE]\n\n")
        assert c.get("/v1/balance").status_code == 200
    with gateway.client(poor_key) as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4o"}).status_code == 402
    after = scrape(gateway)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    chat = {"route": "/v1/chat/completions"}
    assert moved("bookbag_requests_total", **chat, model="gpt-4o-mini", billing_mode="metered",
                 status="200") == 3
    assert moved("bookbag_requests_total", **chat, model="bookbag-local", billing_mode="local",
                 status="200") == 1
    assert moved("bookbag_requests_total", **chat, model="gpt-4o", billing_mode="metered",
                 status="402") == 1
    assert moved("bookbag_requests_total", route="/v1/balance", model="", billing_mode="",
                 status="200") == 1
    assert moved("bookbag_credits_charged_total", model="gpt-4o-mini") == 3
    assert moved("bookbag_credits_charged_total", model="gpt-4o") == 0
    assert moved("bookbag_insufficient_credits_total") == 1
    assert moved("bookbag_provider_latency_seconds_count", model="gpt-4o-mini") == 3
    assert moved("bookbag_gateway_overhead_seconds_count", route="/v1/chat/completions") == 4
    assert moved("bookbag_request_duration_seconds_count", route="/v1/chat/completions") == 5
    lag = total(after, "bookbag_ledger_write_lag_seconds_count", store="embedded")
    assert lag > total(before, "bookbag_ledger_write_lag_seconds_count", store="embedded")
    assert total(after, "bookbag_ledger_writes_total", store="embedded") >= 4  # 3 settles, 1 local
    assert value(after, "bookbag_holds_in_flight") == 0
    assert gateway.balance(key)["balance"] == 97


@pytest.fixture
def redis_gateway(redis_server: RedisServer, make_gateway: GatewayFactory) -> RunningGateway:
    """A gateway on the Redis meter (the server outlives it: set up first, stopped last)."""
    gw = make_gateway(BOOKBAG_REDIS_URL=redis_server.url)
    assert type(gw.gw.meter).__name__ == "RedisMeter"
    return gw


def test_holds_in_flight_while_a_reply_is_pending(gateway: RunningGateway, provider: FakeProvider) -> None:
    holds_while_a_reply_hangs(gateway, provider)


def test_the_redis_meter_counts_its_holds_in_flight(redis_gateway: RunningGateway,
                                                     provider: FakeProvider) -> None:
    holds_while_a_reply_hangs(redis_gateway, provider)


def test_the_redis_outbox_feeds_ledger_write_lag(redis_gateway: RunningGateway) -> None:
    ws, key = redis_gateway.workspace("free")
    before = scrape(redis_gateway)
    with redis_gateway.client(key) as c:
        for _ in range(3):
            assert c.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4o-mini"}).status_code == 200
    redis_gateway.wait_ledger(ws, 3)
    deadline = time.monotonic() + 10  # the consumer counts a batch just after committing it
    while total(after := scrape(redis_gateway), "bookbag_ledger_writes_total", store="redis") < 3:
        assert time.monotonic() < deadline, "the outbox's commits never reached /metrics"
        time.sleep(0.02)
    assert total(before, "bookbag_ledger_writes_total", store="redis") == 0
    batches = total(after, "bookbag_ledger_write_lag_seconds_count", store="redis")
    assert 1 <= batches <= 3
    assert ("bookbag_ledger_write_lag_seconds_sum", frozenset({("store", "redis")})) in after
    assert total(after, "bookbag_credits_charged_total", model="gpt-4o-mini") == 3


def holds_while_a_reply_hangs(gateway: RunningGateway, provider: FakeProvider) -> None:
    _, key = gateway.workspace("free")
    provider.fail("hang", path="/v1/chat/completions")
    statuses: list[int] = []

    def call() -> None:
        with gateway.client(key) as c:
            statuses.append(c.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4o"}).status_code)

    worker = threading.Thread(target=call)
    worker.start()
    try:
        deadline = time.monotonic() + 5
        while provider.count("/v1/chat/completions") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert value(scrape(gateway), "bookbag_holds_in_flight") == 1
    finally:
        provider.reset()  # drops the hung connection: the reply fails and its hold is voided
        worker.join(10)
    assert statuses and statuses[0] >= 500
    assert value(scrape(gateway), "bookbag_holds_in_flight") == 0
    assert gateway.balance(key)["balance"] == 100


def test_each_gateway_has_its_own_registry(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    first = make_gateway()
    second = make_gateway(BOOKBAG_DATABASE_URL=f"sqlite:///{tmp_path / 'second.db'}")
    _, key = first.workspace("free")
    with first.client(key) as c:
        assert c.get("/v1/balance").status_code == 200
    balance = {"route": "/v1/balance", "model": "", "billing_mode": "", "status": "200"}
    assert value(scrape(first), "bookbag_requests_total", **balance) == 1
    assert value(scrape(second), "bookbag_requests_total", **balance) == 0


def test_one_json_log_line_per_request_without_secrets(
    make_gateway: GatewayFactory, provider: FakeProvider, caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = make_gateway(BOOKBAG_LOG_JSON="1")
    ws, key = gateway.workspace("free")
    caplog.set_level(logging.INFO, logger="bookbag.request")
    with gateway.client(key) as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4o-mini"},
                   headers={"x-bookbag-agent-id": "triage", "x-bookbag-conversation-id": "conv-7"})
        byo = c.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4o-mini"},
                     headers={"x-bookbag-provider-key": "sk-test-openai-0000"})
    assert r.status_code == 200 and byo.status_code == 200
    ids = {r.headers["x-request-id"], byo.headers["x-request-id"]}

    def logged() -> list[logging.LogRecord]:
        return [rec for rec in caplog.records if rec.name == "bookbag.request"]

    # The line is written once the response has ended, just after the client has it.
    deadline = time.monotonic() + 5
    while not ids <= {getattr(rec, "request", {}).get("request_id") for rec in logged()}:
        assert time.monotonic() < deadline, "no log line for a request"
        time.sleep(0.01)
    lines = [JsonFormatter().format(rec) for rec in logged()]
    records: list[dict[str, Any]] = [json.loads(line) for line in lines]
    mine = [rec for rec in records if rec["request_id"] == r.headers["x-request-id"]]
    assert len(mine) == 1
    line = mine[0]
    assert line["event"] == "request" and line["level"] == "info"
    assert {k: line[k] for k in ("route", "status", "workspace", "agent", "conversation", "model",
                                 "billing_mode", "credits", "replies")} == {
        "route": "/v1/chat/completions", "status": 200, "workspace": ws, "agent": "triage",
        "conversation": "conv-7", "model": "gpt-4o-mini", "billing_mode": "metered", "credits": 1,
        "replies": 1}
    assert line["total_ms"] >= line["overhead_ms"] >= 0 and line["provider_ms"] is not None
    byo_line = next(rec for rec in records if rec["request_id"] == byo.headers["x-request-id"])
    assert (byo_line["billing_mode"], byo_line["credits"]) == ("byo", 0)
    everything = "\n".join(lines) + "\n".join(rec.getMessage() for rec in caplog.records)
    for secret in (key, key[3:], "sk-test-openai-0000", "secret recipe", "42 cloves"):
        assert secret not in everything


def test_metrics_route_needs_no_key_and_names_no_workspace(gateway: RunningGateway) -> None:
    ws, key = gateway.workspace("free")
    with gateway.client(key) as c:
        c.post("/v1/chat/completions", json={**CHAT, "model": "bookbag-local"})
    with httpx.Client(base_url=gateway.url) as c:
        text = c.get("/metrics").text
    assert "bookbag_requests_total" in text
    assert ws not in text and key not in text
