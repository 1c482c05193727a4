"""Spend controls: credit caps per billing period on a key and on an agent.

A cap's subject is `key:<key id>` or `agent:<agent id>`. The caller's caps
(its key's, and its bound agent's) ride on the cached `Caller`, so a cap set
or changed reaches running gateways within the key cache TTL, like a revocation.
Each meter checks them in the same atomic step as the balance (after it: when
both refuse, the balance's 402 wins) and gives a voided hold's share back.
An agent cap binds only keys bound to that agent (an unbound key may name any
agent), so setting one needs at least one key bound to the agent.
"""

from __future__ import annotations

from sqlalchemy import Engine

from gateway.errors import SpendCapReached
from gateway.storage.database import Cursor, Sql, transaction
from gateway.types import Cap

KINDS = ("key", "agent")
MAX_CAP = 10**15


class CapError(ValueError):
    """A cap the operator asked for is invalid (400, nothing changed)."""


def subject(kind: str, ident: str) -> str:
    return f"{kind}:{ident}"


# The caps of the key `k` (a SELECT over `api_keys k`): its own and its agent's, as two columns
# for `caps_of`. Shared by the inference caller and the dashboard session.
CAP_COLUMNS = (
    "(SELECT c.credits FROM spend_caps c WHERE c.workspace_id = k.workspace_id "
    "AND c.subject = 'key:' || k.id), "
    "(SELECT c.credits FROM spend_caps c WHERE c.workspace_id = k.workspace_id "
    "AND c.subject = 'agent:' || k.agent_id) "
)


def caps_of(key_id: str, agent_id: str | None, key_cap: int | None,
            agent_cap: int | None) -> tuple[Cap, ...]:
    caps = []
    if key_cap is not None:
        caps.append(Cap(subject("key", key_id), int(key_cap)))
    if agent_cap is not None and agent_id is not None:
        caps.append(Cap(subject("agent", agent_id), int(agent_cap)))
    return tuple(caps)


def cap_view(cap: Cap, used: int, resets_on: str) -> dict[str, object]:
    kind, _, ident = cap.subject.partition(":")
    return {"kind": kind, "id": ident, "credits": cap.credits, "used": used,
            "remaining": max(0, cap.credits - used), "resets_on": resets_on}


def refusal(cap: Cap, used: int, cost: int, resets_on: str) -> SpendCapReached:
    kind, _, ident = cap.subject.partition(":")
    return SpendCapReached(
        f"Spend cap reached: the {kind} {ident!r} may spend {cap.credits} credits per billing "
        f"period and has {used} charged or held; this request costs {cost}. "
        f"The cap resets on {resets_on}."
    )


def set_cap(engine: Engine, workspace_id: str, kind: str, ident: str,
            credits: int | None) -> None:
    """Set (or with None, remove) a cap; validates everything before changing anything."""
    if kind not in KINDS:
        raise CapError(f"a cap is on a key or an agent, got {kind!r}")
    if credits is not None and (isinstance(credits, bool) or not isinstance(credits, int)
                                or not 0 <= credits <= MAX_CAP):
        raise CapError(f"a cap is a whole number of credits from 0 to {MAX_CAP}, got {credits!r}")
    with transaction(engine) as (cur, sql):
        if kind == "key":
            cur.execute(sql("SELECT 1 FROM api_keys WHERE id = ? AND workspace_id = ? "
                            "AND revoked_ms IS NULL"), (ident, workspace_id))
            if cur.fetchone() is None:
                raise CapError(f"workspace {workspace_id!r} has no live key {ident!r}")
        else:
            cur.execute(sql("SELECT 1 FROM api_keys WHERE agent_id = ? AND workspace_id = ? "
                            "AND revoked_ms IS NULL"), (ident, workspace_id))
            if cur.fetchone() is None:
                raise CapError(
                    f"workspace {workspace_id!r} has no live key bound to agent {ident!r}: "
                    "agent caps are enforced through agent-bound keys")
        name = subject(kind, ident)
        cur.execute(sql("DELETE FROM spend_caps WHERE workspace_id = ? AND subject = ?"),
                    (workspace_id, name))
        if credits is not None:
            cur.execute(sql("INSERT INTO spend_caps (workspace_id, subject, credits) "
                            "VALUES (?, ?, ?)"), (workspace_id, name, credits))


def list_caps(engine: Engine, workspace_id: str) -> list[dict[str, object]]:
    with transaction(engine) as (cur, sql):
        cur.execute(sql("SELECT subject, credits FROM spend_caps WHERE workspace_id = ? "
                        "ORDER BY subject"), (workspace_id,))
        rows = cur.fetchall()
    return [{"kind": s.partition(":")[0], "id": s.partition(":")[2], "credits": int(c)}
            for s, c in rows]


def ledger_cap_used(engine: Engine, workspace_id: str, name: str, period_start: str) -> int:
    """What a cap subject was charged in a period, from the ledger (the seed of a cap's usage
    in a period: the memory and Redis meters own every hold since, so charges are the rest)."""
    with transaction(engine) as (cur, sql):
        return charged(cur, sql, workspace_id, name, period_start)


def charged(cur: Cursor, sql: Sql, workspace_id: str, name: str, period_start: str) -> int:
    """The ledger's replies of a cap subject in a period (agent caps: agent-bound keys only,
    as they are enforced there)."""
    kind, _, ident = name.partition(":")
    if kind == "key":
        where = "key_id = ?"
    else:
        where = ("agent_id = ? AND key_id IN (SELECT id FROM api_keys WHERE agent_id = ? "
                 "AND workspace_id = ?)")
    args = (ident,) if kind == "key" else (ident, ident, workspace_id)
    cur.execute(sql("SELECT COALESCE(SUM(credits), 0) FROM ledger WHERE workspace_id = ? "
                    "AND kind = 'reply' AND period_start = ? AND " + where),
                (workspace_id, period_start, *args))
    return int(cur.fetchone()[0])
