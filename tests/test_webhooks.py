"""Webhooks: signed as documented, retried after failures, each event under one id only."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from gateway.accounts.keyring import generate_key
from gateway.cli.app import app as cli
from gateway.clock import ManualClock
from gateway.webhooks.registry import event_id, verify
from tests.conftest import GatewayFactory
from tests.harness import RunningGateway
from tests.lifecycle_support import admin, chat, fire, shared_store_settings, ts, wait_for

# The receiver listens on loopback: the gateway must be allowed private webhook targets.
FAST = {"BOOKBAG_WEBHOOK_INTERVAL": "0.05", "BOOKBAG_WEBHOOK_BACKOFF": "0.1",
        "BOOKBAG_WEBHOOK_ALLOW_PRIVATE": "1"}


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads(self.body)
        return data


@dataclass
class Receiver:
    """A real HTTP server on loopback that records each POST and answers with a scripted status."""

    statuses: list[int] = field(default_factory=list)  # consumed in order; then 200
    received: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def start(self) -> Receiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver.lock:
                    receiver.received.append(Delivery({k.lower(): v for k, v in self.headers.items()},
                                                      body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def of_type(self, type_: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.received if d.event["type"] == type_]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def add_endpoint(gw: RunningGateway, ws: str, url: str, **extra: Any) -> dict[str, Any]:
    with admin(gw) as c:
        r = c.post(f"/admin/workspaces/{ws}/webhooks", json={"url": url, **extra})
        assert r.status_code == 201, r.text
        data: dict[str, Any] = r.json()
        return data


def recipe_verifies(secret: str, header: str, body: bytes, now: float) -> bool:
    """The receiver's recipe from docs/operators.md, written out independently."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    t = int(fields["t"])
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return abs(now - t) <= 300 and hmac.compare_digest(expected, fields["v1"])


def test_a_low_balance_event_is_signed_as_documented(
    make_gateway: GatewayFactory, receiver: Receiver,
) -> None:
    gw = make_gateway(BOOKBAG_SECRET_KEY=generate_key(), **FAST)
    ws, key = gw.workspace("free")
    endpoint = add_endpoint(gw, ws, receiver.url)
    assert endpoint["secret"].startswith("whsec_")
    assert all(r.status_code == 200 for r in fire([gw], key, 80))  # 20 left: the 0.2 mark
    [delivery] = wait_for(lambda: receiver.of_type("credits.low"), what="credits.low")
    header = delivery.headers["bookbag-signature"]
    assert recipe_verifies(endpoint["secret"], header, delivery.body, time.time())
    assert verify(endpoint["secret"], header, delivery.body)
    assert not verify(endpoint["secret"], header, delivery.body + b" ")
    assert not verify("whsec_other", header, delivery.body)
    assert not verify(endpoint["secret"], header, delivery.body, now=time.time() + 301)
    event = delivery.event
    period = gw.balance(key)["period_start"]
    assert event["id"] == delivery.headers["bookbag-event-id"]
    assert event["id"] == event_id("credits.low", ws, f"{period}:0.2")
    assert (event["type"], event["workspace_id"], event["data"]["fraction"],
            event["data"]["balance"], event["data"]["allotment"]) == (
        "credits.low", ws, "0.2", 20, 100)
    # The listing shows a fingerprint of the secret, never the secret.
    with admin(gw) as c:
        listed = c.get(f"/admin/workspaces/{ws}/webhooks").text
    assert endpoint["secret"] not in listed and "sha256:" in listed


def test_a_failing_receiver_is_retried_with_the_same_event_id(
    make_gateway: GatewayFactory, receiver: Receiver,
) -> None:
    gw = make_gateway(BOOKBAG_SECRET_KEY=generate_key(), **FAST)
    ws, key = gw.workspace("free")
    endpoint = add_endpoint(gw, ws, receiver.url, events=["credits.low"])
    receiver.statuses = [500, 500]
    assert all(r.status_code == 200 for r in fire([gw], key, 91))  # 9 left: 0.2 and 0.1
    wait_for(lambda: len(receiver.of_type("credits.low")) >= 4, what="two events, one retried twice")
    time.sleep(0.5)  # nothing more arrives once both are delivered
    deliveries = receiver.of_type("credits.low")
    by_fraction: dict[str, set[str]] = {}
    for d in deliveries:
        by_fraction.setdefault(d.event["data"]["fraction"], set()).add(d.event["id"])
        assert d.headers["bookbag-event-id"] == d.event["id"]
        assert verify(endpoint["secret"], d.headers["bookbag-signature"], d.body)
    assert {f: len(ids) for f, ids in by_fraction.items()} == {"0.2": 1, "0.1": 1}
    # Two refusals, then each event once more: every attempt numbered, in order, per event.
    assert len(deliveries) == 4
    attempts: dict[str, list[int]] = {}
    for d in deliveries:
        attempts.setdefault(d.event["id"], []).append(int(d.headers["bookbag-delivery-attempt"]))
    assert all(a == list(range(1, len(a) + 1)) for a in attempts.values())
    with admin(gw) as c:
        listed = c.get(f"/admin/workspaces/{ws}/events").json()["data"]
    states = {e["id"]: (e["deliveries"][0]["status"], e["deliveries"][0]["attempts"])
              for e in listed}
    assert states == {evt: ("delivered", len(a)) for evt, a in attempts.items()}


