"""Billing rules end to end: no overdraft under real concurrency, failures never charged,
the stream delivery rule on client disconnect, unmetered replies recorded at 0, holds expire."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.clock import ManualClock
from tests import harness
from tests.conftest import GatewayFactory
from tests.fake_provider import ANTHROPIC_KEY, OPENAI_KEY, FakeProvider
from tests.harness import RunningGateway, running, sqlite_settings

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
HELLO: list[Any] = [{"role": "user", "content": "hello there"}]


def body_for(model: str, stream: bool = False, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": HELLO, **extra}
    if model.startswith("claude"):
        body.setdefault("max_tokens", 50)
    if stream:
        body["stream"] = True
    return body


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def sse_lines(r: httpx.Response) -> list[str]:
    return [line for line in r.iter_lines() if line]


# ---- no overdraft

def test_200_concurrent_requests_against_a_balance_of_50(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    ws, key = gateway.workspace("enterprise", custom_allotment=50)
    provider.delay = 0.05  # keep many holds in flight at once

    async def main() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60, limits=limits,
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            return await asyncio.gather(*(
                client.post(CHAT, json=body_for("gpt-4o-mini")) for _ in range(200)
            ))

    responses = asyncio.run(main())
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 50, sorted(set(statuses))
    assert statuses.count(402) == 150
    for r in responses:
        if r.status_code == 402:
            assert r.json()["error"]["code"] == "insufficient_credits"
    assert provider.count(CHAT) == 50
    rows = gateway.wait_ledger(ws, 50)
    assert len(rows) == 50
    assert {r["request_id"] for r in rows} == {
        r.headers["x-request-id"] for r in responses if r.status_code == 200}
    assert sum(r["credits"] for r in rows) == 50
    balance = gateway.balance(key)
    assert (balance["balance"], balance["reserved"], balance["allotment_remaining"]) == (0, 0, 0)
    time.sleep(0.3)  # nothing trickles in afterwards
    assert len(gateway.ledger(ws)) == 50


def test_concurrent_mixed_costs_never_overdraw(gateway: RunningGateway,
                                               provider: FakeProvider) -> None:
    ws, key = gateway.workspace("enterprise", custom_allotment=23)
    provider.delay = 0.02
    models = ["gpt-4o", "gpt-4o-mini", "claude-haiku-4-5"] * 20

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60,
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            return await asyncio.gather(*(client.post(CHAT, json=body_for(m)) for m in models))

    responses = asyncio.run(main())
    cost = {"gpt-4o": 5, "gpt-4o-mini": 1, "claude-haiku-4-5": 2}
    charged = sum(cost[m] for m, r in zip(models, responses, strict=True) if r.status_code == 200)
    assert {r.status_code for r in responses} <= {200, 402}
    assert charged <= 23
    rows = gateway.wait_ledger(ws, sum(r.status_code == 200 for r in responses))
    assert sum(r["credits"] for r in rows) == charged
    assert provider.count() == len(rows)
    balance = gateway.balance(key)
    assert balance["balance"] == 23 - charged and balance["reserved"] == 0
    # Balances only go down here, so each refusal was for more than what is left now.
    refused = [m for m, r in zip(models, responses, strict=True) if r.status_code == 402]
    assert refused and all(cost[m] > balance["balance"] for m in refused)


# ---- provider failures: the right error, nothing charged, one upstream call

@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory, fake: FakeProvider) -> Iterator[RunningGateway]:
    """One gateway with short provider timeouts for all the failure cases."""
    tmp = tmp_path_factory.mktemp("failures")
    pricing = tmp / "pricing.toml"
    pricing.write_text(harness.test_pricing(fake))
    with running(sqlite_settings(tmp, pricing, BOOKBAG_PROVIDER_TIMEOUT="1,1,2")) as gw:
        yield gw


def assert_nothing_charged(gw: RunningGateway, ws: str, key: str, before: int = 100) -> None:
    balance = gw.balance(key)
    assert (balance["balance"], balance["reserved"]) == (before, 0)
    assert gw.ledger(ws) == []


Failure = tuple[str, dict[str, Any], int, str | None]
FAILURES: list[Failure] = [
    # (mode, options, expected status, expected code)
    ("status", {"status": 400, "message": "Invalid 'messages': too long."}, 400, None),
    ("status", {"status": 401}, 502, "upstream_error"),
    ("status", {"status": 403}, 502, "upstream_error"),
    ("status", {"status": 429}, 429, None),
    ("status", {"status": 500}, 502, "upstream_error"),
    ("status", {"status": 529}, 502, "upstream_error"),
    ("hang", {}, 504, "upstream_timeout"),
    ("drop", {}, 502, "upstream_error"),
    ("cut", {"after": 1}, 502, "upstream_error"),
    ("inband_error", {"after": 1}, 502, "upstream_error"),
]


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5"])
@pytest.mark.parametrize(("mode", "opts", "status", "code"), FAILURES,
                         ids=[f"{f[0]}-{f[1].get('status', '')}" for f in FAILURES])
def test_provider_failure_json(failing: RunningGateway, provider: FakeProvider, model: str,
                               mode: str, opts: dict[str, Any], status: int,
                               code: str | None) -> None:
    ws, key = failing.workspace("free")
    provider.fail(mode, **opts)
    with failing.client(key) as c:
        r = c.post(CHAT, json=body_for(model))
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code
    if status == 400:
        assert "too long" in error["message"]  # a provider 4xx keeps its message
    assert provider.count() == 1  # exactly one upstream call: no retries
    assert_nothing_charged(failing, ws, key)


STREAM_FAILURES_BEFORE: list[Failure] = [
    ("status", {"status": 400}, 400, None),
    ("status", {"status": 401}, 502, "upstream_error"),
    ("status", {"status": 429}, 429, None),
    ("status", {"status": 500}, 502, "upstream_error"),
    ("status", {"status": 529}, 502, "upstream_error"),
    ("hang", {}, 504, "upstream_timeout"),
    ("drop", {}, 502, "upstream_error"),
]


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5"])
@pytest.mark.parametrize(("mode", "opts", "status", "code"), STREAM_FAILURES_BEFORE,
                         ids=[f"{f[0]}-{f[1].get('status', '')}" for f in STREAM_FAILURES_BEFORE])
def test_provider_failure_before_a_stream_starts(
    failing: RunningGateway, provider: FakeProvider, model: str, mode: str,
    opts: dict[str, Any], status: int, code: str | None,
) -> None:
    ws, key = failing.workspace("free")
    provider.fail(mode, **opts)
    with failing.client(key) as c:
        r = c.post(CHAT, json=body_for(model, stream=True))
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    if code is not None:
        assert r.json()["error"]["code"] == code
    assert provider.count() == 1
    assert_nothing_charged(failing, ws, key)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5"])
@pytest.mark.parametrize(("mode", "after"), [("cut", 0), ("cut", 2), ("inband_error", 2)])
@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_broken_midway_ends_with_an_inband_error(
    failing: RunningGateway, provider: FakeProvider, model: str, mode: str, after: int,
    include_usage: bool,
) -> None:
    ws, key = failing.workspace("free")
    provider.fail(mode, after=after, message="upstream exploded")
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    with failing.client(key) as c, c.stream("POST", CHAT,
                                             json=body_for(model, stream=True, **extra)) as r:
        if r.status_code != 200:  # nothing at all arrived before the cut: a plain error
            r.read()
            assert r.status_code == 502 and after == 0, r.text
            lines = []
        else:
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = sse_lines(r)
    if lines:
        assert "data: [DONE]" not in lines
        last = orjson.loads(lines[-1].removeprefix("data: "))
        assert set(last) == {"error"}
        assert set(last["error"]) == {"message", "type", "param", "code"}
        assert last["error"]["code"] in ("upstream_error", "upstream_timeout")
        payloads = [orjson.loads(line.removeprefix("data: ")) for line in lines[:-1]]
        assert not any(p.get("usage") for p in payloads), "usage sent for a broken stream"
        text = "".join(ch["delta"].get("content") or "" for p in payloads for ch in p["choices"])
        assert len(text.split()) <= after + 1
    assert provider.count() == 1
    assert_nothing_charged(failing, ws, key)


def test_stream_idle_timeout_midway(failing: RunningGateway, provider: FakeProvider) -> None:
    ws, key = failing.workspace("free")
    provider.fail("slow_stream", interval=1.5)  # idle limit is 1 s
    with failing.client(key) as c, c.stream("POST", CHAT,
                                             json=body_for("gpt-4o-mini", stream=True)) as r:
        assert r.status_code == 200
        lines = sse_lines(r)
    assert "data: [DONE]" not in lines
    assert orjson.loads(lines[-1].removeprefix("data: "))["error"]["code"] == "upstream_timeout"
    assert provider.count() == 1
    assert_nothing_charged(failing, ws, key)


# ---- BYO: a rejected key fails and never falls back to ours

@pytest.mark.parametrize(("model", "path", "ours"), [
    ("gpt-4o-mini", CHAT, OPENAI_KEY), ("claude-haiku-4-5", MESSAGES, ANTHROPIC_KEY)])
@pytest.mark.parametrize("stream", [False, True])
def test_rejected_byo_key_fails_without_fallback(
    failing: RunningGateway, provider: FakeProvider, model: str, path: str, ours: str,
    stream: bool,
) -> None:
    ws, key = failing.workspace("free")
    byo = f"sk-rejected-{uuid.uuid4().hex}"
    with failing.client(key) as c:
        r = c.post(CHAT, json=body_for(model, stream=stream),
                   headers={"X-Bookbag-Provider-Key": byo})
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "provider_auth_failed"
    assert byo not in r.text and byo[-8:] not in r.text
    assert provider.count() == 1
    sent = provider.received[0]
    assert sent.path == path and sent.api_key == byo
    assert all(rec.api_key != ours for rec in provider.received)
    assert_nothing_charged(failing, ws, key)


@pytest.mark.parametrize("stream", [False, True])
def test_byo_provider_error_is_not_charged_nor_recorded(
    failing: RunningGateway, provider: FakeProvider, stream: bool
) -> None:
    ws, key = failing.workspace("free")
    byo = f"sk-byo-{uuid.uuid4().hex}"
    provider.add_key(byo)
    provider.fail("status", status=500)
    with failing.client(key) as c:
        r = c.post(CHAT, json=body_for("gpt-4o-mini", stream=stream),
                   headers={"X-Bookbag-Provider-Key": byo})
    assert r.status_code == 502
    assert provider.count() == 1 and provider.received[0].api_key == byo
    assert_nothing_charged(failing, ws, key)


# ---- client disconnect: the delivery rule

def upstream_sockets(fake_port: int) -> set[int]:
    """Local ports of this process's established TCP connections to the fake provider."""
    found: set[int] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if state == "01" and int(remote.split(":")[1], 16) == fake_port:
            found.add(int(local.split(":")[1], 16))
    return found


