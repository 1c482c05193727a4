"""Fallbacks end to end (issue 16 point 3): the real gateway, the fake provider failing
per model, raw HTTP and the openai SDK.

The chains (`fallback_pricing`): fb-main (5 credits, first byte within 1 s) -> fb-cheap (2);
fb-mid (3) -> fb-dear (8), fb-cheap; fb-byo (5) -> fb-anthropic, fb-cheap; fb-dead (an
api_base nobody listens on) -> fb-cheap; fb-h1 -> fb-h2 -> fb-h3 -> fb-h4 (each 1.2 s to
its first byte). Each model has its own upstream name, so the fake counts its requests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.clock import ManualClock
from tests import harness
from tests.conftest import GatewayFactory
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway, free_port
from tests.postgres import fresh_database

MESSAGES = [{"role": "user", "content": "hello"}]
BYO_KEY = "sk-byo-fallbacks"


def fallback_pricing(fake: FakeProvider) -> str:
    def entry(name: str, credits: int, extra: str = "", provider: str = "openai") -> str:
        base = fake.openai_base if provider == "openai" else fake.anthropic_base
        return (f'[models."{name}"]\nprovider = "{provider}"\ncredits = {credits}\n'
                f'upstream = "up-{name}"\napi_base = "{base}"\nbyo = true\n{extra}\n')

    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: connection refused
    return harness.test_pricing(fake).replace("[plans.free]", "\n".join([
        entry("fb-main", 5, 'fallbacks = ["fb-cheap"]\nfirst_byte_timeout = 1.0'),
        entry("fb-cheap", 2),
        entry("fb-dear", 8),
        entry("fb-mid", 3, 'fallbacks = ["fb-dear", "fb-cheap"]\nfirst_byte_timeout = 1.0'),
        entry("fb-anthropic", 2, provider="anthropic"),
        entry("fb-byo", 5, 'fallbacks = ["fb-anthropic", "fb-cheap"]'),
        entry("fb-dead", 4, 'fallbacks = ["fb-cheap"]').replace(fake.openai_base, dead),
        entry("fb-h1", 1, 'fallbacks = ["fb-h2", "fb-h3", "fb-h4"]\nfirst_byte_timeout = 1.2'),
        entry("fb-h2", 1, "first_byte_timeout = 1.2"),
        entry("fb-h3", 1, "first_byte_timeout = 1.2"),
        entry("fb-h4", 1),
        entry("fb-small", 1, "max_output_tokens = 100"),
        entry("fb-param", 5, 'fallbacks = ["fb-small", "fb-cheap"]'),
        entry("fb-slow", 3, 'fallbacks = ["fb-cheap"]\nfirst_byte_timeout = 10.0'),
        "[plans.free]",
    ]))


@pytest.fixture
def pricing(tmp_path: Path, provider: FakeProvider) -> Path:
    path = tmp_path / "pricing.toml"
    path.write_text(fallback_pricing(provider))
    return path


def chat(gw: RunningGateway, key: str, model: str, **extra: Any) -> httpx.Response:
    headers = extra.pop("headers", {})
    with gw.client(key) as c:
        return c.post("/v1/chat/completions", headers=headers,
                      json={"model": model, "messages": MESSAGES, **extra})


def ups(fake: FakeProvider, *names: str) -> list[int]:
    return [fake.count_model(f"up-{n}") for n in names]


@pytest.mark.parametrize("failure", [
    {"mode": "status", "status": 500},
    {"mode": "status", "status": 429},
    {"mode": "drop"},
    {"mode": "delay", "seconds": 1.6},  # past fb-main's 1 s first-byte budget
])
def test_a_failed_primary_falls_back_charged_at_the_fallback(
        gateway: RunningGateway, provider: FakeProvider, failure: dict[str, Any]) -> None:
    ws, key = gateway.workspace("free")
    mode = failure.pop("mode")
    provider.fail(mode, model="up-fb-main", **failure)
    r = chat(gateway, key, "fb-main")
    assert r.status_code == 200, r.text
    assert r.headers["x-bookbag-model"] == "fb-cheap"
    assert r.headers["x-bookbag-credits-charged"] == "2"
    assert r.json()["model"] == "up-fb-cheap"  # the body's model stays the upstream's
    assert ups(provider, "fb-main", "fb-cheap") == [1, 1]
    [row] = gateway.wait_ledger(ws, 1)
    assert (row["model"], row["requested_model"], row["credits"]) == ("fb-cheap", "fb-main", 2)
    assert gateway.balance(key)["balance"] == 98
    assert gateway.balance(key)["reserved"] == 0  # the trimmed 3 went back


def test_without_a_failure_the_primary_answers_and_the_header_names_it(
        gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    r = chat(gateway, key, "fb-main")
    assert (r.status_code, r.headers["x-bookbag-model"]) == (200, "fb-main")
    assert r.headers["x-bookbag-credits-charged"] == "5"
    plain = chat(gateway, key, "gpt-4o-mini")  # an entry without fallbacks names itself too
    assert plain.headers["x-bookbag-model"] == "gpt-4o-mini"
    rows = gateway.wait_ledger(ws, 2)
    assert {(r["model"], r["requested_model"]) for r in rows} == {
        ("fb-main", "fb-main"), ("gpt-4o-mini", "gpt-4o-mini")}


def test_connection_refused_and_a_provider_timeout_fall_back(
        make_gateway: GatewayFactory, provider: FakeProvider) -> None:
    gw = make_gateway(BOOKBAG_PROVIDER_TIMEOUT="2,1,5")  # the idle limit: 1 s of silence
    ws, key = gw.workspace("free")
    r = chat(gw, key, "fb-dead")
    assert (r.status_code, r.headers["x-bookbag-model"]) == (200, "fb-cheap"), r.text
    provider.fail("hang", model="up-fb-mid")
    r = chat(gw, key, "fb-mid")  # silent past the idle limit (the budget is 1 s, idle 1 s)
    assert (r.status_code, r.headers["x-bookbag-model"]) == (200, "fb-dear"), r.text
    assert [e["credits"] for e in gw.wait_ledger(ws, 2)] == [2, 8]


def test_streams_fall_back_before_the_first_event_with_the_sdk(
        gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    provider.fail("status", status=503, model="up-fb-main")
    client = openai.OpenAI(api_key=key, base_url=gateway.base_url, max_retries=0)
    with client.chat.completions.with_streaming_response.create(
            model="fb-main", messages=MESSAGES, stream=True) as resp:  # type: ignore[arg-type]
        assert resp.headers["x-bookbag-model"] == "fb-cheap"
        assert resp.headers["x-bookbag-credits-reserved"] == "2"
        chunks = list(resp.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    [row] = gateway.wait_ledger(ws, 1)
    assert (row["model"], row["requested_model"], row["credits"]) == ("fb-cheap", "fb-main", 2)
    reply = client.chat.completions.create(model="fb-main", messages=MESSAGES)  # type: ignore[arg-type]
    assert reply.model == "up-fb-main"


def test_after_the_first_byte_there_is_no_fallback(
        gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    provider.fail("cut", after=1, model="up-fb-main")
    with gateway.client(key) as c, c.stream(
            "POST", "/v1/chat/completions",
            json={"model": "fb-main", "messages": MESSAGES, "stream": True}) as r:
        assert r.headers["x-bookbag-model"] == "fb-main"
        text = "".join(r.iter_text())
    assert '"error"' in text and "[DONE]" not in text
    assert ups(provider, "fb-main", "fb-cheap") == [1, 0]
    assert gateway.balance(key)["balance"] == 100  # a provider break is never charged
    assert gateway.ledger(ws) == []


def test_a_member_that_does_not_fit_is_skipped_and_the_preview_says_so(
        gateway: RunningGateway, provider: FakeProvider) -> None:
    _ws, key = gateway.workspace("enterprise", custom_allotment=6)
    with gateway.client(key) as c:
        preview = c.post("/v1/chat/completions/preview",
                         json={"model": "fb-mid", "messages": MESSAGES}).json()
    assert preview["fallbacks"]["chain"] == ["fb-mid", "fb-cheap"]
    assert preview["fallbacks"]["worst_case_credits"] == 3
    assert {"model": "fb-dear", "reason": "balance"} in preview["fallbacks"]["skipped"]
    provider.fail("status", status=500, model="up-fb-mid")
    r = chat(gateway, key, "fb-mid")
    assert (r.status_code, r.headers["x-bookbag-model"]) == (200, "fb-cheap"), r.text
    assert ups(provider, "fb-mid", "fb-dear", "fb-cheap") == [1, 0, 1]
    assert gateway.balance(key)["balance"] == 4


def test_a_member_that_cannot_honour_the_parameters_is_skipped(
        gateway: RunningGateway, provider: FakeProvider) -> None:
    _, key = gateway.workspace("free")
    with gateway.client(key) as c:
        preview = c.post("/v1/chat/completions/preview", json={
            "model": "fb-param", "messages": MESSAGES, "max_tokens": 500}).json()
    assert preview["fallbacks"]["chain"] == ["fb-param", "fb-cheap"]
    [skipped] = preview["fallbacks"]["skipped"]
    assert skipped["model"] == "fb-small" and skipped["reason"].startswith("parameters: ")
    assert "max_tokens" in skipped["reason"]
    provider.fail("status", status=502, model="up-fb-param")
    r = chat(gateway, key, "fb-param", max_tokens=500)
    assert (r.status_code, r.headers["x-bookbag-model"]) == (200, "fb-cheap"), r.text
    assert ups(provider, "fb-small") == [0]


def test_a_primary_that_does_not_fit_is_402_before_any_call(
        gateway: RunningGateway, provider: FakeProvider) -> None:
    _ws, key = gateway.workspace("enterprise", custom_allotment=4)
    r = chat(gateway, key, "fb-main")
    assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_credits"
    assert provider.count("/v1/chat/completions") == 0


def test_a_byo_chain_keeps_to_the_same_provider_and_key(
        gateway: RunningGateway, provider: FakeProvider) -> None:
    provider.add_key(BYO_KEY)
    ws, key = gateway.workspace("free")
    headers = {"x-bookbag-provider-key": BYO_KEY}
    with gateway.client(key) as c:
        preview = c.post("/v1/chat/completions/preview", headers=headers,
                         json={"model": "fb-byo", "messages": MESSAGES}).json()
    assert preview["fallbacks"]["chain"] == ["fb-byo", "fb-cheap"]
    assert {"model": "fb-anthropic", "reason": "billing_mode"} in preview["fallbacks"]["skipped"]
    provider.fail("status", status=500, model="up-fb-byo")
    r = chat(gateway, key, "fb-byo", headers=headers)
    assert (r.status_code, r.headers["x-bookbag-model"]) == (200, "fb-cheap"), r.text
    assert ups(provider, "fb-byo", "fb-anthropic", "fb-cheap") == [1, 0, 1]
    assert {x.api_key for x in provider.received} == {BYO_KEY}  # never the house's key
    assert gateway.balance(key)["balance"] == 100
    [row] = gateway.wait_ledger(ws, 1)
    assert (row["billing_mode"], row["credits"], row["requested_model"]) == ("byo", 0, "fb-byo")


def test_the_breaker_skips_a_failing_primary_then_half_opens(
        make_gateway: GatewayFactory, provider: FakeProvider) -> None:
    clock = ManualClock(1_790_000_000.0)
    gw = make_gateway(clock=clock, BOOKBAG_BREAKER_FAILURES=2, BOOKBAG_BREAKER_COOLDOWN=30)
    _, key = gw.workspace("free")
    provider.fail("status", status=500, model="up-fb-main", times=None)
    for _ in range(2):
        assert chat(gw, key, "fb-main").headers["x-bookbag-model"] == "fb-cheap"
    assert ups(provider, "fb-main") == [2]
    r = chat(gw, key, "fb-main")  # open: the primary is not called at all
    assert (r.headers["x-bookbag-model"], ups(provider, "fb-main")) == ("fb-cheap", [2])
    with gw.client() as c:
        metrics = c.get("/metrics").text
    assert 'bookbag_model_breaker_state{model="fb-main"} 2.0' in metrics
    assert ('bookbag_fallbacks_total{answering="fb-cheap",reason="upstream_error",'
            'requested="fb-main"} 2.0') in metrics
    assert ('bookbag_fallbacks_total{answering="fb-cheap",reason="circuit_open",'
            'requested="fb-main"} 1.0') in metrics
    provider.reset()  # the primary recovers
    clock.advance(31)  # half-open: the next request tries it
    r = chat(gw, key, "fb-main")
    assert (r.headers["x-bookbag-model"], ups(provider, "fb-main")) == ("fb-main", [1])
    with gw.client() as c:
        assert 'bookbag_model_breaker_state{model="fb-main"} 0.0' in c.get("/metrics").text


def test_half_open_sends_one_trial_while_the_others_fall_back(
        make_gateway: GatewayFactory, provider: FakeProvider) -> None:
    """After the cool-down one request tries the primary (slow: 3 s to answer); the six
    sent while that trial is out go to the fallback without waiting on the primary."""
    clock = ManualClock(1_790_000_000.0)
    gw = make_gateway(clock=clock, BOOKBAG_BREAKER_FAILURES=1, BOOKBAG_BREAKER_COOLDOWN=30,
                      BOOKBAG_PROVIDER_TIMEOUT="2,6,8")
    _, key = gw.workspace("free")
    provider.fail("status", status=500, model="up-fb-slow")
    assert chat(gw, key, "fb-slow").headers["x-bookbag-model"] == "fb-cheap"  # opens
    clock.advance(31)  # half-open
    provider.fail("delay", seconds=3.0, model="up-fb-slow")  # the trial: slow, then fine

    async def scenario() -> list[str]:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30,
                                     headers={"Authorization": f"Bearer {key}"}) as c:
            async def one() -> str:
                r = await c.post("/v1/chat/completions",
                                 json={"model": "fb-slow", "messages": MESSAGES})
                assert r.status_code == 200, r.text
                return r.headers["x-bookbag-model"]
            trial = asyncio.create_task(one())
            await harness.eventually(lambda: ups(provider, "fb-slow") == [2])  # trial is out
            others = await asyncio.gather(*(one() for _ in range(6)))
            assert not trial.done()  # they did not wait on it
            return [await trial, *others]

    answered = asyncio.run(scenario())
    assert answered == ["fb-slow"] + ["fb-cheap"] * 6
    assert ups(provider, "fb-slow", "fb-cheap") == [2, 7]
    r = chat(gw, key, "fb-slow")  # the trial succeeded: closed again
    assert (r.headers["x-bookbag-model"], ups(provider, "fb-slow")) == ("fb-slow", [3])


def test_one_deadline_bounds_the_whole_chain(
        make_gateway: GatewayFactory, provider: FakeProvider) -> None:
    """Total 3 s; every member is silent and each may wait 1.2 s for its first byte: h1 and
    h2 use 2.4 s, h3 gets what is left and meets the deadline; h4 is never tried."""
    gw = make_gateway(BOOKBAG_PROVIDER_TIMEOUT="2,10,3")
    _, key = gw.workspace("free")
    for name in ("fb-h1", "fb-h2", "fb-h3", "fb-h4"):
        provider.fail("hang", model=f"up-{name}")
    r = chat(gw, key, "fb-h1")
    assert r.status_code == 504, r.text
    assert "time limit (3 s)" in r.json()["error"]["message"]
    assert ups(provider, "fb-h1", "fb-h2", "fb-h3", "fb-h4") == [1, 1, 1, 0]
    assert gw.balance(key)["balance"] == 100 and gw.balance(key)["reserved"] == 0


def test_usage_groups_by_requested_model_and_key(
        gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    other = gateway.key(ws)
    provider.fail("status", status=500, model="up-fb-main")
    chat(gateway, key, "fb-main")  # answered by fb-cheap
    chat(gateway, other, "fb-main")  # answered by fb-main
    gateway.wait_ledger(ws, 2)
    with gateway.client(key) as c:
        by_model = c.get("/v1/usage", params={"group_by": "requested_model,model"}).json()
        by_key = c.get("/v1/usage", params={"group_by": "key"}).json()
        bad = c.get("/v1/usage", params={"group_by": "requested"})
    assert sorted((g["requested_model"], g["model"], g["credits"]) for g in by_model["data"]) \
        == [("fb-main", "fb-cheap", 2), ("fb-main", "fb-main", 5)]
    assert sorted(g["credits"] for g in by_key["data"]) == [2, 5]
    assert len({g["key"] for g in by_key["data"]}) == 2
    assert bad.status_code == 400 and "requested_model" in bad.json()["error"]["message"]


# --- many requests on one balance with a failing primary, on every meter ----------------

async def _burst(url: str, key: str, n: int) -> list[tuple[int, int]]:
    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 headers={"authorization": f"Bearer {key}"}) as c:
        async def one() -> tuple[int, int]:
            r = await c.post("/v1/chat/completions",
                             json={"model": "fb-main", "messages": MESSAGES})
            return r.status_code, int(r.headers.get("x-bookbag-credits-charged", 0))
        return await asyncio.gather(*(one() for _ in range(n)))


@contextlib.contextmanager
def _meter_env(meter: str, request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    if meter == "memory":
        yield {"BOOKBAG_METER": "memory"}
    elif meter == "sql-sqlite":
        yield {"BOOKBAG_METER": "sql"}
    elif meter == "sql-postgres":
        with fresh_database() as url:
            yield {"BOOKBAG_METER": "sql", "BOOKBAG_DATABASE_URL": url}
    else:
        server = request.getfixturevalue("redis_server")
        yield {"BOOKBAG_METER": "redis", "BOOKBAG_REDIS_URL": server.url,
               "BOOKBAG_REDIS_TIMEOUT": "10"}


@pytest.mark.parametrize("meter", ["memory", "sql-sqlite", "sql-postgres", "redis"])
def test_concurrent_fallbacks_never_overdraw_and_match_the_ledger(
        make_gateway: GatewayFactory, provider: FakeProvider, meter: str,
        request: pytest.FixtureRequest) -> None:
    """60 requests at once on 40 credits; the primary (5) always fails, the fallback (2)
    answers: each holds 5 and is trimmed to 2. Charges never pass the balance and equal
    the ledger's, and every hold is resolved."""
    with _meter_env(meter, request) as env:
        gw = make_gateway(**env)
        ws, key = gw.workspace("enterprise", custom_allotment=40)
        provider.fail("status", status=500, model="up-fb-main", times=None)
        results = asyncio.run(_burst(gw.url, key, 60))
        assert {s for s, _ in results} <= {200, 402}, results
        charged = sum(c for s, c in results if s == 200)
        ok = sum(1 for s, _ in results if s == 200)
        assert ok >= 8 and charged == 2 * ok <= 40
        rows = gw.wait_ledger(ws, ok, timeout=30)
        assert len(rows) == ok and sum(r["credits"] for r in rows) == charged
        assert {(r["model"], r["requested_model"]) for r in rows} == {("fb-cheap", "fb-main")}
        balance = gw.balance(key)
        assert (balance["balance"], balance["reserved"]) == (40 - charged, 0)
        assert provider.count_model("up-fb-cheap") == ok


