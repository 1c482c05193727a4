"""Reading usage: reply credits over a window, grouped by day, agent, model, conversation,
billing mode, key or requested model.

Whole UTC hours are read from a rollup that `storage.database.apply_entry` writes in
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

This module holds the query, its report and the `Usage` service; the plan of
the window and the statement are built in `ledger/usage_sql.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from gateway.clock import Clock, now_ms
from gateway.errors import InvalidRequest
from gateway.ledger.usage_sql import GROUPS, Statement, plan
from gateway.ledger.window import Window, zone
from gateway.storage.database import snapshot

DAY_MS = 86_400_000
# Conversations are the one unbounded grouping: by default a response holds the
# 1,000 with the most credits, and `omitted` sums the rest.
CONVERSATION_LIMIT = 1000
MAX_LIMIT = 100_000


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
        where = plan(q)
        st = Statement(q, self._postgres)
        if where.table is not None:
            st.rollup(where.table, where.hours, where.odd)
            if where.split:
                st.moved(where.table, where.split)
        for start, end in where.ledger:
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
