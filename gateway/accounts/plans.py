"""Plan changes: an upgrade takes effect at once, a downgrade at the next period.

- Upgrade (the new plan's allotment is larger than the one the workspace has
  in the current period): the workspace moves to the new plan now and gains
  the difference for the current period, as an `allotment` ledger entry with
  ref `plan:<old>-><new>`. Its request id names the period and both
  allotments, so retrying the same change never grants twice.
- Downgrade (smaller): recorded as pending from the next period start
  (`workspaces.pending_plan`/`pending_from`); whoever renews that period asks
  `metering.base.plan_at` and grants the new plan's allotment.
- Same allotment: the plan switches now and a pending downgrade is cancelled.

Enterprise (a plan with `credits = "custom"`) takes the workspace's own
allotment; changing that figure is a plan change like any other.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from gateway.accounts.operator_input import InputError
from gateway.accounts.operator_input import credits as check_credits
from gateway.accounts.workspaces import AccountError, UnknownAccount, allotment_of
from gateway.catalog import Catalog
from gateway.clock import Clock, now_ms
from gateway.metering.base import Meter, plan_at, renewal_entry
from gateway.periods import period_of
from gateway.storage.database import Cursor, Sql, apply_entry, transaction
from gateway.types import EntryKind, LedgerEntry

log = logging.getLogger("bookbag.plans")

UPGRADE, DOWNGRADE, UNCHANGED = "upgrade", "downgrade", "unchanged"


@dataclass(frozen=True, slots=True)
class PlanChange:
    workspace_id: str
    kind: str  # upgrade | downgrade | unchanged
    old_plan: str
    old_allotment: int
    new_plan: str
    new_allotment: int
    period_start: str
    effective_from: str  # the period start from which the new plan applies
    entry: LedgerEntry | None  # the difference granted now (upgrades)

    def as_dict(self) -> dict[str, object]:
        return {
            "workspace_id": self.workspace_id, "change": self.kind, "old_plan": self.old_plan,
            "old_allotment": self.old_allotment, "new_plan": self.new_plan,
            "new_allotment": self.new_allotment, "period_start": self.period_start,
            "effective_from": self.effective_from,
            "credits_granted": self.entry.credits if self.entry else 0,
        }


@dataclass(frozen=True, slots=True)
class _State:
    plan: str
    custom: int | None
    anchor: str
    pending_plan: str | None
    pending_custom: int | None
    pending_from: str | None


def _read(cur: Cursor, sql: Sql, workspace_id: str, for_update: str) -> _State:
    cur.execute(
        sql("SELECT plan, custom_allotment, anchor_date, pending_plan, pending_custom_allotment, "
            "pending_from FROM workspaces WHERE id = ?" + for_update),
        (workspace_id,),
    )
    row = cur.fetchone()
    if row is None:
        raise UnknownAccount(f"no workspace {workspace_id!r}")
    return _State(*row)


def _record(cur: Cursor, sql: Sql, workspace_id: str, change: PlanChange,
            old_custom: int | None, new_custom: int | None) -> None:
    values: tuple[str, int | None, str | None, int | None, str | None]
    if change.kind == DOWNGRADE:
        # The plan row holds what applies now (a pending change already in effect is folded in).
        values = (change.old_plan, old_custom, change.new_plan, new_custom, change.effective_from)
    else:
        values = (change.new_plan, new_custom, None, None, None)
    cur.execute(
        sql("UPDATE workspaces SET plan = ?, custom_allotment = ?, pending_plan = ?, "
            "pending_custom_allotment = ?, pending_from = ? WHERE id = ?"),
        (*values, workspace_id),
    )


def _request_id(workspace_id: str, period: str, old: str, new: str) -> str:
    rid = f"plan:{workspace_id}:{period}:{old}->{new}"
    if len(rid) <= 128:
        return rid
    return f"plan:{workspace_id}:{period}:" + hashlib.sha256(rid.encode()).hexdigest()[:32]


class Plans:
    def __init__(self, engine: Engine, catalog: Catalog, clock: Clock, *,
                 refresh: Callable[[], Awaitable[None]] | None = None) -> None:
        """`refresh`: makes the running meter re-read workspace plans now (the embedded
        meter's sync), so a change made through this process is never missed by a renewal."""
        self._engine = engine
        self._catalog = catalog
        self._clock = clock
        self._refresh = refresh
        self._for_update = "" if engine.dialect.name == "sqlite" else " FOR UPDATE"
        self._lock = asyncio.Lock()

    def _new_custom(self, plan: str, custom: int | None) -> int | None:
        if plan not in self._catalog.plans:
            raise AccountError(f"unknown plan {plan!r}; plans: {', '.join(self._catalog.plans)}")
        if self._catalog.plan(plan).credits is None:
            if custom is None:
                raise InputError("credits", f"is required: plan {plan!r} has a custom allotment")
            return check_credits(custom, minimum=0, allow_zero=True)
        if custom is not None:
            raise AccountError(f"plan {plan!r} has a fixed allotment; credits are for custom plans")
        return None

    def _decide(self, workspace_id: str, state: _State, new_plan: str, new_custom: int | None,
                actor: str) -> tuple[PlanChange, int | None]:
        now = self._clock.now()
        start, end = period_of(state.anchor, now)
        old_plan, old_custom = plan_at(state.plan, state.custom, state.pending_plan,
                                       state.pending_custom, state.pending_from, start)
        old = allotment_of(self._catalog, old_plan, old_custom)
        new = allotment_of(self._catalog, new_plan, new_custom)
        entry = None
        if new > old:
            kind, effective = UPGRADE, start
            old_name = f"{old_plan}({old})" if old_custom is not None else old_plan
            new_name = f"{new_plan}({new})" if new_custom is not None else new_plan
            entry = LedgerEntry(
                request_id=_request_id(workspace_id, start, old_name, new_name),
                workspace_id=workspace_id, kind=EntryKind.ALLOTMENT, billing_mode=None,
                credits=new - old, allotment_delta=new - old, period_start=start,
                ref=f"plan:{old_plan}->{new_plan}", actor=actor, created_ms=now_ms(self._clock),
            )
        elif new < old:
            kind, effective = DOWNGRADE, end
        else:
            kind, effective = UNCHANGED, start
        change = PlanChange(workspace_id, kind, old_plan, old, new_plan, new, start, effective, entry)
        return change, old_custom

    def change(self, workspace_id: str, plan: str, *, custom: int | None = None,
               actor: str = "operator") -> PlanChange:
        """Change the plan directly in SQL, in one transaction (the CLI's path).

        A running gateway picks the grant and the new plan up within its sync
        interval, like any operator change.
        """
        new_custom = self._new_custom(plan, custom)
        with transaction(self._engine) as (cur, sql):
            cur.execute(sql("SELECT period_start FROM balances WHERE workspace_id = ?"
                            + self._for_update), (workspace_id,))
            row = cur.fetchone()
            state = _read(cur, sql, workspace_id, self._for_update)
            if row is None:
                raise AccountError(f"workspace {workspace_id!r} has no balance")
            change, old_custom = self._decide(workspace_id, state, plan, new_custom, actor)
            if change.entry is not None:
                if change.period_start > row[0]:  # renew first, so the difference adds to it
                    apply_entry(cur, sql, renewal_entry(workspace_id, change.period_start,
                                                        change.old_allotment,
                                                        now_ms(self._clock)))
                apply_entry(cur, sql, change.entry)
            _record(cur, sql, workspace_id, change, old_custom, new_custom)
        return change

    async def change_live(self, meter: Meter, workspace_id: str, plan: str, *,
                          custom: int | None = None, actor: str = "operator") -> PlanChange:
        """Change the plan through the running meter, so the balance moves at once."""
        new_custom = self._new_custom(plan, custom)
        async with self._lock:
            await asyncio.to_thread(self._state, workspace_id)  # AccountError if unknown
            await meter.balance(workspace_id)  # renews the current period first when due
            state = await asyncio.to_thread(self._state, workspace_id)
            change, old_custom = self._decide(workspace_id, state, plan, new_custom, actor)
            if change.entry is not None:
                await meter.grant(change.entry)
            await asyncio.to_thread(self._store, workspace_id, change, old_custom, new_custom)
            if self._refresh is not None:
                try:
                    await self._refresh()
                except Exception:  # the meter's own poll picks the change up instead
                    log.warning("the meter did not refresh after a plan change", exc_info=True)
        return change

    def _state(self, workspace_id: str) -> _State:
        with transaction(self._engine) as (cur, sql):
            return _read(cur, sql, workspace_id, "")

    def _store(self, workspace_id: str, change: PlanChange, old_custom: int | None,
               new_custom: int | None) -> None:
        with transaction(self._engine) as (cur, sql):
            _record(cur, sql, workspace_id, change, old_custom, new_custom)
