"""Spend controls, key expiry: `expires_at` on key creation (library, CLI, admin API);
from that instant the key gets 401 `key_expired` on every gateway, charging nothing."""

from __future__ import annotations

import datetime as dt
import json
import time

from typer.testing import CliRunner

from gateway.cli.app import app as cli
from gateway.clock import ManualClock
from tests.conftest import GatewayFactory
from tests.fake_provider import FakeProvider
from tests.lifecycle_support import admin, chat
from tests.test_errors import assert_error

runner = CliRunner()


def ms(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso).timestamp() * 1000)


def test_a_key_stops_at_its_expiry_on_every_gateway_charging_nothing(
        make_gateway: GatewayFactory, provider: FakeProvider) -> None:
    clock = ManualClock(time.time())
    first = make_gateway(clock=clock, BOOKBAG_METER="sql")
    second = make_gateway(clock=clock, BOOKBAG_METER="sql")  # the same database
    ws, _ = first.workspace("hobby")
    created = first.accounts.create_key(ws, expires_at=int(clock.now()) + 60)
    assert created.expires_ms == (int(clock.now()) + 60) * 1000
    for gw in (first, second):  # both have the key cached as live
        assert chat(gw, created.key).status_code == 200
    replies, calls = len(first.ledger(ws)), provider.count()
    clock.advance(61)
    for gw in (first, second):
        body = assert_error(chat(gw, created.key), 401, "key_expired",
                            type_="invalid_request_error")
        assert "expired at" in body["message"]
        with gw.client(created.key) as c:
            assert_error(c.get("/v1/balance"), 401, "key_expired")
            preview = c.post("/v1/chat/completions/preview", json={
                "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).json()
            assert preview["refusal"]["code"] == "key_expired"  # the dry-run reports it
    assert len(first.ledger(ws)) == replies and provider.count() == calls


def test_a_key_without_expiry_never_expires_and_is_listed_so(make_gateway: GatewayFactory) -> None:
    clock = ManualClock(time.time())
    gw = make_gateway(clock=clock)
    ws, key = gw.workspace("free")
    clock.advance(10 * 365 * 86400)
    assert chat(gw, key, model="bookbag-local").status_code == 200
    assert [k.expires_ms for k in gw.accounts.keys(ws)] == [None]


def test_admin_api_sets_expires_at_and_refuses_a_past_or_malformed_one(
        make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    ws, _ = gw.workspace("free")
    with admin(gw) as c:
        r = c.post(f"/admin/workspaces/{ws}/keys", json={"expires_at": "2099-01-31T00:00:00Z"})
        assert r.status_code == 201, r.text
        assert r.json()["expires_at"] == "2099-01-31T00:00:00Z"
        listed = c.get(f"/admin/workspaces/{ws}/keys").json()["data"]
        assert sorted(str(k["expires_ms"]) for k in listed) == [
            str(ms("2099-01-31T00:00:00+00:00")), "None"]
        for bad in ("2001-01-01T00:00:00Z", 1_000_000_000, "tomorrow", True, [1], 1e300):
            r = c.post(f"/admin/workspaces/{ws}/keys", json={"expires_at": bad})
            assert_error(r, 400, r.json()["error"]["code"])
            assert "expires_at" in r.json()["error"]["message"], (bad, r.text)
        assert len(c.get(f"/admin/workspaces/{ws}/keys").json()["data"]) == 2  # nothing created
    # A bare date is its midnight UTC; such a key works until then.
    assert chat(gw, gw.key(ws, expires_at="2099-01-31"), model="bookbag-local").status_code == 200


def test_cli_key_create_with_expiry(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    ws, _ = gw.workspace("free")
    url = gw.settings.database_url
    ok = runner.invoke(cli, ["key", "create", "--workspace", ws, "--expires-at",
                             "2099-06-30T12:00:00+02:00", "--json", "--database-url", url])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["expires_ms"] == ms("2099-06-30T10:00:00+00:00")
    past = runner.invoke(cli, ["key", "create", "--workspace", ws, "--expires-at",
                               "2020-01-01", "--database-url", url])
    assert past.exit_code != 0 and "not in the future" in past.output
    assert len(gw.accounts.keys(ws)) == 2


def test_a_dashboard_session_ends_when_its_key_expires(make_gateway: GatewayFactory) -> None:
    clock = ManualClock(time.time())
    gw = make_gateway(clock=clock)
    ws, _ = gw.workspace("free")
    key = gw.key(ws, expires_at=clock.now() + 60)
    with gw.client() as c:
        assert c.post("/dashboard/session", json={"key": key}).status_code == 200
        assert c.get("/v1/balance").status_code == 200
        clock.advance(61)
        assert c.get("/v1/balance").status_code == 401
