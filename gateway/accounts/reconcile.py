"""Reconcile: recompute every workspace's balance from the ledger alone and compare.

The ledger is the truth; the `balances` row is its projection. From the
ledger, per workspace, with P its latest allotment period:

    allotment            = sum(allotment_delta) of kind `allotment` in P
    allotment_remaining  = sum(allotment_delta) in P            (renewal minus charges)
    topups_remaining     = sum(topup_delta)                     (every period)

The store holds `remaining - holds`: the `sql` meter moves the balance at
reserve, so its hold rows are added back before comparing (the embedded
meter keeps holds in memory and writes the balance at settle, so its rows
compare directly). A hold from an earlier period took allotment that has
lapsed, so only P's holds count for the allotment.

`SqlBalances` checks and repairs the `balances` rows in one transaction per
workspace that holds the row's lock, so it is safe next to running `sql`
meters. The seam for other stores (Redis) is `BalanceStore`: compare the
same `Buckets` from `ledger_buckets` with the live store, and reseed it.

Spend caps: the `sql` meter's `cap_usage` rows of the current period are
compared with the ledger's charges of each subject plus its holds in flight
(field `cap_usage <subject>`), and rewritten by `--fix`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from sqlalchemy import Engine

from gateway.accounts.spend_caps import charged
from gateway.clock import Clock, now_ms
from gateway.metering.memory_accounts import LEASE
from gateway.storage.database import Cursor, Sql, transaction

_LEDGER = """
WITH p AS (
  SELECT COALESCE(MAX(period_start), ?) AS ps FROM ledger
  WHERE workspace_id = ? AND kind = 'allotment'
)
SELECT p.ps,
  (SELECT COALESCE(SUM(allotment_delta), 0) FROM ledger
     WHERE workspace_id = ? AND kind = 'allotment' AND period_start = p.ps),
  (SELECT COALESCE(SUM(allotment_delta), 0) FROM ledger
     WHERE workspace_id = ? AND period_start = p.ps),
  (SELECT COALESCE(SUM(topup_delta), 0) FROM ledger WHERE workspace_id = ?),
  (SELECT COALESCE(SUM(from_allotment), 0) FROM holds
     WHERE workspace_id = ? AND period_start = p.ps),
  (SELECT COALESCE(SUM(from_topups), 0) FROM holds WHERE workspace_id = ?)
