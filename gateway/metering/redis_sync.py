"""What the Redis meter reads from SQL: workspace facts, seeds, and grants written to SQL directly.

SQL is the durable truth and Redis a projection of it. A workspace's balance
enters Redis as a *seed*: SQL's settled projection plus the request ids of
every grant and renewal it already contains, read in one snapshot, so a grant
is counted in Redis exactly once whether it arrived with the seed or later.
Grants the CLI writes straight to SQL (and the first renewal of a new
workspace) reach Redis through `poll`: every non-reply entry past its shard's
watermark, applied once per request id by the meter's `APPLY` script. The
watermark is per shard tag and lives on that shard (`bk:{sNN}:sync:seq`): a
shard that is down holds back only its own workspaces' grants, and a shard
that fails over to a replica lacking the last APPLYs also lacks the marks that
passed them, so those grants are read and applied again.

The watermark trails the newest seq by `lag` seconds: sequence numbers are
taken at insert and transactions commit in any order, so an entry can become
visible after a later one; rescanning the last seconds (marked entries are
skipped) catches it. The same rescan covers a grant committed while its
workspace was being seeded by another process.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import deque
from dataclasses import dataclass

from sqlalchemy import Engine

from gateway.errors import ServiceUnavailable
from gateway.metering.base import plan_at
from gateway.metering.redis_keys import shard_of
from gateway.periods import period_of
from gateway.storage.database import apply_entry, snapshot, transaction
from gateway.types import LedgerEntry

_FACTS = (
    "SELECT id, anchor_date, plan, custom_allotment, pending_plan, pending_custom_allotment, "
    "pending_from FROM workspaces WHERE id IN ({})"
)


@dataclass(frozen=True, slots=True)
class Facts:
    """What renewal needs to know about a workspace (cached; plans refreshed by `poll`)."""

    anchor: str
    plan: str
    custom: int | None
    pending: tuple[str | None, int | None, str | None]  # plan, custom allotment, from

    def plan_at(self, period_start: str) -> tuple[str, int | None]:
        return plan_at(self.plan, self.custom, *self.pending, period_start)

    def period_end(self, period: str, start: str, end: str) -> str:
        """The end of `period`, given (start, end) of the period now (usually the same one)."""
        if period == start:
            return end
        at = dt.datetime.fromisoformat(period).replace(tzinfo=dt.UTC).timestamp()
        return period_of(self.anchor, at)[1]


@dataclass(frozen=True, slots=True)
class Seed:
    period: str
    allotment: int
    allotment_remaining: int
    topups_remaining: int
    applied: list[str]  # request ids of the grants and renewals the figures include


@dataclass(frozen=True, slots=True)
class Grant:
    """A non-reply ledger row, as `poll` returns it."""

    seq: int
    request_id: str
    workspace_id: str
    kind: str
    allotment_delta: int
    topup_delta: int
    period_start: str | None


def _facts(row: tuple[object, ...]) -> tuple[str, Facts]:
    ws, anchor, plan, custom, p_plan, p_custom, p_from = row
    return str(ws), Facts(str(anchor), str(plan), _int_or_none(custom),
                          (_str_or_none(p_plan), _int_or_none(p_custom), _str_or_none(p_from)))


def _int_or_none(v: object) -> int | None:
    return None if v is None else int(str(v))


def _str_or_none(v: object) -> str | None:
    return None if v is None else str(v)


def load_facts(engine: Engine, workspace_id: str) -> Facts:
    with snapshot(engine) as (cur, sql):
        cur.execute(sql(_FACTS.format("?")), (workspace_id,))
        row = cur.fetchone()
    if row is None:
        raise ServiceUnavailable(f"workspace {workspace_id} has no balance row")
    return _facts(row)[1]


def load_seed(engine: Engine, workspace_id: str) -> Seed:
    """The settled balance and the grants it includes, from one snapshot."""
    with snapshot(engine) as (cur, sql):
        if engine.dialect.name == "postgresql":
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur.execute(
            sql("SELECT period_start, allotment, allotment_remaining, topups_remaining "
                "FROM balances WHERE workspace_id = ?"),
            (workspace_id,),
        )
        row = cur.fetchone()
        cur.execute(
            sql("SELECT request_id FROM ledger WHERE workspace_id = ? AND kind <> 'reply'"),
            (workspace_id,),
        )
        applied = [str(r[0]) for r in cur.fetchall()]
    if row is None:
        raise ServiceUnavailable(f"workspace {workspace_id} has no balance row")
    period, allotment, allot_rem, top_rem = row
    return Seed(str(period), int(allotment), int(allot_rem), int(top_rem), applied)


def in_ledger(engine: Engine, request_id: str) -> bool:
    with snapshot(engine) as (cur, sql):
        cur.execute(sql("SELECT 1 FROM ledger WHERE request_id = ?"), (request_id,))
        return cur.fetchone() is not None


def write_entry(engine: Engine, entry: LedgerEntry) -> bool:
    """A grant through the meter goes to SQL first (durable, exact answer), then to Redis."""
    with transaction(engine) as (cur, sql):
        return apply_entry(cur, sql, entry)


def _poll(engine: Engine, low: int, limit: int, loaded: list[str]
          ) -> tuple[list[Grant], int, dict[str, Facts]]:
    """Non-reply entries with seq > low (at most `limit`), the newest seq, and fresh facts."""
    with snapshot(engine) as (cur, sql):
        cur.execute(
            sql("SELECT seq, request_id, workspace_id, kind, allotment_delta, topup_delta, "
                "period_start FROM ledger WHERE seq > ? AND kind <> 'reply' ORDER BY seq LIMIT ?"),
            (low, limit),
        )
        grants = [Grant(int(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]), int(r[5]),
                        _str_or_none(r[6])) for r in cur.fetchall()]
        cur.execute("SELECT COALESCE(MAX(seq), 0) FROM ledger")
        newest = int(cur.fetchone()[0])
        facts: dict[str, Facts] = {}
        for i in range(0, len(loaded), 500):
            chunk = loaded[i: i + 500]
            cur.execute(sql(_FACTS.format(", ".join("?" for _ in chunk))), tuple(chunk))
            facts.update(_facts(r) for r in cur.fetchall())
    return grants, newest, facts


class GrantFeed:
    """Grants written to SQL past a watermark per shard, each handed out until it is `done`.

    Each shard tag has its own watermark (`lows`, kept in Redis on that shard): entries of a
    shard's workspaces at or below its low are finished. A shard whose low is not known yet
    (down at startup) is left out until `know` is told it; the feed reads from the lowest
    known low and skips what each shard has finished. The lows trail the newest seq seen by
    `lag` seconds (see the module docstring), so the last seconds are read again and an
    entry that committed late is not skipped; a shard that failed in a round keeps its low.
    """

    def __init__(self, engine: Engine, *, lag: float, page: int = 1000) -> None:
        self._engine = engine
        self.lows: dict[int, int] = {}  # shard -> its watermark (the shards known so far)
        self._lag = lag
        self._page = page
        self._safe = 0  # the newest seq read at least `lag` seconds ago
        self._marks: deque[tuple[float, int]] = deque()
        self._seen: dict[str, int] = {}  # request id -> seq, of grants done above a low
        self._unsaved: set[int] = set()

    def know(self, shard: int, low: int, *, saved: bool = True) -> None:
        """A shard's watermark; `saved=False`: not in Redis yet (advance returns it)."""
        self.lows[shard] = max(low, self.lows.get(shard, 0))
        if not saved:
            self._unsaved.add(shard)

    def read(self, loaded: list[str]) -> tuple[list[Grant], dict[str, Facts]]:
        """(Blocking.) The grants not done yet of the known shards, and fresh facts of the
        `loaded` workspaces."""
        out: list[Grant] = []
        lows = dict(self.lows)
        after = min(lows.values(), default=0)
        while True:
            grants, newest, facts = _poll(self._engine, after, self._page, loaded)
            for g in grants:
                low = lows.get(shard_of(g.workspace_id))
                if low is not None and g.seq > low and g.request_id not in self._seen:
                    out.append(g)
            if len(grants) < self._page:
                break
            after = grants[-1].seq
        self._marks.append((time.monotonic(), newest))
        return out, facts

    def done(self, grant: Grant) -> None:
        self._seen[grant.request_id] = grant.seq

    def advance(self, healthy: set[int]) -> dict[int, int]:
        """Move the lows of the `healthy` shards (every grant of theirs read was applied) to
        the newest seq read at least `lag` seconds ago; return the lows that moved."""
        now = time.monotonic()
        while self._marks and self._marks[0][0] <= now - self._lag:
            self._safe = max(self._safe, self._marks.popleft()[1])
        moved = {s: self._safe for s in healthy if self.lows.get(s, self._safe) < self._safe}
        self.lows.update(moved)
        moved.update({s: self.lows[s] for s in self._unsaved & healthy})
        self._unsaved -= healthy
        floor = min(self.lows.values(), default=0)
        self._seen = {r: seq for r, seq in self._seen.items() if seq > floor}
        return moved
