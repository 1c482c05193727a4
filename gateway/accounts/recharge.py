"""Auto-recharge: below a threshold, grant a fixed top-up, at most `monthly_cap` times a period.

The n-th recharge of a period is the `topup` entry with request id
`recharge:<workspace>:<period start>:<n>`, written through `Meter.grant`, so
two deciders that both grant the n-th recharge write it once. What keeps them
from granting the n-th *and* the (n+1)-th for one crossing: a decision
(count the period's recharges, read the balance, grant) runs under a
per-workspace lease in the `leases` table, held until the grant has moved
the balance, and within a process under a per-workspace lock; a process that
finds the lease taken leaves the crossing to its holder (the next charge
looks again). Each recharge is announced as a `credits.recharged` webhook
event whose id is derived from the recharge's request id.

Payment is out of scope: the event is what a billing system consumes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlmodel import Session

from gateway.accounts.operator_input import credits as check_credits
from gateway.accounts.workspaces import AccountError, UnknownAccount
from gateway.clock import Clock, now_ms
from gateway.metering.base import Meter
from gateway.periods import period_of
from gateway.storage.database import snapshot, transaction
from gateway.storage.schema import AutoRecharge, Workspace
from gateway.types import EntryKind, LedgerEntry
from gateway.webhooks.registry import CREDITS_RECHARGED, Webhooks

log = logging.getLogger("bookbag.recharge")

MAX_CAP = 1000
ACTOR = "gateway:auto-recharge"
LEASE_TTL_MS = 30_000  # a decider that died mid-grant is taken over after this


@dataclass(frozen=True, slots=True)
class RechargeSettings:
    threshold: int
    amount: int
    monthly_cap: int
    enabled: bool = True

    def as_dict(self) -> dict[str, object]:
        return {"threshold": self.threshold, "amount": self.amount,
                "monthly_cap": self.monthly_cap, "enabled": self.enabled}


def recharge_id(workspace_id: str, period_start: str, n: int) -> str:
    return f"recharge:{workspace_id}:{period_start}:{n}"


class Recharges:
    def __init__(self, engine: Engine, clock: Clock, webhooks: Webhooks) -> None:
        self._engine = engine
        self._clock = clock
        self._webhooks = webhooks
        self._locks: dict[str, asyncio.Lock] = {}
        self._owner = "recharge:" + uuid.uuid4().hex
        self._for_update = "" if engine.dialect.name == "sqlite" else " FOR UPDATE"
        self._capped: set[tuple[str, str]] = set()  # (workspace, period) that used their cap

    # --- settings (synchronous SQL) -------------------------------------------

    def configure(self, workspace_id: str, *, threshold: int, amount: int, monthly_cap: int,
                  enabled: bool = True) -> RechargeSettings:
        check_credits(threshold, "threshold")
        check_credits(amount, "amount")
        if not 1 <= monthly_cap <= MAX_CAP:
            raise AccountError(f"the monthly cap must be between 1 and {MAX_CAP} recharges")
        with Session(self._engine) as session:
            if session.get(Workspace, workspace_id) is None:
                raise UnknownAccount(f"no workspace {workspace_id!r}")
            row = session.get(AutoRecharge, workspace_id) or AutoRecharge(
                workspace_id=workspace_id, threshold=0, amount=0, monthly_cap=0, updated_ms=0)
            row.threshold, row.amount, row.monthly_cap = threshold, amount, monthly_cap
            row.enabled, row.updated_ms = enabled, now_ms(self._clock)
            session.add(row)
            session.commit()
        self._capped = {c for c in self._capped if c[0] != workspace_id}
        return RechargeSettings(threshold, amount, monthly_cap, enabled)

    def settings(self, workspace_id: str) -> RechargeSettings | None:
        with Session(self._engine) as session:
            if session.get(Workspace, workspace_id) is None:
                raise UnknownAccount(f"no workspace {workspace_id!r}")
            row = session.get(AutoRecharge, workspace_id)
            if row is None:
                return None
            return RechargeSettings(row.threshold, row.amount, row.monthly_cap, row.enabled)

    def disable(self, workspace_id: str) -> bool:
        with Session(self._engine) as session:
            row = session.get(AutoRecharge, workspace_id)
            if row is None:
                return False
            session.delete(row)
            session.commit()
            return True

    def status(self, workspace_id: str, anchor: str) -> dict[str, object]:
        settings = self.settings(workspace_id)
        start, _ = period_of(anchor, self._clock.now())
        cap = settings.monthly_cap if settings else 0
        return {"workspace_id": workspace_id, "enabled": bool(settings and settings.enabled),
                **(settings.as_dict() if settings else {}), "period_start": start,
                "recharges_this_period": self._count(workspace_id, start, cap) if cap else 0}

    # --- the check after a charge -------------------------------------------

    def _count(self, workspace_id: str, period_start: str, cap: int) -> int:
        """How many of the period's recharges 1..cap exist (by request id: an index lookup)."""
        ids = [recharge_id(workspace_id, period_start, n) for n in range(1, cap + 1)]
        with snapshot(self._engine) as (cur, sql):
            cur.execute(sql(f"SELECT COUNT(*) FROM ledger WHERE request_id IN "
                            f"({', '.join('?' for _ in ids)})"), ids)
            return int(cur.fetchone()[0])

    def _acquire(self, workspace_id: str) -> bool:
        """Take the workspace's recharge lease (or find it held by another live decider)."""
        name, now = f"recharge:{workspace_id}", now_ms(self._clock)
        with transaction(self._engine) as (cur, sql):
            cur.execute(sql("SELECT owner, expires_ms FROM leases WHERE name = ?" + self._for_update),
                        (name,))
            row = cur.fetchone()
            if row is None:
                cur.execute(sql("INSERT INTO leases (name, owner, expires_ms) VALUES (?, ?, ?) "
                                "ON CONFLICT (name) DO NOTHING"),
                            (name, self._owner, now + LEASE_TTL_MS))
                return bool(cur.rowcount == 1)
            if row[0] != self._owner and int(row[1]) > now:
                return False
            cur.execute(sql("UPDATE leases SET owner = ?, expires_ms = ? WHERE name = ?"),
                        (self._owner, now + LEASE_TTL_MS, name))
            return True

    def _release(self, workspace_id: str) -> None:
        with transaction(self._engine) as (cur, sql):
            cur.execute(sql("DELETE FROM leases WHERE name = ? AND owner = ?"),
                        (f"recharge:{workspace_id}", self._owner))

    async def check(self, meter: Meter, workspace_id: str, anchor: str,
                    settings: RechargeSettings) -> LedgerEntry | None:
        """Grant the next recharge if the balance is below the threshold and the cap allows.

        Returns the entry this call wrote, or None.
        """
        period, _ = period_of(anchor, self._clock.now())
        if not settings.enabled or (workspace_id, period) in self._capped:
            return None
        lock = self._locks.setdefault(workspace_id, asyncio.Lock())
        async with lock:
            if not await asyncio.to_thread(self._acquire, workspace_id):
                return None  # another process is deciding this crossing
            try:
                return await self._decide(meter, workspace_id, period, settings)
            finally:
                await asyncio.to_thread(self._release, workspace_id)

    async def _decide(self, meter: Meter, workspace_id: str, period: str,
                      settings: RechargeSettings) -> LedgerEntry | None:
        count = await asyncio.to_thread(self._count, workspace_id, period, settings.monthly_cap)
        if count >= settings.monthly_cap:
            self._capped.add((workspace_id, period))
            return None
        balance = await meter.balance(workspace_id)
        if balance.period_start != period or balance.available >= settings.threshold:
            return None
        n = count + 1
        entry = LedgerEntry(
            request_id=recharge_id(workspace_id, period, n), workspace_id=workspace_id,
            kind=EntryKind.TOPUP, billing_mode=None, credits=settings.amount,
            topup_delta=settings.amount, ref=f"recharge:{period}:{n}", actor=ACTOR,
            created_ms=now_ms(self._clock),
        )
        inserted = await meter.grant(entry)
        # Emitted whether or not this call inserted it: the event id dedups.
        await asyncio.to_thread(
            self._webhooks.emit, workspace_id, CREDITS_RECHARGED, entry.request_id,
            {"recharge_id": entry.request_id, "credits": settings.amount, "number": n,
             "monthly_cap": settings.monthly_cap, "threshold": settings.threshold,
             "balance_before": balance.available, "period_start": period,
             "period_end": balance.period_end},
        )
        if inserted:
            log.info("auto-recharge %s: +%d credits", entry.request_id, settings.amount)
            return entry
        return None
