"""Input errors on the read endpoints are 400, not 503; an agent-bound key's balance is its agent's."""

from __future__ import annotations

import base64

import pytest

from tests.harness import RunningGateway
from tests.test_usage import chat


def cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize("params", [
    {"start": "9999-12-01", "end": "9999-12-31"},
    {"start": "9999-12-31T00:00:00", "end": "9999-12-31T23:59:59-05:00"},
    {"start": "0001-01-01", "end": "0001-01-05"},
    {"start": "9999-12-30", "tz": "Pacific/Kiritimati"},
])
@pytest.mark.parametrize("path", ["/v1/usage", "/v1/ledger"])
def test_a_window_at_the_ends_of_the_calendar_is_a_400(
    gateway: RunningGateway, path: str, params: dict[str, str],
) -> None:
    _, key = gateway.workspace("free")
    with gateway.client(key) as c:
        r = c.get(path, params=params)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert r.json()["error"]["param"] in ("start", "end")


@pytest.mark.parametrize("raw", [
    "v1:" + "9" * 23 + ":1", "v1:1:" + "9" * 23, "v1:-" + "9" * 23 + ":1", "v1:1:-1",
])
def test_a_cursor_out_of_range_is_a_400(gateway: RunningGateway, raw: str) -> None:
    _, key = gateway.workspace("free")
    with gateway.client(key) as c:
        r = c.get("/v1/ledger", params={"cursor": cursor(raw)})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "cursor"


def test_an_agent_bound_keys_balance_counts_its_agents_credits(gateway: RunningGateway) -> None:
    ws, key = gateway.workspace("hobby")
    bound = gateway.key(ws, agent_id="triage")
    with gateway.client(key) as c:
        chat(c, "gpt-4o", "writer")
        chat(c, "claude-haiku-4-5", "triage")
    gateway.wait_ledger(ws, 2)
    whole = gateway.balance(key)
    mine = gateway.balance(bound)
    assert whole["credits_used_30d"] == 7
    assert mine["credits_used_30d"] == 2
    assert mine["agent_id"] == "triage" and "agent_id" not in whole


def test_a_database_failure_is_still_a_503(gateway: RunningGateway) -> None:
    _, key = gateway.workspace("free")
    with gateway.engine.begin() as conn:  # the ledger gone: every read of it fails in the database
        conn.exec_driver_sql("ALTER TABLE ledger RENAME TO ledger_elsewhere")
    try:
        with gateway.client(key) as c:
            for path in ("/v1/usage?start=2026-11-01T00:30:00", "/v1/ledger"):  # odd hour: ledger
                r = c.get(path)
                assert r.status_code == 503, (path, r.text)
                assert r.json()["error"]["code"] == "service_unavailable"
    finally:
        with gateway.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE ledger_elsewhere RENAME TO ledger")
