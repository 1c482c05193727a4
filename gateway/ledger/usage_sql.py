"""The SQL of one usage query: where each instant of the window is read from (whole hours
from a rollup, the part of an hour a local midnight cuts on a quarter moved to the next
day, the rest from the ledger), and the one statement that sums, orders and limits the
groups (`ledger/usage.py` describes the whole read).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.storage.database import ROLLUP_BUCKET_MS

if TYPE_CHECKING:
    from gateway.ledger.usage import UsageQuery

HOUR_MS = ROLLUP_BUCKET_MS
QUARTER_MS = 900_000
# group name -> ledger column (the rollups use the same names)
COLUMNS = {"agent": "agent_id", "model": "model", "billing_mode": "billing_mode",
           "conversation": "conversation_id", "key": "key_id",
           # rows written before fallbacks (migration 0010) asked for the model that answered
           "requested_model": "COALESCE(requested_model, model)",
           # the API a reply came through; rows older than migration 0009 came through chat
           "dialect": "COALESCE(api, 'chat')"}
GROUPS = ("day", *COLUMNS)
# table, the groups it holds (both filter by agent and model; a query reads the first that fits,
# and a grouping neither holds (key, requested_model, dialect) reads the ledger),
# and whether its rows are summed per group before the union: the hourly rollup has many rows per
# group (hours x attributions), a conversation a row or two (summing twice costs more than it saves).
_ROLLUPS = (
    ("usage_rollup", frozenset({"day", "agent", "model", "billing_mode"}), True),
    ("usage_conversations", frozenset({"day", "agent", "model", "billing_mode", "conversation"}),
     False),
)
# SQLite allows 500 terms in a compound SELECT: past this many hours to read from the ledger
# (midnights off the quarter hour: historic offsets), the whole window is read from it.
_MAX_LEDGER_RANGES = 100


def _rollup_for(q: UsageQuery) -> str | None:
    """The smallest rollup table that holds the grouping; None: only the ledger does (key,
    requested_model, dialect: read from the ledger's (workspace_id, created_ms, seq) index)."""
    return next((table for table, holds, _ in _ROLLUPS if set(q.group_by) <= holds), None)


@dataclass(slots=True)
class Plan:
    """Where each instant of the window is read from."""

    table: str | None = None
    hours: tuple[int, int] = (0, 0)  # whole UTC hours read from `table`
    odd: tuple[int, ...] = ()  # hours among them cut off the quarter hour: read from the ledger
    split: dict[int, int] = field(default_factory=dict)  # hour cut on a quarter -> quarter (1, 2, 3)
    ledger: tuple[tuple[int, int], ...] = ()  # [from, to) read from the ledger


def plan(q: UsageQuery) -> Plan:
    w = q.window
    lo = -(-w.start_ms // HOUR_MS) * HOUR_MS  # the first whole hour
    hi = w.end_ms // HOUR_MS * HOUR_MS
    table = _rollup_for(q)
    if lo >= hi or table is None:
        return Plan(ledger=((w.start_ms, w.end_ms),))
    split: dict[int, int] = {}
    odd: list[int] = []
    cuts = w.cuts if "day" in q.group_by else ()
    for cut in (c for c in cuts if lo <= c < hi and c % HOUR_MS):
        hour = cut - cut % HOUR_MS
        if cut % QUARTER_MS:
            odd.append(hour)
        else:
            split[hour] = (cut - hour) // QUARTER_MS
    if len(odd) > _MAX_LEDGER_RANGES:
        return Plan(ledger=((w.start_ms, w.end_ms),))
    edges = [(w.start_ms, lo), (hi, w.end_ms)]
    return Plan(table=table, hours=(lo, hi), odd=tuple(odd), split=split,
                 ledger=tuple((a, b) for a, b in [*edges, *((h, h + HOUR_MS) for h in odd)] if a < b))


class Statement:
    """The SQL of one usage query, built branch by branch, and its parameters in order."""

    def __init__(self, q: UsageQuery, postgres: bool) -> None:
        self.q = q
        self.dims = [COLUMNS[g] for g in q.group_by if g != "day"]
        self.by_day = "day" in q.group_by
        # Ties are ordered by key, byte-wise on both databases.
        self.collate = ' COLLATE "C"' if postgres else ""
        self.branches: list[str] = []
        self.params: list[Any] = []
        self.filters, self.filter_params = "", []
        if q.agent is not None:
            self.filters += " AND agent_id = ?"
            self.filter_params.append(q.agent)
        if q.model is not None:
            self.filters += " AND model = ?"
            self.filter_params.append(q.model)

    def _keys(self, moment: str, dims: list[str]) -> str:
        """The select list's keys in `group_by` order: `k0, k1...` (a local day number, or a column)."""
        out: list[str] = []
        dim = iter(dims)
        for i, g in enumerate(self.q.group_by):
            if g == "day":
                day_sql, day_params = self.q.window.local_day_sql(moment)
                out.append(f"{day_sql} AS k{i}")
                self.params += day_params
            else:
                out.append(f"{next(dim)} AS k{i}")
        return "".join(f"{k}, " for k in out)

    def rollup(self, table: str, hours: tuple[int, int], odd: Sequence[int]) -> None:
        """Whole hours, summed per group first where a group has many rows (the union then carries
        a few: SQLite reads a compound subquery's rows one by one, slowly)."""
        keys = self._keys("bucket_ms", self.dims)
        where = "workspace_id = ? AND bucket_ms >= ? AND bucket_ms < ?"
        self.params += [self.q.workspace_id, *hours]
        if odd:
            where += f" AND bucket_ms NOT IN ({', '.join('?' for _ in odd)})"
            self.params += odd
        if next(presum for name, _, presum in _ROLLUPS if name == table):
            grouped = f" GROUP BY {', '.join(f'k{i}' for i in range(len(self.q.group_by)))}" \
                if self.q.group_by else ""
            self.branches.append(f"SELECT {keys}SUM(credits) AS c, SUM(replies) AS r, SUM(entries) AS n "
                                 f"FROM {table} WHERE {where}{self.filters}{grouped}")
        else:
            self.branches.append(f"SELECT {keys}credits AS c, replies AS r, entries AS n "
                                 f"FROM {table} WHERE {where}{self.filters}")
        self.params += self.filter_params

    def moved(self, table: str, split: dict[int, int]) -> None:
        """Hours a local midnight cuts on a quarter: the part after it leaves the hour's day for the next."""
        for quarter in sorted(set(split.values())):
            hours = sorted(h for h, q in split.items() if q == quarter)
            minutes = quarter * 15
            for moment, sign in (("bucket_ms", -1), (f"(bucket_ms + {HOUR_MS - 1})", 1)):
                keys = self._keys(moment, self.dims)
                after = ", ".join(f"{'' if sign > 0 else '-'}({m} - {m}_{minutes}) AS {a}"
                                  for m, a in (("credits", "c"), ("replies", "r"), ("entries", "n")))
                self.branches.append(
                    f"SELECT {keys}{after} FROM {table} WHERE workspace_id = ? "
                    f"AND bucket_ms IN ({', '.join('?' for _ in hours)}){self.filters}")
                self.params += [self.q.workspace_id, *hours, *self.filter_params]

    def ledger(self, start: int, end: int) -> None:
        keys = self._keys("created_ms", [f"COALESCE({d}, '')" for d in self.dims])
        self.branches.append(
            f"SELECT {keys}credits AS c, replies AS r, 1 AS n FROM ledger WHERE workspace_id = ? "
            f"AND created_ms >= ? AND created_ms < ? AND kind = 'reply'{self.filters}")
        self.params += [self.q.workspace_id, start, end, *self.filter_params]

    def statement(self) -> tuple[str, list[Any]]:
        """Groups (keys, sums, part 0) in order, then one row (part 1) of every group's sums and count.

        The sums are cast: PostgreSQL's SUM(bigint) is a numeric."""
        union = " UNION ALL ".join(self.branches)
        sums = ", ".join(f"CAST(SUM({m}) AS BIGINT) AS {m}" for m in ("c", "r", "n"))
        if not self.q.group_by:
            return f"SELECT {sums} FROM ({union}) u", self.params
        keys = [f"k{i}" for i in range(len(self.q.group_by))]
        text_keys = [f"k{i}{'' if g == 'day' else self.collate}" for i, g in enumerate(self.q.group_by)]
        order = ", ".join(["c DESC", "r DESC", *text_keys])
        shown = f"SELECT {', '.join(keys)}, c, r, n, 0 AS part, 1 AS cnt FROM g"
        params = list(self.params)
        if self.q.limit is not None:  # those with the most credits (shown days first, below)
            shown = f"SELECT * FROM ({shown} ORDER BY {order} LIMIT ?) t"
            params.append(self.q.limit)
        days = [f"k{self.q.group_by.index('day')}"] if self.by_day else []
        outputs = [k if self.q.group_by[i] == "day" else f"NULLIF({k}, '')" for i, k in enumerate(keys)]
        return (
            f"WITH g AS (SELECT {', '.join(keys)}, {sums} FROM ({union}) u "
            f"GROUP BY {', '.join(keys)} HAVING SUM(n) <> 0) "
            f"SELECT {', '.join(outputs)}, c, r, n, cnt FROM ("
            f"{shown} UNION ALL SELECT {', '.join('NULL' for _ in keys)}, "
            f"CAST(SUM(c) AS BIGINT), CAST(SUM(r) AS BIGINT), CAST(SUM(n) AS BIGINT), 1, COUNT(*) FROM g"
            f") x ORDER BY {', '.join(['part', *days, order])}",
            params,
        )
