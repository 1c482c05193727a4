"""Workspace BYO keys: encrypted at rest, never shown, used for uncharged replies, rotatable."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway.accounts.keyring import generate_key
from gateway.cli.app import app as cli
from tests.conftest import GatewayFactory
from tests.fake_provider import OPENAI_KEY, FakeProvider
from tests.harness import RunningGateway
from tests.lifecycle_support import admin, chat, wait_for

WS_OPENAI_KEY = "sk-workspace-openai-7f3a9c2e51d84b06"
WS_ANTHROPIC_KEY = "sk-ant-workspace-91c0e7d2b4a6"


def store(gw: RunningGateway, ws: str, provider: str, key: str, enable: bool = True) -> Any:
    with admin(gw) as c:
        r = c.put(f"/admin/workspaces/{ws}/byo/{provider}", json={"api_key": key})
        assert r.status_code == 200, r.text
        if enable:
            assert c.put(f"/admin/workspaces/{ws}/byo", json={"enabled": True}).status_code == 200
        return r


def files_of(gw: RunningGateway) -> list[Path]:
    db = Path(gw.settings.database_url.split(":///", 1)[1])
    return [p for p in db.parent.iterdir() if p.is_file()]


@pytest.fixture
def byo_gateway(make_gateway: GatewayFactory, provider: FakeProvider) -> RunningGateway:
    provider.add_key(WS_OPENAI_KEY, "openai")
    provider.add_key(WS_ANTHROPIC_KEY, "anthropic")
    return make_gateway(BOOKBAG_SECRET_KEY=generate_key())


def test_a_byo_workspace_uses_its_key_and_is_not_charged(
    byo_gateway: RunningGateway, provider: FakeProvider,
) -> None:
    gw = byo_gateway
    ws, key = gw.workspace("enterprise", custom_allotment=0)  # nothing to spend
    assert chat(gw, key).status_code == 402
    store(gw, ws, "openai", WS_OPENAI_KEY)
    r = chat(gw, key)
    assert r.status_code == 200, r.text
    assert r.headers["x-bookbag-credits-charged"] == "0"
    assert provider.received[-1].api_key == WS_OPENAI_KEY
    [entry] = gw.wait_ledger(ws, 1)
    assert (entry["billing_mode"], entry["credits"], entry["reason"]) == (
        "byo", 0, "byo_workspace")
    # Only the providers it has a key for: Anthropic is still metered (and refused).
    assert chat(gw, key, "claude-haiku-4-5", max_tokens=20).status_code == 402
    # A model on an operator's own endpoint never takes a customer key.
    assert chat(gw, key, "custom-llm").status_code == 402
    # The built-in model is unaffected: it is never charged and gets no key.
    assert chat(gw, key, "bookbag-local").status_code == 200
    # A key on the request wins over the stored one.
    provider.add_key("sk-header-key-0001", "openai")
    with gw.client(key) as c:
        r = c.post("/v1/chat/completions", headers={"X-Bookbag-Provider-Key": "sk-header-key-0001"},
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200 and provider.received[-1].api_key == "sk-header-key-0001"


def test_the_toggle_turns_byo_off_and_on(byo_gateway: RunningGateway, provider: FakeProvider) -> None:
    gw = byo_gateway
    ws, key = gw.workspace("free")
    store(gw, ws, "openai", WS_OPENAI_KEY, enable=False)
    assert chat(gw, key).headers["x-bookbag-credits-charged"] == "1"
    assert provider.received[-1].api_key == OPENAI_KEY
    with admin(gw) as c:
        assert c.put(f"/admin/workspaces/{ws}/byo", json={"enabled": True}).json()["enabled"]
    assert chat(gw, key).headers["x-bookbag-credits-charged"] == "0"
    assert provider.received[-1].api_key == WS_OPENAI_KEY
    with admin(gw) as c:
        assert c.delete(f"/admin/workspaces/{ws}/byo/openai").json()["deleted"] is True
    assert chat(gw, key).headers["x-bookbag-credits-charged"] == "1"
    assert gw.balance(key)["balance"] == 98


def test_a_rejected_byo_key_fails_and_never_falls_back(
    byo_gateway: RunningGateway, provider: FakeProvider,
) -> None:
    gw = byo_gateway
    ws, key = gw.workspace("free")
    store(gw, ws, "openai", "sk-revoked-by-openai-000")
    r = chat(gw, key)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "provider_auth_failed")
    assert [x.api_key for x in provider.received] == ["sk-revoked-by-openai-000"]
    assert "sk-revoked-by-openai-000" not in r.text
    assert gw.balance(key)["balance"] == 100


def test_a_stored_key_never_appears_in_plaintext(
    byo_gateway: RunningGateway, provider: FakeProvider, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = byo_gateway
    ws, key = gw.workspace("free")
    responses = [store(gw, ws, "openai", WS_OPENAI_KEY), store(gw, ws, "anthropic",
                                                                 WS_ANTHROPIC_KEY)]
    for model in ("gpt-4o-mini", "claude-haiku-4-5"):
        responses.append(chat(gw, key, model, max_tokens=20))
        assert responses[-1].status_code == 200
    assert {r.api_key for r in provider.received} == {WS_OPENAI_KEY, WS_ANTHROPIC_KEY}
    with admin(gw) as c:
        responses += [c.get(f"/admin/workspaces/{ws}"), c.get(f"/admin/workspaces/{ws}/byo"),
                      c.get("/admin/workspaces")]
    with gw.client(key) as c:
        responses += [c.get("/v1/balance"), c.get("/v1/ledger")]
    fingerprints = {k["fingerprint"] for k in responses[-4].json()["keys"]}
    assert len(fingerprints) == 2 and all(f.startswith("sha256:") for f in fingerprints)
    gw.stop()  # flush everything to the files
    secrets = (WS_OPENAI_KEY, WS_ANTHROPIC_KEY)
    for r in responses:
        assert not any(s in r.text or s in str(r.headers) for s in secrets)
    for path in files_of(gw):
        data = path.read_bytes()
        assert not any(s.encode() in data for s in secrets), path
    assert not any(s in caplog.text for s in secrets)


def test_the_secret_key_rotates_without_losing_stored_keys(
    make_gateway: GatewayFactory, provider: FakeProvider, pricing: Path,
) -> None:
    provider.add_key(WS_OPENAI_KEY, "openai")
    old, new = generate_key(), generate_key()
    gw = make_gateway(BOOKBAG_SECRET_KEY=old, BOOKBAG_WEBHOOK_ALLOW_PRIVATE="1")  # a loopback hook
    ws, key = gw.workspace("free")
    store(gw, ws, "openai", WS_OPENAI_KEY)
    with admin(gw) as c:
        hook = c.post(f"/admin/workspaces/{ws}/webhooks", json={"url": "http://127.0.0.1:9/h"})
    secret = hook.json()["secret"]
    gw.stop()
    env = {"BOOKBAG_DATABASE_URL": gw.settings.database_url, "BOOKBAG_PRICING": str(pricing),
           "BOOKBAG_SECRET_KEY": f"{new},{old}"}
    result = CliRunner().invoke(cli, ["byo", "rotate", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert '"byo_keys": 1' in result.output and '"webhook_secrets": 1' in result.output
    # Only the new key from now on: the stored key still decrypts and is used.
    gw2 = make_gateway(BOOKBAG_SECRET_KEY=new)
    assert chat(gw2, key).headers["x-bookbag-credits-charged"] == "0"
    assert provider.received[-1].api_key == WS_OPENAI_KEY
    with admin(gw2) as c:
        shown = c.get(f"/admin/workspaces/{ws}/webhooks").json()["data"][0]
    assert shown["secret_fingerprint"].startswith("sha256:") and secret not in str(shown)
    gw2.stop()
    # The old key alone no longer reads it: the request fails rather than being charged.
    gw3 = make_gateway(BOOKBAG_SECRET_KEY=old)
    r = chat(gw3, key)
    assert (r.status_code, r.json()["error"]["code"]) == (503, "service_unavailable")
    assert gw3.balance(key)["balance"] == 100


def test_storing_a_key_needs_the_secret_key(gateway: RunningGateway) -> None:
    ws, _ = gateway.workspace("free")
    with admin(gateway) as c:
        r = c.put(f"/admin/workspaces/{ws}/byo/openai", json={"api_key": WS_OPENAI_KEY})
        assert r.status_code == 400 and "BOOKBAG_SECRET_KEY" in r.json()["error"]["message"]
        assert WS_OPENAI_KEY not in r.text
        r = c.put(f"/admin/workspaces/{ws}/byo/mistral-ai", json={"api_key": "x"})
        assert r.status_code == 400


def test_the_cli_stores_a_key_from_a_hidden_prompt(
    byo_gateway: RunningGateway, provider: FakeProvider, pricing: Path,
) -> None:
    gw = byo_gateway
    ws, key = gw.workspace("free")
    env = {"BOOKBAG_DATABASE_URL": gw.settings.database_url, "BOOKBAG_PRICING": str(pricing),
           "BOOKBAG_SECRET_KEY": gw.settings.secret_key or ""}
    runner = CliRunner()
    result = runner.invoke(cli, ["byo", "set", ws, "openai", "--json"], input=WS_OPENAI_KEY + "\n",
                           env=env)
    assert result.exit_code == 0, result.output
    assert WS_OPENAI_KEY not in result.output and "sha256:" in result.output
    assert runner.invoke(cli, ["byo", "enable", ws], env=env).exit_code == 0
    listed = runner.invoke(cli, ["byo", "list", ws, "--json"], env=env)
    assert '"enabled": true' in listed.output and WS_OPENAI_KEY not in listed.output
    wait_for(lambda: chat(gw, key).headers["x-bookbag-credits-charged"] == "0",
             what="the toggle to reach the server")
    assert provider.received[-1].api_key == WS_OPENAI_KEY
