"""The history checker itself: it must see the violations it exists to find."""

from __future__ import annotations

from typing import Any

from tests.guarantees.history import OK, Attempt, History, Observed, check


def row(request_id: str, conversation: str, key_id: str, credits: int = 1,
        model: str = "m") -> dict[str, Any]:
    return {"request_id": request_id, "workspace_id": "ws", "kind": "reply", "model": model,
            "conversation_id": conversation, "key_id": key_id, "credits": credits,
            "allotment_delta": -credits, "topup_delta": 0, "period_start": "2026-12-01"}


def observed_with(rows: list[dict[str, Any]], caps: dict[str, int]) -> Observed:
    grant = {"request_id": "grant", "workspace_id": "ws", "kind": "allotment",
             "conversation_id": None, "key_id": None, "credits": 0, "allotment_delta": 100,
             "topup_delta": 0, "period_start": "2026-12-01"}
    return Observed([grant, *rows], {}, {}, caps)


def history_of(n: int) -> History:
    history = History()
    for i in range(n):
        op = history.op(f"op-{i}", "ws", 1)
        op.attempts.append(Attempt(0.0, 0.0, OK, 200, f"req-{i}", f"req-{i}"))
    return history


def test_charges_beyond_a_keys_cap_are_a_violation() -> None:
    rows = [row(f"req-{i}", f"op-{i}", "key_a") for i in range(3)]
    figures = check("t", history_of(3), observed_with(rows, {"key_a": 2}))
    assert figures.cap_overdraft == 1
    assert any("its cap is 2" in v for v in figures.violations)


def test_charges_within_the_cap_and_to_other_keys_are_clean() -> None:
    rows = [row("req-0", "op-0", "key_a"), row("req-1", "op-1", "key_a"),
            row("req-2", "op-2", "key_b")]
    figures = check("t", history_of(3), observed_with(rows, {"key_a": 2}))
    assert figures.cap_overdraft == 0
    assert figures.violations == []


def test_a_chain_reply_is_charged_the_answering_models_price() -> None:
    history = History()
    prices = {"primary": 1, "fallback": 5}
    for i in range(4):
        op = history.op(f"op-{i}", "ws", 1, model="primary", prices=prices)
        op.attempts.append(Attempt(0.0, 0.0, OK, 200, f"req-{i}", f"req-{i}"))
    rows = [row("req-0", "op-0", "k", 1, "primary"), row("req-1", "op-1", "k", 5, "fallback"),
            row("req-2", "op-2", "k", 1, "fallback"),  # charged the primary's price
            row("req-3", "op-3", "k", 1, "stranger")]  # a model outside the chain
    figures = check("t", history, observed_with(rows, {}))
    assert len(figures.violations) == 2, figures.violations
    assert "op-2: entry req-2 (fallback) charged 1, the operation costs 5" in figures.violations
    assert any(v.startswith("op-3: entry req-3 answered by stranger") for v in figures.violations)