def first_content(payload: dict[str, Any]) -> bool:
    return any(ch["delta"].get("content") or ch["delta"].get("tool_calls")
               for ch in payload.get("choices") or [])


# On the litellm route the first chunk already carries content, so "before the first
# content" can only happen before the stream starts (the next test).
@pytest.mark.parametrize(("model", "leave_after_content"), [
    ("gpt-4o-mini", False), ("gpt-4o-mini", True), ("claude-haiku-4-5", True)])
def test_client_disconnect_mid_stream(
    gateway: RunningGateway, provider: FakeProvider, model: str, leave_after_content: bool
) -> None:
    ws, key = gateway.workspace("free")
    cost = 2 if model.startswith("claude") else 1
    baseline = upstream_sockets(provider.port)
    # Long enough between events for the client to leave before the first content, short
    # enough for the idle limit (2 s; litellm yields its first chunk after three events).
    provider.fail("slow_stream", interval=0.4 if leave_after_content else 1.5)
    seen: list[dict[str, Any]] = []
    upstream: set[int] = set()
    with gateway.client(key) as c, c.stream("POST", CHAT, json=body_for(model, stream=True)) as r:
        assert r.status_code == 200
        for line in r.iter_lines():  # leaving this loop closes the connection
            if not line.startswith("data: "):
                continue
            payload = orjson.loads(line.removeprefix("data: "))
            seen.append(payload)
            upstream = upstream or upstream_sockets(provider.port) - baseline
            if first_content(payload) == leave_after_content:
                break
    assert len(upstream) == 1, "the gateway's upstream connection"
    # The client has gone: the hold resolves and the upstream is closed.
    assert wait_for(lambda: gateway.balance(key)["reserved"] == 0)
    assert wait_for(lambda: not upstream & upstream_sockets(provider.port)), \
        "the upstream connection was left open"
    assert provider.count() == 1
    rows = gateway.wait_ledger(ws, 1 if leave_after_content else 0, timeout=1.0)
    if leave_after_content:
        assert any(first_content(p) for p in seen)
        assert len(rows) == 1 and rows[0]["credits"] == cost
        assert gateway.balance(key)["balance"] == 100 - cost
    else:
        assert not any(first_content(p) for p in seen)
        assert rows == []
        assert gateway.balance(key)["balance"] == 100


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5"])
def test_client_gone_before_the_stream_started_is_not_charged(
    gateway: RunningGateway, provider: FakeProvider, model: str
) -> None:
    """The client gives up while the provider is still thinking; the reply then arrives
    all at once. Nothing reached the client, so nothing is charged."""
    ws, key = gateway.workspace("free")
    provider.delay = 0.6
    with gateway.client(key) as c, pytest.raises(httpx.ReadTimeout):
        c.post(CHAT, json=body_for(model, stream=True), timeout=httpx.Timeout(10, read=0.2))
    assert wait_for(lambda: provider.count() == 1)  # reserved before the call
    assert wait_for(lambda: gateway.balance(key)["reserved"] == 0)  # after the answer came
    assert gateway.wait_ledger(ws, 1, timeout=0.5) == []
    assert gateway.balance(key)["balance"] == 100


