"""Reading usage: reply credits over a window, grouped by day, agent, model, conversation or billing mode.

Whole UTC hours are read from `usage_rollup`, which `database.apply_entry`
writes in the same transaction as each reply entry, so it always equals the
ledger; local days are computed in SQL from the zone's offsets, and an hour
that a local midnight cuts (zones at :15/:30/:45 from UTC) is split with the
rollup's quarter-hour sums. What the rollup cannot answer is read from the
ledger through its (workspace_id, created_ms, seq) index: a window's edges
that are not on the hour, and midnights off the quarter hour (historic
offsets only). Grouping by conversation reads `usage_conversations` (hour,
conversation, agent) the same way; with a model filter it reads the ledger.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from gateway.clock import Clock, now_ms
from gateway.database import ROLLUP_BUCKET_MS, Cursor, Sql, snapshot
from gateway.errors import InvalidRequest
from gateway.ledger.window import Window, zone

DAY_MS = 86_400_000
HOUR_MS = ROLLUP_BUCKET_MS
QUARTER_MS = 900_000
_METRICS = ("credits", "replies", "entries")
# group name -> ledger column (the rollup uses the same names)
COLUMNS = {"agent": "agent_id", "model": "model", "billing_mode": "billing_mode",
           "conversation": "conversation_id"}
GROUPS = ("day", *COLUMNS)
_ROLLUPS = (  # table, the groups it holds, whether it can filter by model
    ("usage_rollup", frozenset({"day", "agent", "model", "billing_mode"}), True),
    ("usage_conversations", frozenset({"day", "conversation", "agent"}), False),
)
_PARTS_PER_QUERY = 200  # SQLite allows 500 terms in a compound SELECT


def parse_group_by(raw: str | None) -> tuple[str, ...]:
    """`day`, `agent,day`, ... (comma-separated, at most three); default `day`."""
    names = tuple(dict.fromkeys(p.strip() for p in (raw or "day").split(",") if p.strip()))
    bad = [n for n in names if n not in GROUPS]
    if bad or not names or len(names) > 3:
        raise InvalidRequest(
            f"`group_by` takes up to three of {', '.join(GROUPS)}, comma-separated.", param="group_by"
        )
    return names


@dataclass(frozen=True, slots=True)
class UsageQuery:
    workspace_id: str
    window: Window
    group_by: tuple[str, ...] = ("day",)
    agent: str | None = None
    model: str | None = None


@dataclass(slots=True)
class Totals:
    credits: int = 0
    replies: int = 0
    requests: int = 0

    def add(self, credits: Any, replies: Any, requests: Any) -> None:
        self.credits += int(credits or 0)
        self.replies += int(replies or 0)
        self.requests += int(requests or 0)


@dataclass(frozen=True, slots=True)
class UsageReport:
    query: UsageQuery
    groups: dict[tuple[str | None, ...], Totals]

    @property
    def total(self) -> Totals:
        out = Totals()
        for t in self.groups.values():
            out.add(t.credits, t.replies, t.requests)
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One dict per group: days in order, otherwise the most credits first."""
        names = self.query.group_by
        ordered = sorted(self.groups.items(), key=lambda kv: (
            kv[0][names.index("day")] or "" if "day" in names else "", -kv[1].credits,
            -kv[1].replies, tuple(str(k) for k in kv[0])))
        return [{**dict(zip(names, key, strict=True)), "credits": t.credits, "replies": t.replies,
                 "requests": t.requests} for key, t in ordered]

    def as_json(self) -> dict[str, Any]:
        q = self.query
        total = self.total
        return {
            "object": "usage", "workspace_id": q.workspace_id, **q.window.describe(),
            "group_by": list(q.group_by), "agent": q.agent, "model": q.model,
            "data": self.rows(),
            "total": {"credits": total.credits, "replies": total.replies, "requests": total.requests},
        }


