"""The embedded meter's database side: the lease that makes one process the owner, loading a
workspace's account, and the poll that finds what other processes wrote to the ledger
(grants, adjustments, plan changes). Blocking calls: the meter runs them off the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from gateway.errors import ServiceUnavailable
from gateway.metering.base import plan_at
from gateway.periods import period_of
from gateway.storage.database import Cursor, Sql, transaction
from gateway.types import Hold

LEASE = "embedded-meter"


class OwnerConflict(RuntimeError):
    """Another live process already owns the balances of this database."""


@dataclass(slots=True)
class Account:
    """One workspace's balance, holds and cap usage, as the owning process keeps them."""

    workspace_id: str
    plan: str
    custom_allotment: int | None
    anchor: str
    period_start: str
    period_end: str
    allotment: int
    allotment_remaining: int
    topups_remaining: int
    loaded_seq: int
    reserved: int = 0
    holds: dict[str, Hold] = field(default_factory=dict)
    cap_used: dict[tuple[str, str], int] = field(default_factory=dict)  # (subject, period) -> used
    pending: tuple[str | None, int | None, str | None] = (None, None, None)  # plan, custom, from
    # The period (epoch seconds) the last renewal check saw: within it nothing can fall due.
    checked: tuple[float, float] = (0.0, 0.0)

    def plan_at(self, period_start: str) -> tuple[str, int | None]:
        return plan_at(self.plan, self.custom_allotment, *self.pending, period_start)


def claim_lease(engine: Engine, owner: str, now_ms: int, ttl_ms: int) -> None:
    """Become the owner of this database's balances, or raise OwnerConflict."""
    with transaction(engine) as (cur, sql):
        cur.execute(sql("SELECT owner, expires_ms FROM leases WHERE name = ?"), (LEASE,))
        row = cur.fetchone()
        if row is not None and row[0] != owner and row[1] > now_ms:
            raise OwnerConflict(
                f"another gateway process ({row[0]}) owns the balances of this database. "
                "The embedded meter allows one process; for several, set BOOKBAG_REDIS_URL "
                "or BOOKBAG_METER=sql."
            )
        cur.execute(sql("DELETE FROM leases WHERE name = ?"), (LEASE,))
        cur.execute(
            sql("INSERT INTO leases (name, owner, expires_ms) VALUES (?, ?, ?)"),
            (LEASE, owner, now_ms + ttl_ms),
        )


def release_lease(engine: Engine, owner: str) -> None:
    with transaction(engine) as (cur, sql):
        cur.execute(sql("DELETE FROM leases WHERE name = ? AND owner = ?"), (LEASE, owner))


def max_seq(engine: Engine) -> int:
    with transaction(engine) as (cur, _):
        cur.execute("SELECT COALESCE(MAX(seq), 0) FROM ledger")
        return int(cur.fetchone()[0])


def load_account(engine: Engine, workspace_id: str, now: float) -> Account:
    """The account as the database has it, with the ledger's newest seq it already includes."""
    with transaction(engine) as (cur, sql):
        cur.execute(
            sql(
                "SELECT w.plan, w.custom_allotment, w.anchor_date, b.period_start, b.allotment, "
                "b.allotment_remaining, b.topups_remaining, w.pending_plan, "
                "w.pending_custom_allotment, w.pending_from FROM workspaces w "
                "JOIN balances b ON b.workspace_id = w.id WHERE w.id = ?"
            ),
            (workspace_id,),
        )
        row = cur.fetchone()
        cur.execute("SELECT COALESCE(MAX(seq), 0) FROM ledger")
        seq = int(cur.fetchone()[0])
    if row is None:
        raise ServiceUnavailable(f"workspace {workspace_id} has no balance row")
    plan, custom, anchor, period_start, allotment, allot_rem, top_rem, p_plan, p_custom, p_from = row
    _, period_end = period_of(anchor, now)
    return Account(
        workspace_id, plan, custom, anchor, period_start, period_end,
        int(allotment), int(allot_rem), int(top_rem), seq, pending=(p_plan, p_custom, p_from),
    )


def poll(engine: Engine, watermark: int, loaded: list[str], owner: str,
         lease_until_ms: int) -> tuple[list[Any], list[Any]]:
    """Renew the lease; the non-reply ledger rows past `watermark`, and the plans of `loaded`."""
    with transaction(engine) as (cur, sql):
        cur.execute(
            sql("UPDATE leases SET expires_ms = ? WHERE name = ? AND owner = ?"),
            (lease_until_ms, LEASE, owner),
        )
        cur.execute(
            sql(
                "SELECT seq, request_id, workspace_id, kind, allotment_delta, topup_delta, "
                "period_start FROM ledger WHERE seq > ? AND kind <> 'reply' ORDER BY seq"
            ),
            (watermark,),
        )
        rows = cur.fetchall()
        plans = _plans(cur, sql, loaded)
    return rows, plans


def _plans(cur: Cursor, sql: Sql, loaded: list[str]) -> list[Any]:
    if not loaded:
        return []
    out: list[Any] = []
    for i in range(0, len(loaded), 500):
        chunk = loaded[i : i + 500]
        cur.execute(
            sql(
                "SELECT id, plan, custom_allotment, pending_plan, pending_custom_allotment, "
                "pending_from FROM workspaces WHERE id IN "
                f"({', '.join('?' for _ in chunk)})"
            ),
            tuple(chunk),
        )
        out.extend(cur.fetchall())
    return out
