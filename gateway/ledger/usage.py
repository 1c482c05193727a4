"""Reading usage: reply credits over a window, grouped by day, agent, model, conversation or billing mode.

Whole UTC hours are read from a rollup that `database.apply_entry` writes in
the same transaction as each reply entry, so it always equals the ledger:
`usage_rollup` (hour, agent, model, billing mode) when the grouping has no
conversation, else `usage_conversations` (the same with the conversation).
Local days are computed in SQL from the zone's offsets; an hour that a local
midnight cuts (zones at :15/:30/:45 from UTC) counts for the day it starts in,
and the part after the midnight (the hour's sums minus its first 15, 30 or 45
minutes) moves to the next day. What no rollup answers is read from the
ledger through its (workspace_id, created_ms, seq) index: the window's edges
that are not on the hour, and hours cut off the quarter hour (historic
offsets only).

All of it is one statement: the database sums the groups, orders them (days in
order, otherwise the most credits first), keeps the `limit` with the most
credits, and adds one row with the sums and count of every group, so a query
costs one round trip and Python only turns rows into dicts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from gateway.clock import Clock, now_ms
from gateway.errors import InvalidRequest
from gateway.ledger.window import Window, zone
from gateway.storage.database import ROLLUP_BUCKET_MS, snapshot

DAY_MS = 86_400_000
HOUR_MS = ROLLUP_BUCKET_MS
QUARTER_MS = 900_000
# group name -> ledger column (the rollups use the same names)
COLUMNS = {"agent": "agent_id", "model": "model", "billing_mode": "billing_mode",
           "conversation": "conversation_id"}
GROUPS = ("day", *COLUMNS)
# table, the groups it holds (both filter by agent and model; a query reads the first that fits),
# and whether its rows are summed per group before the union: the hourly rollup has many rows per
# group (hours x attributions), a conversation a row or two (summing twice costs more than it saves).
_ROLLUPS = (
    ("usage_rollup", frozenset({"day", "agent", "model", "billing_mode"}), True),
    ("usage_conversations", frozenset(GROUPS), False),
)
# Conversations are the one unbounded grouping: by default a response holds the
# 1,000 with the most credits, and `omitted` sums the rest.
CONVERSATION_LIMIT = 1000
MAX_LIMIT = 100_000
# SQLite allows 500 terms in a compound SELECT: past this many hours to read from the ledger
# (midnights off the quarter hour: historic offsets), the whole window is read from it.
_MAX_LEDGER_RANGES = 100


def parse_group_by(raw: str | None) -> tuple[str, ...]:
    """`day`, `agent,day`, ... (comma-separated, at most three); default `day`."""
    names = tuple(dict.fromkeys(p.strip() for p in (raw or "day").split(",") if p.strip()))
    bad = [n for n in names if n not in GROUPS]
    if bad or not names or len(names) > 3:
        raise InvalidRequest(
            f"`group_by` takes up to three of {', '.join(GROUPS)}, comma-separated.", param="group_by"
        )
    return names


def parse_limit(raw: str | None, group_by: Sequence[str]) -> int | None:
    """At most this many groups (those with the most credits); default: all, or 1,000 conversations."""
    if raw is None or raw == "":
        return CONVERSATION_LIMIT if "conversation" in group_by else None
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidRequest(f"`limit` must be an integer from 1 to {MAX_LIMIT:,}.", param="limit")
    return int(raw)


@dataclass(frozen=True, slots=True)
class UsageQuery:
    workspace_id: str
    window: Window
    group_by: tuple[str, ...] = ("day",)
    agent: str | None = None
    model: str | None = None
    limit: int | None = None  # at most this many groups, the most credits first; None: all


@dataclass(frozen=True, slots=True)
class Totals:
    credits: int = 0
    replies: int = 0
    requests: int = 0

    def as_json(self) -> dict[str, int]:
        return {"credits": self.credits, "replies": self.replies, "requests": self.requests}


@dataclass(frozen=True, slots=True)
class UsageReport:
    query: UsageQuery
    data: list[dict[str, Any]]  # the groups returned, in order: group names, credits, replies, requests
    total: Totals  # of every group, returned or not
    group_count: int  # every group, returned or not

    def rows(self) -> list[dict[str, Any]]:
        """One dict per group: days in order, otherwise the most credits first."""
        return self.data

    @property
    def groups(self) -> dict[tuple[str | None, ...], Totals]:
        """The groups returned, by key (a tuple of the `group_by` values)."""
        names = self.query.group_by
        return {tuple(row[n] for n in names): Totals(row["credits"], row["replies"], row["requests"])
                for row in self.data}

    @property
    def omitted(self) -> tuple[int, Totals]:
        """How many groups the limit left out, and their sums."""
        left = self.group_count - len(self.data)
        if not left:
            return 0, Totals()
        shown = [sum(row[m] for row in self.data) for m in ("credits", "replies", "requests")]
        return left, Totals(self.total.credits - shown[0], self.total.replies - shown[1],
                            self.total.requests - shown[2])

    def as_json(self) -> dict[str, Any]:
        q = self.query
        groups, sums = self.omitted
        return {
            "object": "usage", "workspace_id": q.workspace_id, **q.window.describe(),
            "group_by": list(q.group_by), "agent": q.agent, "model": q.model, "limit": q.limit,
            "data": self.data, "total": self.total.as_json(),
            "omitted": {"groups": groups, **sums.as_json()},
        }


def _rollup_for(q: UsageQuery) -> str:
    """The smallest rollup table that holds the grouping."""
    return next(table for table, holds, _ in _ROLLUPS if set(q.group_by) <= holds)


@dataclass(slots=True)
class _Plan:
    """Where each instant of the window is read from."""

    table: str | None = None
    hours: tuple[int, int] = (0, 0)  # whole UTC hours read from `table`
    odd: tuple[int, ...] = ()  # hours among them cut off the quarter hour: read from the ledger
    split: dict[int, int] = field(default_factory=dict)  # hour cut on a quarter -> quarter (1, 2, 3)
    ledger: tuple[tuple[int, int], ...] = ()  # [from, to) read from the ledger


def _plan(q: UsageQuery) -> _Plan:
    w = q.window
    lo = -(-w.start_ms // HOUR_MS) * HOUR_MS  # the first whole hour
    hi = w.end_ms // HOUR_MS * HOUR_MS
    if lo >= hi:
        return _Plan(ledger=((w.start_ms, w.end_ms),))
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
        return _Plan(ledger=((w.start_ms, w.end_ms),))
    edges = [(w.start_ms, lo), (hi, w.end_ms)]
    return _Plan(table=_rollup_for(q), hours=(lo, hi), odd=tuple(odd), split=split,
                 ledger=tuple((a, b) for a, b in [*edges, *((h, h + HOUR_MS) for h in odd)] if a < b))


class _Statement:
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


def _dicts(names: tuple[str, ...], rows: list[Any]) -> list[dict[str, Any]]:
    """Rows (keys in `names` order, credits, replies, requests, ...) as dicts; a dict display
    per arity is about twice as fast as dict(zip()) over thousands of groups."""
    if len(names) == 1:
        (a,) = names
        return [{a: x, "credits": c, "replies": r, "requests": n} for x, c, r, n, _ in rows]
    if len(names) == 2:
        a, b = names
        return [{a: x, b: y, "credits": c, "replies": r, "requests": n} for x, y, c, r, n, _ in rows]
    fields = (*names, "credits", "replies", "requests")
    return [dict(zip(fields, row, strict=False)) for row in rows]


def _report(q: UsageQuery, rows: list[Any]) -> UsageReport:
    if not q.group_by:
        credits, replies, requests = (int(v or 0) for v in rows[0])
        total = Totals(credits, replies, requests)
        return UsageReport(q, [total.as_json()] if requests else [], total, int(bool(requests)))
    *groups, (*_, credits, replies, requests, count) = rows
    data = _dicts(q.group_by, groups)
    if "day" in q.group_by:
        labels: dict[int, str] = {}
        for item in data:
            number = item["day"]
            label = labels.get(number)
            if label is None:
                label = labels[number] = Window.day_label(number)
            item["day"] = label
    return UsageReport(q, data, Totals(int(credits or 0), int(replies or 0), int(requests or 0)),
                       int(count))


class Usage:
    def __init__(self, engine: Engine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock
        self._postgres = engine.dialect.name == "postgresql"

    # --- the query -------------------------------------------------------

    def query(self, q: UsageQuery) -> UsageReport:
        """Credits, replies and requests (entries) per group; sums equal the ledger's."""
        plan = _plan(q)
        st = _Statement(q, self._postgres)
        if plan.table is not None:
            st.rollup(plan.table, plan.hours, plan.odd)
            if plan.split:
                st.moved(plan.table, plan.split)
        for start, end in plan.ledger:
            st.ledger(start, end)
        text, params = st.statement()
        with snapshot(self._engine) as (cur, sql):
            cur.execute(sql(text), params)
            rows = cur.fetchall()
        return _report(q, rows)

    async def run(self, q: UsageQuery) -> UsageReport:
        return await asyncio.to_thread(self.query, q)

    # --- the balance's 30-day figure ---------------------------------------

    def credits_since(self, workspace_id: str, since_ms: int, until_ms: int,
                      agent: str | None = None) -> int:
        q = UsageQuery(workspace_id, Window(since_ms, until_ms, zone("UTC")), group_by=(),
                       agent=agent)
        return self.query(q).total.credits

    async def credits_used_30d(self, workspace_id: str, agent: str | None = None) -> int:
        """Settled reply credits in the trailing 30 days (UTC), of one agent when given."""
        now = now_ms(self._clock)
        return await asyncio.to_thread(self.credits_since, workspace_id, now - 30 * DAY_MS,
                                       now + 1, agent)
