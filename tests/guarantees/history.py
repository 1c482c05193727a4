"""A history of client operations, and the checker that holds it against the ledger.

In the manner of Jepsen: every operation a client invokes is recorded with
each attempt's outcome —

    ok             a 200 (a stream: it ended with `data: [DONE]`); the ledger entry it
                   names is its X-Request-Id, or X-Bookbag-Original-Request-Id on a replay
    fail           the gateway answered with an error (or an in-band stream error):
                   by the SPEC, never charged
    busy           409 idempotency_in_progress: the same key is still running; retried
    indeterminate  a reset, a timeout, a stream cut without an error: anything may have
                   happened, and only the idempotent retry (same key) resolves it

— and the checker compares it with what the system holds afterwards (the SQL
ledger, the balance store's view, the holds). Each operation sends its id as
`X-Bookbag-Conversation-Id`, so its ledger entries are found even for
attempts whose response never arrived.

Violations (each a string in `Figures.violations`):
  - an ok operation without exactly one entry, or with a different request id or cost (for
    a model with fallbacks: the price of the model that answered, which must be one of its
    chain)
  - a failed attempt whose request id has an entry; a failed operation with any entry
  - an indeterminate operation with more than one entry; an entry no operation explains
  - an overdraft (a bucket recomputed from the ledger below zero), or a cap overdraft (a
    capped key's replies in a period, from the ledger, above its cap)
  - a hold left after the TTL; a balance that is not the ledger's (the balance equation)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FIGURES_FILE = ARTIFACTS / "guarantees.jsonl"
OK, FAIL, BUSY, INDETERMINATE = "ok", "fail", "busy", "indeterminate"


@dataclass
class Attempt:
    started: float
    ended: float
    outcome: str
    status: int | None = None
    request_id: str | None = None  # the response's X-Request-Id (None without a response)
    charged_id: str | None = None  # ok: the request id of the entry that charged it
    code: str | None = None  # the error code, or the exception's class name
    replayed: bool = False


@dataclass
class Op:
    """One logical operation: a request and its retries (one Idempotency-Key)."""

    id: str
    workspace_id: str
    cost: int  # credits the operation costs when it succeeds (0: unmetered)
    stream: bool = False
    key: str | None = None
    model: str = ""
    attempts: list[Attempt] = field(default_factory=list)
    # A model with fallbacks: the credits of each model that may answer (the requested
    # one's is `cost`); its entry is charged the answering model's.
    prices: dict[str, int] | None = None

    @property
    def outcome(self) -> str:
        if any(a.outcome == OK for a in self.attempts):
            return OK
        answered = [a for a in self.attempts if a.outcome != BUSY]
        if not answered or answered[-1].outcome == INDETERMINATE:
            return INDETERMINATE
        if all(a.outcome == FAIL for a in answered):
            return FAIL
        # An indeterminate attempt, then a failure. A retry with the key that failed after
        # taking its claim (402, a provider error...) means the first was never charged (it
        # would have been replayed); a 503 may have come from the claim itself: still open.
        return FAIL if self.key is not None and answered[-1].status != 503 else INDETERMINATE

    def ok_attempt(self) -> Attempt | None:
        return next((a for a in self.attempts if a.outcome == OK), None)


class History:
    """Operations recorded by any number of client threads or tasks."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self._lock = threading.Lock()
        self.started = time.monotonic()

    def op(self, op_id: str, workspace_id: str, cost: int, *, stream: bool = False,
           key: str | None = None, model: str = "",
           prices: dict[str, int] | None = None) -> Op:
        op = Op(op_id, workspace_id, cost, stream, key, model, prices=prices)
        with self._lock:
            self.ops.append(op)
        return op

    def count(self, outcome: str) -> int:
        return sum(1 for op in self.ops if op.outcome == outcome)

    def attempts(self) -> list[Attempt]:
        return [a for op in self.ops for a in op.attempts]

    def first_ok_after(self, moment: float) -> float | None:
        """Seconds from `moment` (time.monotonic) to the first ok attempt that started after it."""
        ends = [a.ended for a in self.attempts() if a.outcome == OK and a.started >= moment]
        return round(min(ends) - moment, 3) if ends else None