FROM p
"""


class ReconcileError(RuntimeError):
    """Reconciling cannot be done safely now (a running embedded meter owns the balances)."""


@dataclass(frozen=True, slots=True)
class Buckets:
    period_start: str
    allotment: int
    allotment_remaining: int
    topups_remaining: int


@dataclass(frozen=True, slots=True)
class Difference:
    field: str
    ledger: int | str
    store: int | str


@dataclass(slots=True)
class Report:
    """One workspace: what the ledger says, what the store holds (holds added back)."""

    workspace_id: str
    ledger: Buckets
    store: Buckets
    holds_allotment: int = 0
    holds_topups: int = 0
    differences: list[Difference] = field(default_factory=list)
    fixed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class BalanceStore(Protocol):
    """A live balance store: `balances` rows here; a Redis meter provides its own."""

    def workspaces(self) -> list[str]: ...

    def reconcile(self, workspace_id: str, *, fix: bool) -> Report:
        """Compare the store with `ledger_buckets`; with `fix`, rewrite it from the ledger."""
        ...


def ledger_buckets(cur: Cursor, sql: Sql, workspace_id: str,
                   fallback_period: str) -> tuple[Buckets, int, int]:
    """The balance from the ledger alone, and the `sql` meter's holds (allotment, top-ups).

    One statement, so PostgreSQL reads the ledger and the holds in one snapshot
    (a settle moves a hold into the ledger atomically).
    """
    ws = workspace_id
    cur.execute(sql(_LEDGER), (fallback_period, ws, ws, ws, ws, ws, ws))
    period, allotment, allot_rem, topups, holds_allot, holds_top = cur.fetchone()
    return (Buckets(str(period), int(allotment), int(allot_rem), int(topups)),
            int(holds_allot), int(holds_top))


def compare(ledger: Buckets, store: Buckets) -> list[Difference]:
    return [
        Difference(name, getattr(ledger, name), getattr(store, name))
        for name in ("period_start", "allotment", "allotment_remaining", "topups_remaining")
        if getattr(ledger, name) != getattr(store, name)
    ]


class SqlBalances:
    """The `balances` rows (embedded and `sql` meters)."""

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock
        self._for_update = "" if engine.dialect.name == "sqlite" else " FOR UPDATE"

    def workspaces(self) -> list[str]:
        with transaction(self._engine) as (cur, _):
            cur.execute("SELECT workspace_id FROM balances ORDER BY workspace_id")
            return [str(r[0]) for r in cur.fetchall()]

    def embedded_owner(self) -> str | None:
        """The live process whose embedded meter owns these balances in memory, if any."""
        with transaction(self._engine) as (cur, sql):
            cur.execute(sql("SELECT owner, expires_ms FROM leases WHERE name = ?"), (LEASE,))
            row = cur.fetchone()
        if row is not None and int(row[1]) > now_ms(self._clock):
            return str(row[0])
        return None

    def reconcile(self, workspace_id: str, *, fix: bool) -> Report:
        with transaction(self._engine) as (cur, sql):
            # The row lock first: reserves, voids and grants wait; settles do not move the row.
            cur.execute(
                sql("SELECT period_start, allotment, allotment_remaining, topups_remaining "
                    "FROM balances WHERE workspace_id = ?" + self._for_update),
                (workspace_id,),
            )
            row = cur.fetchone()
            if row is None:
                raise ReconcileError(f"workspace {workspace_id} has no balance row")
            ledger, holds_allot, holds_top = ledger_buckets(cur, sql, workspace_id, str(row[0]))
            allot_rem = int(row[2]) + (holds_allot if row[0] == ledger.period_start else 0)
            store = Buckets(str(row[0]), int(row[1]), allot_rem, int(row[3]) + holds_top)
            report = Report(workspace_id, ledger, store, holds_allot, holds_top,
                            compare(ledger, store))
            caps = _cap_differences(cur, sql, workspace_id, ledger.period_start)
            report.differences += [d for d, _ in caps]
            if fix and report.differences:
                for diff, _ in caps:  # spend caps: the sql meter's usage rows, from the ledger
                    cur.execute(sql("UPDATE cap_usage SET used = ? WHERE workspace_id = ? "
                                    "AND subject = ? AND period_start = ?"),
                                (diff.ledger, workspace_id, diff.field.partition(" ")[2],
                                 ledger.period_start))
                cur.execute(
                    sql("UPDATE balances SET period_start = ?, allotment = ?, "
                        "allotment_remaining = ?, topups_remaining = ? WHERE workspace_id = ?"),
                    (ledger.period_start, ledger.allotment,
                     ledger.allotment_remaining - holds_allot,
                     ledger.topups_remaining - holds_top, workspace_id),
                )
                report.fixed = True
        return report


def _cap_differences(cur: Cursor, sql: Sql, workspace_id: str,
                     period: str) -> list[tuple[Difference, str]]:
    """Spend caps (`sql` meter): each `cap_usage` row of the period against the ledger's
    charges of its subject plus the holds in flight that count against it."""
    cur.execute(sql("SELECT subject, used FROM cap_usage WHERE workspace_id = ? "
                    "AND period_start = ?"), (workspace_id, period))
    rows = [(str(r[0]), int(r[1])) for r in cur.fetchall()]
    if not rows:
        return []
    cur.execute(sql("SELECT caps, credits FROM holds WHERE workspace_id = ? AND period_start = ? "
                    "AND caps IS NOT NULL"), (workspace_id, period))
    held: dict[str, int] = {}
    for caps, credits in cur.fetchall():
        for subject in str(caps).split(","):
            held[subject] = held.get(subject, 0) + int(credits)
    out = []
    for subject, used in rows:
        expected = charged(cur, sql, workspace_id, subject, period) + held.get(subject, 0)
        if expected != used:
            out.append((Difference(f"cap_usage {subject}", expected, used), subject))
    return out


def reconcile_all(store: BalanceStore, *, fix: bool,
                  workspace_id: str | None = None) -> list[Report]:
    """Every workspace (or one), in its own transaction."""
    ids = [workspace_id] if workspace_id else store.workspaces()
    return [store.reconcile(ws, fix=fix) for ws in ids]


def rows(reports: list[Report]) -> list[dict[str, Any]]:
    """One row per difference, for a table."""
    return [
        {"workspace_id": r.workspace_id, "field": d.field, "ledger": d.ledger, "store": d.store,
         "fixed": r.fixed}
        for r in reports for d in r.differences
    ]
