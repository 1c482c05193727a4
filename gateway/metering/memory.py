"""The embedded meter: one process owns the balances and reserves in memory.

Holds live only in memory (a crash loses holds, which charged nothing).
Settles go through the group writer, so every reply finishing in one loop
turn shares one commit, and `settle` returns only when its charge is durable.
Operator changes written to the database by other processes (grants,
adjustments, plan changes) are picked up by a poll every `sync_interval`.
A lease in the database stops a second owner from starting on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from gateway.accounts.spend_caps import ledger_cap_used, refusal
from gateway.clock import Clock, now_ms
from gateway.errors import ServiceUnavailable
from gateway.ledger.writer import GroupWriter
from gateway.metering.base import AllotmentOf, charge, insufficient, plan_at, renewal_entry
from gateway.periods import period_of
from gateway.storage.database import Cursor, Sql, apply_entry, transaction
from gateway.storage.offload import BALANCES, run_db
from gateway.storage.periodic import Periodic
from gateway.types import Balance, Cap, EntryKind, Hold, LedgerEntry

log = logging.getLogger("bookbag.meter")

LEASE = "embedded-meter"


class OwnerConflict(RuntimeError):
    """Another live process already owns the balances of this database."""


@dataclass(slots=True)
class _Account:
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


class MemoryMeter:
    def __init__(
        self,
        engine: Engine,
        writer: GroupWriter,
        clock: Clock,
        allotment_of: AllotmentOf,
        *,
        hold_ttl: float,
        sync_interval: float = 1.0,
        sweep_interval: float = 5.0,
    ) -> None:
        self._engine = engine
        self._writer = writer
        self._clock = clock
        self._allotment_of = allotment_of
        self._hold_ttl = hold_ttl
        self._sync_interval = sync_interval
        self._accounts: dict[str, _Account] = {}
        self._loading: dict[str, asyncio.Future[_Account]] = {}
        self._own: set[str] = set()  # request ids of renewals this process applied itself
        self._early: dict[str, list[Any]] = {}  # ledger rows the poll saw while their account loaded
        self._sync_lock = asyncio.Lock()
        self._watermark = 0
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._loops = (Periodic("meter-sync", self.sync, sync_interval, log=log),
                       Periodic("meter-sweep", self.sweep, sweep_interval, log=log))

    # --- lifecycle ------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._claim_lease)
        self._watermark = await asyncio.to_thread(self._max_seq)
        for loop in self._loops:
            loop.start()

    async def close(self) -> None:
        for loop in self._loops:
            await loop.stop()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._release_lease)

    def _lease_ttl_ms(self) -> int:
        return int(max(3 * self._sync_interval, 5.0) * 1000)

    def _claim_lease(self) -> None:
        now = now_ms(self._clock)
        with transaction(self._engine) as (cur, sql):
            cur.execute(sql("SELECT owner, expires_ms FROM leases WHERE name = ?"), (LEASE,))
            row = cur.fetchone()
            if row is not None and row[0] != self._owner and row[1] > now:
                raise OwnerConflict(
                    f"another gateway process ({row[0]}) owns the balances of this database. "
                    "The embedded meter allows one process; for several, set BOOKBAG_REDIS_URL "
                    "or BOOKBAG_METER=sql."
                )
            cur.execute(sql("DELETE FROM leases WHERE name = ?"), (LEASE,))
            cur.execute(
                sql("INSERT INTO leases (name, owner, expires_ms) VALUES (?, ?, ?)"),
                (LEASE, self._owner, now + self._lease_ttl_ms()),
            )

    def _release_lease(self) -> None:
        with transaction(self._engine) as (cur, sql):
            cur.execute(sql("DELETE FROM leases WHERE name = ? AND owner = ?"), (LEASE, self._owner))

    def _max_seq(self) -> int:
        with transaction(self._engine) as (cur, _):
            cur.execute("SELECT COALESCE(MAX(seq), 0) FROM ledger")
            return int(cur.fetchone()[0])

    # --- accounts -------------------------------------------------------

    async def _account(self, workspace_id: str) -> _Account:
        account = self._accounts.get(workspace_id)
        if account is None:
            pending = self._loading.get(workspace_id)
            if pending is None:
                pending = asyncio.ensure_future(self._load_account(workspace_id))
                self._loading[workspace_id] = pending
            account = await asyncio.shield(pending)  # a database failure: 503 (`run_db`)
        self._renew_if_due(account)
        return account

    async def _load_account(self, workspace_id: str) -> _Account:
        """Load once; grants the poll saw during the load apply unless the load read them."""
        try:
            account = await run_db(self._load, workspace_id, store=BALANCES)
            self._accounts[workspace_id] = account
            for row in self._early.pop(workspace_id, []):
                self._apply_row(account, row)
            return account
        finally:
            self._loading.pop(workspace_id, None)

    def _load(self, workspace_id: str) -> _Account:
        with transaction(self._engine) as (cur, sql):
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
        _, period_end = period_of(anchor, self._clock.now())
        return _Account(
            workspace_id, plan, custom, anchor, period_start, period_end,
            int(allotment), int(allot_rem), int(top_rem), seq, pending=(p_plan, p_custom, p_from),
        )

    def _renew_if_due(self, account: _Account) -> None:
        now = self._clock.now()
        if account.checked[0] <= now < account.checked[1]:
            return  # same period as the last check (period_of costs ~5 us on every request)
        start, end = period_of(account.anchor, now)
        account.checked = (_epoch(start), _epoch(end))
        if start <= account.period_start:
            return
        allotment = self._allotment_of(*account.plan_at(start))
        entry = renewal_entry(account.workspace_id, start, allotment, now_ms(self._clock))
        account.period_start, account.period_end = start, end
        account.allotment = account.allotment_remaining = allotment
        self._own.add(entry.request_id)
        # Ordered before any settle of the new period by the writer's queue.
        fut = self._writer.submit(lambda cur, sql: apply_entry(cur, sql, entry))
        fut.add_done_callback(_log_failure)

    # --- the Meter interface --------------------------------------------

    async def reserve(self, workspace_id: str, credits: int, request_id: str,
                      caps: tuple[Cap, ...] = ()) -> Hold:
        account = await self._account(workspace_id)
        while missing := [c for c in caps if (c.subject, account.period_start) not in account.cap_used]:
            await self._seed_caps(account, missing)
        # From here to the return nothing awaits: balance and caps change in one step.
        available = account.allotment_remaining + account.topups_remaining
        if credits > available:
            raise insufficient(available, credits, account.period_end)
        for cap in caps:
            used = account.cap_used[(cap.subject, account.period_start)]
            if used + credits > cap.credits:
                raise refusal(cap, used, credits, account.period_end)
        for cap in caps:
            account.cap_used[(cap.subject, account.period_start)] += credits
        from_allotment = min(credits, account.allotment_remaining)
        hold = Hold(
            request_id=request_id,
            workspace_id=workspace_id,
            credits=credits,
            from_allotment=from_allotment,
            from_topups=credits - from_allotment,
            period_start=account.period_start,
            expires_at=self._clock.now() + self._hold_ttl,
            caps=tuple(c.subject for c in caps),
        )
        account.allotment_remaining -= hold.from_allotment
        account.topups_remaining -= hold.from_topups
        account.reserved += credits
        account.holds[request_id] = hold
        return hold

    async def settle(self, hold: Hold, entry: LedgerEntry) -> Balance | None:
        account = self._accounts[hold.workspace_id]
        if account.holds.pop(hold.request_id, None) is None:
            return None  # already settled, voided or expired
        account.reserved -= hold.credits
        charge(entry, hold)
        try:
            await self._writer.submit(lambda cur, sql: apply_entry(cur, sql, entry))
        except BaseException:
            self._give_back(account, hold)
            raise
        return None  # balance() reads memory: no round trip to spare

    async def void(self, hold: Hold) -> None:
        account = self._accounts.get(hold.workspace_id)
        if account is None or account.holds.pop(hold.request_id, None) is None:
            return
        account.reserved -= hold.credits
        self._give_back(account, hold)

    async def cap_usage(self, workspace_id: str, caps: tuple[Cap, ...]) -> dict[str, int]:
        account = await self._account(workspace_id)
        while missing := [c for c in caps if (c.subject, account.period_start) not in account.cap_used]:
            await self._seed_caps(account, missing)
        return {c.subject: account.cap_used[(c.subject, account.period_start)] for c in caps}

    async def _seed_caps(self, account: _Account, caps: list[Cap]) -> None:
        """Spend caps: a subject's usage this period starts from the ledger's charges."""
        period = account.period_start
        for cap in caps:
            used = await run_db(ledger_cap_used, self._engine, account.workspace_id,
                                cap.subject, period, store=BALANCES)
            account.cap_used.setdefault((cap.subject, period), used)  # holds since then count
        self._renew_if_due(account)

    def _give_back(self, account: _Account, hold: Hold) -> None:
        for subject in hold.caps:
            key = (subject, hold.period_start)
            if key in account.cap_used:
                account.cap_used[key] -= hold.credits
        if hold.period_start == account.period_start:
            account.allotment_remaining += hold.from_allotment
        account.topups_remaining += hold.from_topups

    async def balance(self, workspace_id: str) -> Balance:
        account = await self._account(workspace_id)
        return Balance(
            workspace_id=workspace_id,
            plan=account.plan_at(account.period_start)[0],
            allotment=account.allotment,
            allotment_remaining=account.allotment_remaining,
            topups_remaining=account.topups_remaining,
            reserved=account.reserved,
            period_start=account.period_start,
            period_end=account.period_end,
        )

    async def grant(self, entry: LedgerEntry) -> bool:
        account = self._accounts.get(entry.workspace_id)
        if account is not None:
            self._renew_if_due(account)  # its renewal entry is queued before the grant
        inserted: bool = await self._writer.submit(lambda cur, sql: apply_entry(cur, sql, entry))
        # The poll is the one path from ledger rows to memory, so a grant applies exactly
        # once whoever wrote it first (this call, or the CLI before it).
        try:
            await self.sync()
        except Exception:
            log.warning("grant %s applies at the next sync", entry.request_id, exc_info=True)
        return inserted

    def _apply(self, account: _Account, kind: str, allot: int, topup: int,
               period: str | None) -> None:
        account.topups_remaining += topup
        if period == account.period_start:
            account.allotment_remaining += allot
            if kind == EntryKind.ALLOTMENT:
                account.allotment += allot

    # --- background -----------------------------------------------------

    async def sync(self) -> None:
        """Apply grants written to the ledger (here or by the CLI), refresh plans, renew the lease."""
        async with self._sync_lock:  # one poll at a time: each row past the watermark once
            await self._sync()

    async def _sync(self) -> None:
        rows, plans = await asyncio.to_thread(self._poll, self._watermark, list(self._accounts))
        for row in rows:
            seq, request_id, workspace_id = row[0], row[1], row[2]
            self._watermark = max(self._watermark, seq)
            if request_id in self._own:
                self._own.discard(request_id)
                continue
            account = self._accounts.get(workspace_id)
            if account is not None:
                self._apply_row(account, row)
            elif workspace_id in self._loading:  # its load may have read the ledger before this row
                self._early.setdefault(workspace_id, []).append(row)
        for workspace_id, plan, custom, p_plan, p_custom, p_from in plans:
            account = self._accounts.get(workspace_id)
            if account is not None:
                account.plan, account.custom_allotment = plan, custom
                account.pending = (p_plan, p_custom, p_from)

    def _apply_row(self, account: _Account, row: Any) -> None:
        seq, request_id, workspace_id, kind, allot, topup, period = row
        if seq <= account.loaded_seq:
            return  # the load read it
        self._renew_if_due(account)
        if request_id == renewal_entry(workspace_id, period or "", 0, 0).request_id:
            return  # another writer's copy of a renewal: renewing applied it already
        self._apply(account, kind, allot, topup, period)

    def _poll(self, watermark: int, loaded: list[str]) -> tuple[list[Any], list[Any]]:
        with transaction(self._engine) as (cur, sql):
            cur.execute(
                sql(
                    "UPDATE leases SET expires_ms = ? WHERE name = ? AND owner = ?"
                ),
                (now_ms(self._clock) + self._lease_ttl_ms(), LEASE, self._owner),
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

    async def sweep(self) -> None:
        """Void holds past their expiry (a request that never resolved its hold)."""
        now = self._clock.now()
        for account in list(self._accounts.values()):
            for hold in [h for h in account.holds.values() if h.expires_at <= now]:
                log.warning("voiding expired hold %s", hold.request_id)
                await self.void(hold)

    def holds_in_flight(self) -> int:
        return sum(len(a.holds) for a in self._accounts.values())


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


def _epoch(day: str) -> float:
    """Midnight UTC starting an ISO date, in epoch seconds."""
    return dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp()


def _log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("renewal write failed", exc_info=fut.exception())