@pytest.fixture(params=["sql", "postgres", "redis"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    with ExitStack() as stack:
        yield shared_store_settings(request.param, stack, tmp_path)


def test_an_event_is_stored_and_delivered_once_across_processes(
    shared_store: dict[str, str], make_gateway: GatewayFactory, receiver: Receiver,
) -> None:
    key_env = {"BOOKBAG_SECRET_KEY": generate_key(), **shared_store, **FAST}
    gws = [make_gateway(**key_env) for _ in range(2)]
    ws, key = gws[0].workspace("free")
    add_endpoint(gws[0], ws, receiver.url)
    responses = fire(gws, key, 120, workers=60)
    assert sum(r.status_code == 200 for r in responses) == 100
    wait_for(lambda: receiver.of_type("credits.exhausted"), what="credits.exhausted")
    time.sleep(0.5)
    with receiver.lock:
        events = [d.event for d in receiver.received]
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids))  # each event delivered once
    assert sorted((e["type"], e["data"].get("fraction")) for e in events) == [
        ("credits.exhausted", None), ("credits.low", "0.1"), ("credits.low", "0.2")]


def test_exhausted_and_renewed_events(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    clock = ManualClock(ts("2030-01-20T00:00:00"))
    gw = make_gateway(clock=clock, BOOKBAG_SECRET_KEY=generate_key(), **FAST)
    ws, key = gw.workspace("free", anchor_date="2030-01-01")
    with admin(gw) as c:
        r = c.patch(f"/admin/workspaces/{ws}", json={"low_fractions": [0.5]})
        assert r.status_code == 200 and r.json()["low_fractions"] == "0.5"
    add_endpoint(gw, ws, receiver.url, events=["credits.exhausted", "period.renewed",
                                               "credits.low"])
    fire([gw], key, 100)
    exhausted = wait_for(lambda: receiver.of_type("credits.exhausted"), what="exhausted")
    assert exhausted[0].event["data"]["period_start"] == "2030-01-01"
    assert [d.event["data"]["fraction"] for d in receiver.of_type("credits.low")] == ["0.5"]
    clock.set(ts("2030-02-01T00:00:01"))
    assert chat(gw, key).status_code == 200
    renewed = wait_for(lambda: receiver.of_type("period.renewed"), what="period.renewed")
    assert [(d.event["data"]["period_start"], d.event["data"]["allotment"]) for d in renewed] == [
        ("2030-02-01", 100)]


def test_unsubscribed_and_disabled_endpoints_get_nothing(
    make_gateway: GatewayFactory, receiver: Receiver,
) -> None:
    gw = make_gateway(BOOKBAG_SECRET_KEY=generate_key(), **FAST)
    ws, key = gw.workspace("free")
    other = Receiver().start()
    try:
        add_endpoint(gw, ws, receiver.url, events=["credits.recharged"])
        paused = add_endpoint(gw, ws, other.url)
        with admin(gw) as c:
            assert c.patch(f"/admin/webhooks/{paused['id']}",
                           json={"enabled": False}).json()["enabled"] is False
        fire([gw], key, 95)
        time.sleep(0.5)
        assert receiver.received == [] and other.received == []
    finally:
        other.stop()


def test_a_receiver_that_never_recovers_is_given_up_on(
    make_gateway: GatewayFactory, receiver: Receiver, caplog: pytest.LogCaptureFixture,
    pricing: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.cli import app as cli_module

    monkeypatch.setattr(cli_module.console, "width", 250)
    caplog.set_level(logging.WARNING, logger="bookbag")
    secret = generate_key()
    gw = make_gateway(BOOKBAG_SECRET_KEY=secret, BOOKBAG_WEBHOOK_MAX_ATTEMPTS="3", **FAST)
    ws, key = gw.workspace("free")
    add_endpoint(gw, ws, receiver.url, events=["credits.exhausted"])
    receiver.statuses = [500] * 10
    fire([gw], key, 100)

    def given_up() -> bool:
        with admin(gw) as c:
            data = c.get(f"/admin/workspaces/{ws}/events").json()["data"]
        return bool(data) and data[0]["deliveries"][0]["status"] == "failed"

    wait_for(given_up, what="the delivery to fail for good")
    assert len(receiver.received) == 3
    assert len({d.event["id"] for d in receiver.received}) == 1
    # Each failed attempt warns in the log, with its error; the CLI's table shows the last error.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and "webhook" in r.getMessage()]
    assert sum("attempt 1 of 3 failed (HTTP 500)" in w for w in warnings) == 1, warnings
    assert any("failed for good after 3 attempts: HTTP 500" in w for w in warnings), warnings
    result = CliRunner().invoke(cli, ["webhook", "events", ws], env={
        "BOOKBAG_DATABASE_URL": gw.settings.database_url, "BOOKBAG_PRICING": str(pricing),
        "BOOKBAG_SECRET_KEY": secret})
    assert result.exit_code == 0, result.output
    assert "failed after 3 attempts (last error: HTTP 500)" in result.output, result.output


def test_endpoints_need_the_secret_key(gateway: RunningGateway) -> None:
    ws, _ = gateway.workspace("free")
    with admin(gateway) as c:
        r = c.post(f"/admin/workspaces/{ws}/webhooks", json={"url": "http://127.0.0.1:1/x"})
    assert r.status_code == 400 and "BOOKBAG_SECRET_KEY" in r.json()["error"]["message"]