def _rollup_for(q: UsageQuery) -> str | None:
    """The rollup table that answers `q`, if one does."""
    for table, holds, by_model in _ROLLUPS:
        if set(q.group_by) <= holds and (by_model or q.model is None):
            return table
    return None


def _filters(q: UsageQuery) -> tuple[str, list[Any]]:
    where, params = "", []
    if q.agent is not None:
        where += " AND agent_id = ?"
        params.append(q.agent)
    if q.model is not None:
        where += " AND model = ?"
        params.append(q.model)
    return where, params


def _split(lo: int, hi: int, cuts: Sequence[int]) -> Iterable[tuple[int, int]]:
    """[lo, hi) cut at every cut point inside it."""
    for cut in cuts:
        if lo < cut < hi:
            yield lo, cut
            lo = cut
    if lo < hi:
        yield lo, hi


class Usage:
    def __init__(self, engine: Engine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock

    # --- the query -------------------------------------------------------

    def query(self, q: UsageQuery) -> UsageReport:
        """Credits, replies and requests (entries) per group; sums equal the ledger's."""
        w = q.window
        by_day = "day" in q.group_by
        cuts = w.cuts if by_day else ()
        groups: dict[tuple[str | None, ...], Totals] = {}
        raw: list[tuple[int, int]] = []
        lo = -(-w.start_ms // HOUR_MS) * HOUR_MS  # the first whole hour
        hi = w.end_ms // HOUR_MS * HOUR_MS
        with snapshot(self._engine) as (cur, sql):
            table = _rollup_for(q)
            if table and lo < hi:
                split: dict[int, int] = {}  # an hour a midnight cuts on a quarter -> that quarter
                odd: set[int] = set()  # cut elsewhere (historic offsets): read from the ledger
                for cut in (c for c in cuts if lo <= c < hi and c % HOUR_MS):
                    hour = cut - cut % HOUR_MS
                    if cut % QUARTER_MS:
                        odd.add(hour)
                    else:
                        split[hour] = (cut - hour) // QUARTER_MS
                raw += [(w.start_ms, lo), (hi, w.end_ms)] + [(h, h + HOUR_MS) for h in sorted(odd)]
                self._from_rollup(cur, sql, q, table, (lo, hi), split, odd, groups)
            else:
                raw.append((w.start_ms, w.end_ms))
            parts = [part for a, b in raw for part in _split(a, b, cuts)]
            for i in range(0, len(parts), _PARTS_PER_QUERY):
                self._from_ledger(cur, sql, q, parts[i:i + _PARTS_PER_QUERY], groups)
        # Moving the end of cut hours can leave a group with nothing in it.
        return UsageReport(q, {k: t for k, t in groups.items() if t.requests})

    def _from_rollup(self, cur: Cursor, sql: Sql, q: UsageQuery, table: str, hours: tuple[int, int],
                     split: dict[int, int], odd: set[int],
                     groups: dict[tuple[str | None, ...], Totals]) -> None:
        """Whole hours from the rollup, local days computed in SQL from the zone's offsets.

        An hour cut by a local midnight on a quarter hour first counts whole for the
        day it starts in; then the part after the midnight (its total minus the
        rollup's sum over the first 15, 30 or 45 minutes) moves to the next day.
        """
        dims = [COLUMNS[g] for g in q.group_by if g != "day"]
        filters, filter_params = _filters(q)
        where = "workspace_id = ? AND bucket_ms >= ? AND bucket_ms < ?" + filters
        params = [q.workspace_id, *hours, *filter_params]
        if odd:
            where += f" AND bucket_ms NOT IN ({', '.join('?' for _ in odd)})"
            params += sorted(odd)
        day_sql, day_params = q.window.local_day_sql("bucket_ms") if "day" in q.group_by else ("", [])
        keys = ([f"{day_sql} AS local_day"] if day_sql else []) + dims
        grouped = (["local_day"] if day_sql else []) + dims
        cur.execute(
            sql(f"SELECT {', '.join([*keys, 'SUM(credits)', 'SUM(replies)', 'SUM(entries)'])} "
                f"FROM {table} WHERE {where}" + (f" GROUP BY {', '.join(grouped)}" if grouped else "")),
            (*day_params, *params),
        )
        for row in cur.fetchall():
            values = dict(zip(grouped, row, strict=False))
            key = tuple(q.window.day_label(values["local_day"]) if g == "day"
                        else (values[COLUMNS[g]] or None) for g in q.group_by)
            groups.setdefault(key, Totals()).add(*row[len(keys):])
        if not split:
            return
        quarters = [f"SUM({m}_{n})" for n in (15, 30, 45) for m in _METRICS]
        cur.execute(
            sql(f"SELECT {', '.join(['bucket_ms', *dims, *(f'SUM({m})' for m in _METRICS), *quarters])} "
                f"FROM {table} WHERE workspace_id = ? AND bucket_ms IN ({', '.join('?' for _ in split)})"
                f"{filters} GROUP BY {', '.join(['bucket_ms', *dims])}"),
            (q.workspace_id, *sorted(split), *filter_params),
        )
        for row in cur.fetchall():
            hour, values = int(row[0]), dict(zip(dims, row[1:], strict=False))
            total = row[1 + len(dims):4 + len(dims)]
            early = row[1 + len(dims) + 3 * split[hour]:4 + len(dims) + 3 * split[hour]]
            after = [int(t or 0) - int(e or 0) for t, e in zip(total, early, strict=True)]
            for moment, sign in ((hour, -1), (hour + HOUR_MS - 1, 1)):
                day = q.window.day_of(moment)
                key = tuple(day if g == "day" else (values[COLUMNS[g]] or None) for g in q.group_by)
                groups.setdefault(key, Totals()).add(*(sign * v for v in after))

    def _from_ledger(self, cur: Cursor, sql: Sql, q: UsageQuery, parts: list[tuple[int, int]],
                     groups: dict[tuple[str | None, ...], Totals]) -> None:
        """Sums over each part (none spans a local midnight), in one round trip (UNION ALL)."""
        if not parts:
            return
        dims = [COLUMNS[g] for g in q.group_by if g != "day"]
        where, params = _filters(q)
        one = (f"SELECT {', '.join(['? AS part', *dims, 'SUM(credits)', 'SUM(replies)', 'COUNT(*)'])} "
               f"FROM ledger WHERE workspace_id = ? AND created_ms >= ? AND created_ms < ? "
               f"AND kind = 'reply'{where}" + (f" GROUP BY {', '.join(dims)}" if dims else ""))
        cur.execute(sql(" UNION ALL ".join([one] * len(parts))),
                    [v for i, (a, b) in enumerate(parts) for v in (i, q.workspace_id, a, b, *params)])
        by_day = "day" in q.group_by
        for row in cur.fetchall():
            if not row[len(dims) + 3]:
                continue  # an aggregate without GROUP BY over no rows
            values = dict(zip(dims, row[1:], strict=False))
            day = q.window.day_of(parts[int(row[0])][0]) if by_day else None
            key = tuple(day if g == "day" else (values[COLUMNS[g]] or None) for g in q.group_by)
            groups.setdefault(key, Totals()).add(*row[len(dims) + 1:])

    async def run(self, q: UsageQuery) -> UsageReport:
        return await asyncio.to_thread(self.query, q)

    # --- the balance's 30-day figure ---------------------------------------

    def credits_since(self, workspace_id: str, since_ms: int, until_ms: int) -> int:
        q = UsageQuery(workspace_id, Window(since_ms, until_ms, zone("UTC")), group_by=())
        return self.query(q).total.credits

    async def credits_used_30d(self, workspace_id: str) -> int:
        """Settled reply credits in the trailing 30 days (UTC)."""
        now = now_ms(self._clock)
        return await asyncio.to_thread(self.credits_since, workspace_id, now - 30 * DAY_MS, now + 1)
