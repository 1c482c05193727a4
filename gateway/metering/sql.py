"""The SQL meter: balances and holds as rows, shared by any number of processes.

Reserve is one transaction holding the workspace's row lock (`BEGIN
IMMEDIATE` on SQLite, `SELECT ... FOR UPDATE` on PostgreSQL): renew the
period if due, check, take from the buckets, insert the hold. Settle deletes
the hold and inserts the ledger entry in one transaction (the balance moved
at reserve); void deletes the hold and gives the credits back. Whichever
deletes the hold row first wins, so a hold resolves exactly once.
Spend caps: reserve adds the hold to each cap's `cap_usage` row for the
period under the same lock; void takes it off again (a settle keeps it).

On SQLite (`serve --workers N` on the embedded default) the whole file has one
write lock: every reserve, settle and void of a process goes through its
group writer (`ledger/writer.py`), so all of them arriving in one loop turn
share one transaction, one lock acquisition and one fsync, instead of a
thread hop, a pooled connection and a commit each, every one fighting the
other threads and processes for the lock (docs/architecture.md, "Many
workers on one SQLite file"). On PostgreSQL, row locks: one transaction each.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import Engine

from gateway.accounts.spend_caps import charged, refusal
from gateway.clock import Clock, now_ms
from gateway.errors import GatewayError, ServiceUnavailable
from gateway.ledger.writer import GroupWriter, WriteOp
from gateway.metering.base import (
    AllotmentOf,
    charge,
    insufficient,
    plan_at,
    renewal_entry,
    trim,
)
from gateway.periods import period_of
from gateway.storage.database import Cursor, Sql, apply_entry, snapshot, transaction
from gateway.storage.offload import BALANCES, NOT_OUTAGES, run_db, unavailable
from gateway.storage.periodic import Periodic
from gateway.types import Balance, Cap, Hold, LedgerEntry

log = logging.getLogger("bookbag.meter")


class _RenewalDue(Exception):
    """A read found a new period begun: renewing it needs a write transaction."""


class SqlMeter:
    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        allotment_of: AllotmentOf,
        *,
        hold_ttl: float,
        sweep_interval: float = 5.0,
        writer: GroupWriter | None = None,
    ) -> None:
        self._engine = engine
        # SQLite only: one lock for the whole file, so grouping costs no concurrency.
        self._writer = writer if engine.dialect.name == "sqlite" else None
        self._clock = clock
        self._allotment_of = allotment_of
        self._hold_ttl = hold_ttl
        self._for_update = "" if engine.dialect.name == "sqlite" else " FOR UPDATE"
        self._sweeper = Periodic("meter-sweep", self.sweep, sweep_interval, log=log)

    async def start(self) -> None:
        self._sweeper.start()

    async def close(self) -> None:
        await self._sweeper.stop()

    # --- in one transaction each ---------------------------------------

    def _row(self, cur: Cursor, sql: Sql, workspace_id: str, *,
             read_only: bool = False) -> tuple[Any, ...]:
        """The workspace's plan, period and buckets, renewed first if a period began
        (`read_only`: raise `_RenewalDue` instead, for a reader outside a write transaction)."""
        cur.execute(
            sql(
                "SELECT w.plan, w.custom_allotment, w.anchor_date, b.period_start, b.allotment, "
                "b.allotment_remaining, b.topups_remaining, w.pending_plan, "
                "w.pending_custom_allotment, w.pending_from FROM balances b "
                "JOIN workspaces w ON w.id = b.workspace_id WHERE b.workspace_id = ?"
                + ("" if read_only else self._for_update)
            ),
            (workspace_id,),
        )
        row = cur.fetchone()
        if row is None:
            raise ServiceUnavailable(f"workspace {workspace_id} has no balance row")
        plan, custom, anchor, period_start, allotment, allot_rem, top_rem, *pending = row
        start, end = period_of(anchor, self._clock.now())
        plan, custom = plan_at(plan, custom, pending[0], pending[1], pending[2], start)
        if start > period_start and read_only:
            raise _RenewalDue
        if start > period_start:
            allotment = self._allotment_of(plan, custom)
            apply_entry(cur, sql, renewal_entry(workspace_id, start, allotment, now_ms(self._clock)))
            return plan, start, end, allotment, allotment, int(top_rem)
        return plan, period_start, end, int(allotment), int(allot_rem), int(top_rem)

    def _reserve(self, workspace_id: str, credits: int, request_id: str,
                 caps: tuple[Cap, ...]) -> Hold:
        with transaction(self._engine) as (cur, sql):
            return self._reserve_in(cur, sql, workspace_id, credits, request_id, caps)

    def _reserve_in(self, cur: Cursor, sql: Sql, workspace_id: str, credits: int,
                    request_id: str, caps: tuple[Cap, ...]) -> Hold:
        """Reserve inside the caller's transaction; a refusal raises before any write of its own."""
        _, period, end, _, allot_rem, top_rem = self._row(cur, sql, workspace_id)
        if credits > allot_rem + top_rem:
            raise insufficient(allot_rem + top_rem, credits, end)
        # The balance row's lock serializes this workspace's reserves: caps read here
        # are current. Checked after the balance, so the balance's 402 wins.
        for cap in caps:
            used = self._cap_used(cur, sql, workspace_id, cap.subject, period)
            if used + credits > cap.credits:
                raise refusal(cap, used, credits, end)
        for cap in caps:
            self._cap_add(cur, sql, workspace_id, cap.subject, period, credits)
        from_allotment = min(credits, allot_rem)
        hold = Hold(request_id, workspace_id, credits, from_allotment,
                    credits - from_allotment, period, self._clock.now() + self._hold_ttl,
                    tuple(c.subject for c in caps))
        cur.execute(
            sql(
                "UPDATE balances SET allotment_remaining = allotment_remaining - ?, "
                "topups_remaining = topups_remaining - ? WHERE workspace_id = ?"
            ),
            (hold.from_allotment, hold.from_topups, workspace_id),
        )
        cur.execute(
            sql(
                "INSERT INTO holds (request_id, workspace_id, credits, from_allotment, "
                "from_topups, period_start, expires_ms, caps) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            (request_id, workspace_id, credits, hold.from_allotment, hold.from_topups,
             period, int(hold.expires_at * 1000), ",".join(hold.caps) or None),
        )
        return hold

    @staticmethod
    def _cap_used(cur: Cursor, sql: Sql, workspace_id: str, subject: str, period: str) -> int:
        """A cap's usage this period; a first use starts its row from the ledger's charges
        (as the other meters do), so a cap set mid-period counts what was spent before."""
        cur.execute(sql("SELECT used FROM cap_usage WHERE workspace_id = ? AND subject = ? "
                        "AND period_start = ?"), (workspace_id, subject, period))
        row = cur.fetchone()
        if row is not None:
            return int(row[0])
        used = charged(cur, sql, workspace_id, subject, period)
        cur.execute(sql("INSERT INTO cap_usage (workspace_id, subject, period_start, used) "
                        "VALUES (?, ?, ?, ?)"), (workspace_id, subject, period, used))
        return used

    @staticmethod
    def _cap_add(cur: Cursor, sql: Sql, workspace_id: str, subject: str, period: str,
                 credits: int) -> None:
        """Add (or with a negative amount, give back) cap usage; the balance row lock is held."""
        cur.execute(sql("UPDATE cap_usage SET used = used + ? WHERE workspace_id = ? "
                        "AND subject = ? AND period_start = ?"),
                    (credits, workspace_id, subject, period))
        if cur.rowcount == 0:
            cur.execute(sql("INSERT INTO cap_usage (workspace_id, subject, period_start, used) "
                            "VALUES (?, ?, ?, ?)"), (workspace_id, subject, period, credits))

    def _settle(self, hold: Hold, entry: LedgerEntry, credits: int | None) -> None:
        with transaction(self._engine) as (cur, sql):
            self._settle_in(cur, sql, hold, entry, credits)

    def _settle_in(self, cur: Cursor, sql: Sql, hold: Hold, entry: LedgerEntry,
                   credits: int | None) -> None:
        charged, rest = trim(hold, credits)
        cur.execute(sql("DELETE FROM holds WHERE request_id = ?"), (hold.request_id,))
        if cur.rowcount != 1:
            return  # voided or expired already: nothing to charge
        apply_entry(cur, sql, charge(entry, charged), project=False)
        if rest is not None:  # a trimmed settle: the rest goes back, as a void would
            self._give_back(cur, sql, hold.workspace_id, rest.from_allotment,
                            rest.from_topups, rest.period_start, ",".join(rest.caps),
                            rest.credits)

    def _void(self, request_id: str) -> None:
        with transaction(self._engine) as (cur, sql):
            self._void_in(cur, sql, request_id)

    def _void_in(self, cur: Cursor, sql: Sql, request_id: str) -> None:
        cur.execute(
            sql(
                "SELECT workspace_id, from_allotment, from_topups, period_start, caps, credits "
                "FROM holds WHERE request_id = ?" + self._for_update
            ),
            (request_id,),
        )
        row = cur.fetchone()
        if row is None:
            return
        workspace_id, from_allotment, from_topups, period, caps, credits = row
        cur.execute(sql("DELETE FROM holds WHERE request_id = ?"), (request_id,))
        self._give_back(cur, sql, workspace_id, from_allotment, from_topups, period, caps,
                        int(credits))

    def _give_back(self, cur: Cursor, sql: Sql, workspace_id: str, from_allotment: int,
                   from_topups: int, period: str, caps: str | None, credits: int) -> None:
        """A hold's credits (or a trimmed settle's rest) back to the buckets and caps."""
        cur.execute(
            sql(
                "UPDATE balances SET allotment_remaining = allotment_remaining + "
                "CASE WHEN period_start = ? THEN ? ELSE 0 END, "
                "topups_remaining = topups_remaining + ? WHERE workspace_id = ?"
            ),
            (period, from_allotment, from_topups, workspace_id),
        )
        # After the balance row (reserve's lock order): the hold's cap usage goes back.
        for subject in caps.split(",") if caps else ():
            self._cap_add(cur, sql, workspace_id, subject, period, -credits)

    def _balance(self, workspace_id: str) -> Balance:
        """Read without the write lock (a snapshot); a renewal that is due takes it."""
        try:
            with snapshot(self._engine) as (cur, sql):
                return self._balance_in(cur, sql, workspace_id, read_only=True)
        except _RenewalDue:
            with transaction(self._engine) as (cur, sql):
                return self._balance_in(cur, sql, workspace_id)

    def _balance_in(self, cur: Cursor, sql: Sql, workspace_id: str, *,
                    read_only: bool = False) -> Balance:
        plan, period, end, allotment, allot_rem, top_rem = self._row(
            cur, sql, workspace_id, read_only=read_only)
        cur.execute(
            sql("SELECT COALESCE(SUM(credits), 0) FROM holds WHERE workspace_id = ?"),
            (workspace_id,),
        )
        reserved = int(cur.fetchone()[0])
        return Balance(workspace_id, plan, allotment, allot_rem, top_rem, reserved, period, end)

    def _grant(self, entry: LedgerEntry) -> bool:
        with transaction(self._engine) as (cur, sql):
            self._row(cur, sql, entry.workspace_id)  # lock and renew first
            return apply_entry(cur, sql, entry)

    def _expired(self) -> list[str]:
        with transaction(self._engine) as (cur, sql):
            cur.execute(
                sql("SELECT request_id FROM holds WHERE expires_ms <= ?"), (now_ms(self._clock),)
            )
            return [r[0] for r in cur.fetchall()]

    # --- the Meter interface --------------------------------------------

    async def reserve(self, workspace_id: str, credits: int, request_id: str,
                      caps: tuple[Cap, ...] = ()) -> Hold:
        if self._writer is None:
            hold: Hold = await run_db(self._reserve, workspace_id, credits, request_id, caps,
                                      store=BALANCES)
            return hold

        def op(cur: Cursor, sql: Sql) -> Hold | GatewayError:
            try:
                return self._reserve_in(cur, sql, workspace_id, credits, request_id, caps)
            except GatewayError as exc:  # a refusal is an answer, not a failed write
                return exc

        try:
            result = await self._grouped(op)
        except asyncio.CancelledError:
            # The write may still commit: a void queued behind it in the same writer
            # gives the credits back at once instead of after the hold's TTL.
            self._void_behind(request_id)
            raise
        if isinstance(result, GatewayError):
            raise result
        held: Hold = result
        return held

    async def settle(self, hold: Hold, entry: LedgerEntry,
                     credits: int | None = None) -> Balance | None:
        if self._writer is None:
            await run_db(self._settle, hold, entry, credits, store=BALANCES)
            return None

        def op(cur: Cursor, sql: Sql) -> Balance | None:
            self._settle_in(cur, sql, hold, entry, credits)
            # The reply's X-Bookbag-Credits-Remaining, read in the same transaction: a read
            # of its own would be one more trip to the database for every JSON reply.
            try:  # only balance() renews a period (the contract)
                return self._balance_in(cur, sql, hold.workspace_id, read_only=True)
            except (_RenewalDue, GatewayError):  # the charge stands; the header is read anew
                return None

        balance: Balance | None = await self._grouped(op)
        return balance

    async def void(self, hold: Hold) -> None:
        if self._writer is None:
            await run_db(self._void, hold.request_id, store=BALANCES)
        else:
            await self._grouped(lambda cur, sql: self._void_in(cur, sql, hold.request_id))

    async def _grouped(self, op: WriteOp) -> Any:
        """`op` in this process's next group commit; a database failure is a 503."""
        assert self._writer is not None
        try:
            return await self._writer.submit(op)
        except NOT_OUTAGES:
            raise
        except Exception as exc:
            raise unavailable(BALANCES) from exc

    def _void_behind(self, request_id: str) -> None:
        assert self._writer is not None
        try:
            fut = self._writer.submit(lambda cur, sql: self._void_in(cur, sql, request_id))
        except Exception:  # closed: the sweeper voids the hold after its TTL
            log.warning("hold %s is voided by the sweeper", request_id, exc_info=True)
            return
        fut.add_done_callback(_quiet)

    async def balance(self, workspace_id: str) -> Balance:
        balance: Balance = await run_db(self._balance, workspace_id, store=BALANCES)
        return balance

    async def cap_usage(self, workspace_id: str, caps: tuple[Cap, ...]) -> dict[str, int]:
        def read() -> dict[str, int]:
            with transaction(self._engine) as (cur, sql):
                period = self._row(cur, sql, workspace_id)[1]
                return {c.subject: self._cap_used(cur, sql, workspace_id, c.subject, period)
                        for c in caps}

        usage: dict[str, int] = await run_db(read, store=BALANCES)
        return usage

    async def grant(self, entry: LedgerEntry) -> bool:
        inserted: bool = await run_db(self._grant, entry, store=BALANCES)
        return inserted

    async def sweep(self) -> None:
        """Void every hold past its expiry (its process died before resolving it)."""
        for request_id in await run_db(self._expired, store=BALANCES):
            log.warning("voiding expired hold %s", request_id)
            await run_db(self._void, request_id, store=BALANCES)


def _quiet(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("voiding an abandoned hold failed; the sweeper will", exc_info=fut.exception())