# ---- never charged: local, BYO, metering off

def run_replies(gw: RunningGateway, key: str, model: str,
                headers: dict[str, str] | None = None) -> list[str]:
    """One JSON and one streamed reply; returns their X-Request-Ids."""
    ids = []
    with gw.client(key) as c:
        r = c.post(CHAT, json=body_for(model), headers=headers)
        assert r.status_code == 200, r.text
        assert r.headers["x-bookbag-credits-charged"] == "0"
        ids.append(r.headers["x-request-id"])
        with c.stream("POST", CHAT, headers=headers, json=body_for(
                model, stream=True, stream_options={"include_usage": True})) as s:
            assert s.status_code == 200
            assert s.headers["x-bookbag-credits-reserved"] == "0"
            lines = sse_lines(s)
        ids.append(s.headers["x-request-id"])
    assert lines[-1] == "data: [DONE]"
    usage = orjson.loads(lines[-2].removeprefix("data: "))["usage"]
    assert usage["credits"] == 0
    return ids


def assert_recorded_free(gw: RunningGateway, ws: str, ids: list[str], mode: str,
                         model: str) -> None:
    rows = gw.wait_ledger(ws, len(ids))
    time.sleep(0.2)
    rows = gw.ledger(ws)
    assert sorted(r["request_id"] for r in rows) == sorted(ids)  # each exactly once
    for row in rows:
        assert (row["credits"], row["billing_mode"], row["model"]) == (0, mode, model)
        assert (row["allotment_delta"], row["topup_delta"]) == (0, 0)