@dataclass
class Observed:
    """What the system holds once the run is over (after the hold TTL and a sweep)."""

    rows: list[dict[str, Any]]  # ledger rows (every kind) of the workspaces in the history
    balances: dict[str, dict[str, Any]]  # workspace -> its balance as the store reports it
    holds: dict[str, int]  # workspace -> holds left in the store(s)
    caps: dict[str, int] = field(default_factory=dict)  # key id -> its spend cap per period


@dataclass
class Figures:
    test: str
    ops: int = 0
    ok: int = 0
    fail: int = 0
    indeterminate: int = 0
    attempts: int = 0
    entries: int = 0
    charged: int = 0
    overdraft: int = 0
    cap_overdraft: int = 0  # credits charged to a capped key beyond its cap, over its periods
    leaked_holds: int = 0
    lost: int = 0  # ok operations without their entry
    duplicates: int = 0  # entries beyond one for an operation
    charged_failures: int = 0  # failed attempts or operations that have an entry
    violations: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "test": self.test, "ops": self.ops, "ok": self.ok, "fail": self.fail,
            "indeterminate": self.indeterminate, "attempts": self.attempts,
            "entries": self.entries, "charged": self.charged, "overdraft": self.overdraft,
            "cap_overdraft": self.cap_overdraft,
            "leaked_holds": self.leaked_holds, "lost": self.lost, "duplicates": self.duplicates,
            "charged_failures": self.charged_failures, "violations": len(self.violations),
        }
        data.update(self.extra)
        data["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return data

    def emit(self) -> dict[str, Any]:
        """Print the figures as one JSON line and append it to test-artifacts/guarantees.jsonl."""
        data = self.line()
        text = json.dumps(data, sort_keys=False)
        print("GUARANTEES " + text, flush=True)
        ARTIFACTS.mkdir(exist_ok=True)
        with FIGURES_FILE.open("a") as f:
            f.write(text + "\n")
        emitted.append(data)
        return data

    def assert_clean(self) -> None:
        assert self.violations == [], "\n".join(self.violations[:30])


emitted: list[dict[str, Any]] = []  # this session's figures, for the terminal summary


def ledger_buckets(rows: Iterable[dict[str, Any]], workspace_id: str) -> dict[str, Any]:
    """The balance recomputed from the ledger alone (DESIGN invariant 6)."""
    own = [r for r in rows if r["workspace_id"] == workspace_id]
    periods = [r["period_start"] for r in own if r["kind"] == "allotment"]
    period = max(periods) if periods else None
    in_period = [r for r in own if r["period_start"] == period]
    return {
        "period_start": period,
        "allotment": sum(r["allotment_delta"] for r in in_period if r["kind"] == "allotment"),
        "allotment_remaining": sum(r["allotment_delta"] for r in in_period),
        "topups_remaining": sum(r["topup_delta"] for r in own),
    }


def cap_usage(replies: Iterable[dict[str, Any]], key_id: str) -> dict[str, int]:
    """A key's reply credits per period, from the ledger (what its cap bounds)."""
    used: dict[str, int] = {}
    for r in replies:
        if r["key_id"] == key_id:
            used[r["period_start"]] = used.get(r["period_start"], 0) + r["credits"]
    return used


def check(name: str, history: History, observed: Observed, **extra: Any) -> Figures:
    figures = Figures(name, extra=dict(extra))
    bad = figures.violations
    replies = [r for r in observed.rows if r["kind"] == "reply"]
    by_conversation: dict[str | None, list[dict[str, Any]]] = {}
    for row in replies:
        by_conversation.setdefault(row["conversation_id"], []).append(row)
    by_request = {r["request_id"]: r for r in replies}

    for op in history.ops:
        entries = by_conversation.pop(op.id, [])
        outcome = op.outcome
        for attempt in op.attempts:
            if attempt.outcome == FAIL and attempt.request_id in by_request:
                figures.charged_failures += 1
                bad.append(f"{op.id}: attempt {attempt.request_id} failed ({attempt.status} "
                           f"{attempt.code}) but was charged")
        if outcome == OK:
            ok = op.ok_attempt()
            assert ok is not None
            if len(entries) != 1:
                figures.lost += len(entries) == 0
                figures.duplicates += max(0, len(entries) - 1)
                bad.append(f"{op.id}: ok with {len(entries)} ledger entries")
            elif ok.charged_id is not None and entries[0]["request_id"] != ok.charged_id:
                bad.append(f"{op.id}: ok as {ok.charged_id} but its entry is "
                           f"{entries[0]['request_id']}")
        elif outcome == FAIL and entries:
            figures.charged_failures += 1
            figures.duplicates += max(0, len(entries) - 1)
            bad.append(f"{op.id}: failed ({op.attempts[-1].code}) with {len(entries)} entries")
        elif outcome == INDETERMINATE and len(entries) > 1:
            figures.duplicates += len(entries) - 1
            bad.append(f"{op.id}: indeterminate with {len(entries)} entries")
        for row in entries:
            cost = op.cost if op.prices is None else op.prices.get(row["model"])
            if cost is None:
                bad.append(f"{op.id}: entry {row['request_id']} answered by {row['model']}, "
                           f"not a model of its chain {sorted(op.prices or {})}")
            elif row["credits"] != cost:
                bad.append(f"{op.id}: entry {row['request_id']} ({row['model']}) charged "
                           f"{row['credits']}, the operation costs {cost}")
    workspaces = {op.workspace_id for op in history.ops}
    for conversation, rows in by_conversation.items():
        for row in rows:
            if row["workspace_id"] in workspaces:
                bad.append(f"entry {row['request_id']} ({conversation}) matches no operation")

    for ws in sorted(workspaces):
        buckets = ledger_buckets(observed.rows, ws)
        overdraft = max(0, -buckets["allotment_remaining"]) + max(0, -buckets["topups_remaining"])
        figures.overdraft += overdraft
        if overdraft:
            bad.append(f"{ws}: overdrawn by {overdraft} ({buckets})")
        leaked = observed.holds.get(ws, 0)
        figures.leaked_holds += leaked
        if leaked:
            bad.append(f"{ws}: {leaked} holds left after the TTL")
        balance = observed.balances.get(ws)
        if balance is not None:
            seen = {k: balance[k] for k in buckets}
            if seen != buckets or balance.get("reserved", 0) != 0:
                bad.append(f"{ws}: balance {seen} (reserved {balance.get('reserved')}) is not "
                           f"the ledger's {buckets}")

    for key_id, cap in sorted(observed.caps.items()):
        for period, used in cap_usage(replies, key_id).items():
            over = max(0, used - cap)
            figures.cap_overdraft += over
            if over:
                bad.append(f"key {key_id}: charged {used} in the period of {period}, "
                           f"its cap is {cap}")
    if observed.caps:
        figures.extra.setdefault("cap_refused", sum(
            1 for a in history.attempts() if a.code == "spend_cap_reached"))

    figures.ops = len(history.ops)
    figures.ok = history.count(OK)
    figures.fail = history.count(FAIL)
    figures.indeterminate = history.count(INDETERMINATE)
    figures.attempts = len(history.attempts())
    figures.entries = sum(1 for r in replies if r["workspace_id"] in workspaces)
    figures.charged = sum(r["credits"] for r in replies if r["workspace_id"] in workspaces)
    figures.extra.setdefault("duration_s", round(time.monotonic() - history.started, 1))
    return figures
