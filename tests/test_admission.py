"""The admission dry-run (POST /v1/chat/completions/preview): every verdict a real request
would meet, in its order, the first failing one as `refusal`, and nothing consumed."""

from __future__ import annotations

from typing import Any

from tests.harness import RunningGateway
from tests.lifecycle_support import HELLO, chat, wait_for
from tests.test_errors import assert_error

PREVIEW = "/v1/chat/completions/preview"


def preview(gw: RunningGateway, key: str, **body: Any) -> dict[str, Any]:
    with gw.client(key) as c:
        r = c.post(PREVIEW, json={"model": "gpt-4o-mini", "messages": HELLO, **body})
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def failing(data: dict[str, Any]) -> list[str]:
    return [v["code"] for v in data["verdicts"] if not v["ok"]]


def test_an_admitted_request_has_every_verdict_ok(gateway: RunningGateway) -> None:
    _, key = gateway.workspace("hobby")
    data = preview(gateway, key)
    assert [v["check"] for v in data["verdicts"]] == [
        "key_expiry", "suspension", "rate_limit", "parameters", "balance"]
    assert all(v["ok"] for v in data["verdicts"])
    assert (data["would_be_refused"], data["refusal"]) == (False, None)


def test_the_rate_limit_verdict_counts_nothing(gateway: RunningGateway) -> None:
    ws, _ = gateway.workspace("hobby")
    key = gateway.key(ws, rate_limit="2/60s")
    for _ in range(5):
        assert preview(gateway, key)["refusal"] is None
    assert [chat(gateway, key).status_code for _ in range(3)] == [200, 200, 429]
    data = preview(gateway, key)
    assert data["refusal"]["code"] == "rate_limit_exceeded" and data["refusal"]["status"] == 429


def test_suspension_and_caps_and_balance_are_reported_in_order(gateway: RunningGateway) -> None:
    ws, _ = gateway.workspace("free")  # 100 credits
    created = gateway.accounts.create_key(ws, agent_id="planner")
    gateway.accounts.set_cap(ws, "key", created.id, 2)
    gateway.accounts.set_cap(ws, "agent", "planner", 50)
    wait_for(lambda: len(gateway.balance(created.key).get("caps", [])) == 2, what="caps")
    assert [chat(gateway, created.key).status_code for _ in range(2)] == [200, 200]
    rows, balance = len(gateway.ledger(ws)), gateway.balance(created.key)["balance"]
    data = preview(gateway, created.key)
    assert failing(data) == ["spend_cap_reached"]
    assert data["refusal"]["check"] == "key_cap" and data["refusal"]["status"] == 402
    agent = next(v for v in data["verdicts"] if v["check"] == "agent_cap")
    assert (agent["ok"], agent["used"], agent["remaining"]) == (True, 2, 48)
    assert_error(chat(gateway, created.key), 402, "spend_cap_reached")  # as predicted
    # Both the balance and a cap refuse: the balance's 402 comes first, as in a real request.
    data = preview(gateway, created.key, model="gpt-4o", n=21)
    assert failing(data) == ["insufficient_credits", "spend_cap_reached", "spend_cap_reached"]
    assert data["refusal"]["code"] == "insufficient_credits"
    gateway.accounts.update_workspace(ws, suspended=True)
    data = wait_for(lambda: (d := preview(gateway, created.key))["refusal"]["code"]
                    == "workspace_suspended" and d, what="the suspension")
    assert data["refusal"]["status"] == 403
    # Nothing was consumed by any preview.
    assert len(gateway.ledger(ws)) == rows
    gateway.accounts.update_workspace(ws, suspended=False)
    wait_for(lambda: preview(gateway, created.key)["refusal"]["code"] == "spend_cap_reached",
             what="the resume")
    assert gateway.balance(created.key)["balance"] == balance


def test_unmetered_requests_meet_no_balance_or_cap_verdict(gateway: RunningGateway) -> None:
    ws, _ = gateway.workspace("free")
    created = gateway.accounts.create_key(ws)
    gateway.accounts.set_cap(ws, "key", created.id, 0)
    data = preview(gateway, created.key, model="bookbag-local")
    assert [v["check"] for v in data["verdicts"]] == [
        "key_expiry", "suspension", "rate_limit", "parameters"]
    assert data["refusal"] is None


def test_a_billed_feature_is_the_verdict_the_real_request_meets(gateway: RunningGateway) -> None:
    """A feature that raises the provider's bill (here a service tier the entry does not
    enable) is refused by the dry-run as the request itself would be, before the balance."""
    ws, key = gateway.workspace("free")
    extra = {"service_tier": "priority"}
    data = preview(gateway, key, **extra)
    assert failing(data) == ["unsupported_parameter"]
    assert data["refusal"]["check"] == "parameters" and data["refusal"]["status"] == 400
    with gateway.client(key) as c:
        real = c.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": HELLO,
                                                     **extra})
    assert real.status_code == 400 and real.json()["error"]["message"] == data["refusal"]["message"]
    assert failing(preview(gateway, key, model="bookbag-local", tools=[{
        "type": "function", "function": {"name": "f", "parameters": {}}}])) != []  # the route's own
    assert gateway.ledger(ws) == []