def test_local_is_never_charged_even_at_zero(gateway: RunningGateway,
                                             provider: FakeProvider) -> None:
    ws, key = gateway.workspace("enterprise", custom_allotment=0)
    ids = run_replies(gateway, key, "bookbag-local")
    assert_recorded_free(gateway, ws, ids, "local", "bookbag-local")
    assert provider.count() == 0
    # A BYO header is never forwarded to (or needed by) the local model.
    with gateway.client(key) as c:
        r = c.post(CHAT, json=body_for("bookbag-local"),
                   headers={"X-Bookbag-Provider-Key": "sk-ignored-by-local"})
    assert r.status_code == 200
    assert gateway.balance(key)["balance"] == 0


@pytest.mark.parametrize(("model", "provider_name", "path"), [
    ("gpt-4o-mini", "openai", CHAT), ("claude-haiku-4-5", "anthropic", MESSAGES)])
def test_byo_is_never_charged_even_at_zero(
    gateway: RunningGateway, provider: FakeProvider, model: str, provider_name: str, path: str
) -> None:
    ws, key = gateway.workspace("enterprise", custom_allotment=0)
    byo = f"sk-byo-{uuid.uuid4().hex}"
    provider.add_key(byo, provider_name)
    ids = run_replies(gateway, key, model, headers={"X-Bookbag-Provider-Key": byo})
    assert_recorded_free(gateway, ws, ids, "byo", model)
    assert provider.count(path) == 2
    assert [r.api_key for r in provider.received] == [byo, byo]
    balance = gateway.balance(key)
    assert (balance["balance"], balance["reserved"]) == (0, 0)


