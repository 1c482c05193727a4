"""The embedded meter: one process owns the balances and reserves in memory.

Holds live only in memory (a crash loses holds, which charged nothing).
Settles go through the group writer, so every reply finishing in one loop
turn shares one commit, and `settle` returns only when its charge is durable.
Operator changes written to the database by other processes (grants,
adjustments, plan changes) are picked up by a poll every `sync_interval`.
A lease in the database stops a second owner from starting on it. The database
side (lease, load, poll) is `memory_accounts.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from typing import Any

from sqlalchemy import Engine

from gateway.accounts.spend_caps import ledger_cap_used, refusal
from gateway.clock import Clock, now_ms
from gateway.ledger.writer import GroupWriter
from gateway.metering.base import (
    AllotmentOf,
    charge,
    insufficient,
    midnight_utc,
    renewal_entry,
    trim,
)
from gateway.metering.memory_accounts import (
    Account,
    claim_lease,
    load_account,
    max_seq,
    poll,
    release_lease,
)
from gateway.periods import period_of
from gateway.storage.database import apply_entry
from gateway.storage.offload import BALANCES, run_db
from gateway.storage.periodic import Periodic
from gateway.types import Balance, Cap, EntryKind, Hold, LedgerEntry

log = logging.getLogger("bookbag.meter")

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
        self._accounts: dict[str, Account] = {}
        self._loading: dict[str, asyncio.Future[Account]] = {}
        self._own: set[str] = set()  # request ids of renewals this process applied itself
        self._early: dict[str, list[Any]] = {}  # ledger rows the poll saw while their account loaded
        self._sync_lock = asyncio.Lock()
        self._watermark = 0
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._loops = (Periodic("meter-sync", self.sync, sync_interval, log=log),
                       Periodic("meter-sweep", self.sweep, sweep_interval, log=log))

    # --- lifecycle ------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(claim_lease, self._engine, self._owner, now_ms(self._clock),
                                self._lease_ttl_ms())
        self._watermark = await asyncio.to_thread(max_seq, self._engine)
        for loop in self._loops:
            loop.start()

    async def close(self) -> None:
        for loop in self._loops:
            await loop.stop()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(release_lease, self._engine, self._owner)

    def _lease_ttl_ms(self) -> int:
        return int(max(3 * self._sync_interval, 5.0) * 1000)

    # --- accounts -------------------------------------------------------

    async def _account(self, workspace_id: str) -> Account:
        account = self._accounts.get(workspace_id)
        if account is None:
            pending = self._loading.get(workspace_id)
            if pending is None:
                pending = asyncio.ensure_future(self._load_account(workspace_id))
                self._loading[workspace_id] = pending
            account = await asyncio.shield(pending)  # a database failure: 503 (`run_db`)
        self._renew_if_due(account)
        return account

    async def _load_account(self, workspace_id: str) -> Account:
        """Load once; grants the poll saw during the load apply unless the load read them."""
        try:
            account = await run_db(load_account, self._engine, workspace_id, self._clock.now(),
                                   store=BALANCES)
            self._accounts[workspace_id] = account
            for row in self._early.pop(workspace_id, []):
                self._apply_row(account, row)
            return account
        finally:
            self._loading.pop(workspace_id, None)

    def _renew_if_due(self, account: Account) -> None:
        now = self._clock.now()
        if account.checked[0] <= now < account.checked[1]:
            return  # same period as the last check (period_of costs ~5 us on every request)
        start, end = period_of(account.anchor, now)
        account.checked = (midnight_utc(start), midnight_utc(end))
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

    async def settle(self, hold: Hold, entry: LedgerEntry,
                     credits: int | None = None) -> Balance | None:
        account = self._accounts[hold.workspace_id]
        if account.holds.pop(hold.request_id, None) is None:
            return None  # already settled, voided or expired
        account.reserved -= hold.credits
        charged, rest = trim(hold, credits)
        if rest is not None:  # a trimmed settle: the rest goes back in this same step
            self._give_back(account, rest)
        charge(entry, charged)
        try:
            await self._writer.submit(lambda cur, sql: apply_entry(cur, sql, entry))
        except BaseException:
            self._give_back(account, charged)
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

    async def _seed_caps(self, account: Account, caps: list[Cap]) -> None:
        """Spend caps: a subject's usage this period starts from the ledger's charges."""
        period = account.period_start
        for cap in caps:
            used = await run_db(ledger_cap_used, self._engine, account.workspace_id,
                                cap.subject, period, store=BALANCES)
            account.cap_used.setdefault((cap.subject, period), used)  # holds since then count
        self._renew_if_due(account)

    def _give_back(self, account: Account, hold: Hold) -> None:
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

    def _apply(self, account: Account, kind: str, allot: int, topup: int,
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
        rows, plans = await asyncio.to_thread(
            poll, self._engine, self._watermark, list(self._accounts), self._owner,
            now_ms(self._clock) + self._lease_ttl_ms())
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

    def _apply_row(self, account: Account, row: Any) -> None:
        seq, request_id, workspace_id, kind, allot, topup, period = row
        if seq <= account.loaded_seq:
            return  # the load read it
        self._renew_if_due(account)
        if request_id == renewal_entry(workspace_id, period or "", 0, 0).request_id:
            return  # another writer's copy of a renewal: renewing applied it already
        self._apply(account, kind, allot, topup, period)

    async def sweep(self) -> None:
        """Void holds past their expiry (a request that never resolved its hold)."""
        now = self._clock.now()
        for account in list(self._accounts.values()):
            for hold in [h for h in account.holds.values() if h.expires_at <= now]:
                log.warning("voiding expired hold %s", hold.request_id)
                await self.void(hold)

    def holds_in_flight(self) -> int:
        return sum(len(a.holds) for a in self._accounts.values())


def _log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("renewal write failed", exc_info=fut.exception())