@pytest.mark.parametrize("stream", [False, True])
def test_every_dialect_falls_back_and_names_the_answering_model(
        gateway: RunningGateway, provider: FakeProvider, stream: bool) -> None:
    """Chat, Responses and Messages (translated onto the chat upstreams here): each falls
    back, carries X-Bookbag-Model, JSON and stream alike, and is charged the answer's price."""
    ws, key = gateway.workspace("free")
    provider.fail("status", status=500, model="up-fb-main", times=3)
    bodies = {
        "/v1/chat/completions": {"messages": MESSAGES},
        "/v1/responses": {"input": "hello"},
        "/v1/messages": {"max_tokens": 50, "messages": MESSAGES},
    }
    with gateway.client(key) as c:
        for path, body in bodies.items():
            with c.stream("POST", path, json={"model": "fb-main", "stream": stream, **body},
                          headers={"anthropic-version": "2023-06-01"}) as r:
                r.read()
                assert r.status_code == 200, (path, r.text)
                assert r.headers["x-bookbag-model"] == "fb-cheap", path
    rows = gateway.wait_ledger(ws, 3)
    assert sorted(r["api"] for r in rows) == ["chat", "messages", "responses"]
    assert {(r["model"], r["requested_model"], r["credits"]) for r in rows} == {
        ("fb-cheap", "fb-main", 2)}
    assert gateway.balance(key)["balance"] == 94