def test_metering_off_is_never_charged(make_gateway: GatewayFactory,
                                       provider: FakeProvider) -> None:
    gw = make_gateway(BOOKBAG_METERING="off")
    ws, key = gw.workspace("enterprise", custom_allotment=0)
    ids = run_replies(gw, key, "gpt-4o") + run_replies(gw, key, "claude-haiku-4-5")
    with gw.client(key) as c:
        r = c.post(CHAT, json=body_for("gpt-4o", n=3))
        assert r.status_code == 200 and r.headers["x-bookbag-credits-charged"] == "0"
        ids.append(r.headers["x-request-id"])
        preview = c.post("/v1/chat/completions/preview", json=body_for("gpt-4o"))
    assert preview.json()["billing_mode"] == "unmetered"
    assert preview.json()["would_be_refused"] is False
    rows = gw.wait_ledger(ws, len(ids))
    assert sorted(r["request_id"] for r in rows) == sorted(ids)
    assert all((r["credits"], r["billing_mode"]) == (0, "unmetered") for r in rows)
    assert {r["model"] for r in rows} == {"gpt-4o", "claude-haiku-4-5"}
    assert [r.api_key for r in provider.received] == [OPENAI_KEY] * 2 + [ANTHROPIC_KEY] * 2 + [
        OPENAI_KEY]
    assert gw.balance(key)["balance"] == 0


def test_metering_off_failure_is_not_recorded(make_gateway: GatewayFactory,
                                              provider: FakeProvider) -> None:
    gw = make_gateway(BOOKBAG_METERING="off")
    ws, key = gw.workspace("free")
    provider.fail("status", status=500)
    with gw.client(key) as c:
        assert c.post(CHAT, json=body_for("gpt-4o-mini")).status_code == 502
    assert gw.wait_ledger(ws, 1, timeout=0.5) == []


# ---- holds expire

def test_leaked_hold_is_voided_after_its_ttl(make_gateway: GatewayFactory) -> None:
    clock = ManualClock(time.time())
    gw = make_gateway(clock=clock)
    ws, key = gw.workspace("free")
    gw.run(gw.gw.meter.reserve(ws, 3, "req_leaked_" + uuid.uuid4().hex))
    balance = gw.balance(key)
    assert (balance["balance"], balance["reserved"]) == (97, 3)
    clock.advance(9)  # the TTL in tests is 10 s
    gw.run(gw.gw.meter.sweep())
    assert gw.balance(key)["reserved"] == 3
    clock.advance(2)
    gw.run(gw.gw.meter.sweep())
    balance = gw.balance(key)
    assert (balance["balance"], balance["reserved"]) == (100, 0)
    assert gw.ledger(ws) == []
