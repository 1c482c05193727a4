"""After a charge: auto-recharge and the balance events, off the reply's path.

The pipeline calls `after_charge(hold, balance)` once a metered reply is
settled. For a workspace with neither auto-recharge nor a webhook endpoint
that is one dict lookup (its settings are cached for a few seconds); otherwise
a background task reads the balance (the reply's own reading when it has one)
and then:

- below the auto-recharge threshold: `Recharges.check` (exactly once per crossing);
- `credits.low` for each configured fraction of the allotment the balance is at
  or below (once per period and fraction), `credits.exhausted` at zero (once
  per period), `period.renewed` when the balance is in a period after the
  workspace's first (once per period), `credits.threshold` for each of the
  workspace's alert thresholds it is past (once per period and threshold).

Events are idempotent by id, and each process remembers the ids it already
emitted, so a workspace below a fraction costs no write per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from gateway.accounts.alerts import crossed, store_alerts
from gateway.accounts.recharge import Recharges, RechargeSettings
from gateway.accounts.workspaces import AccountError, UnknownAccount
from gateway.clock import Clock
from gateway.metering.base import Meter
from gateway.periods import period_of
from gateway.storage.database import snapshot
from gateway.storage.schema import Workspace
from gateway.types import Balance, Hold
from gateway.webhooks.registry import (
    CREDITS_EXHAUSTED,
    CREDITS_LOW,
    CREDITS_THRESHOLD,
    PERIOD_RENEWED,
    Webhooks,
)

log = logging.getLogger("bookbag.thresholds")

DEFAULT_LOW_FRACTIONS = ("0.2", "0.1")
_MEMO_LIMIT = 100_000


def parse_fractions(raw: str | list[str] | list[float] | None) -> tuple[str, ...]:
    """Fractions of the allotment for `credits.low`, each in (0, 1), as canonical decimals."""
    if raw is None:
        return DEFAULT_LOW_FRACTIONS
    items = [p.strip() for p in raw.split(",")] if isinstance(raw, str) else [str(p) for p in raw]
    out: list[str] = []
    for item in items:
        if not item:
            continue
        try:
            value = Decimal(item)
        except InvalidOperation:
            raise AccountError(f"a low-balance fraction must be a number, got {item!r}") from None
        if not 0 < value < 1:
            raise AccountError(f"a low-balance fraction must be between 0 and 1, got {item}")
        out.append(format(value.normalize(), "f"))
    return tuple(sorted(set(out), key=Decimal, reverse=True))


def store_low_fractions(engine: Engine, workspace_id: str,
                        fractions: str | list[str] | list[float] | None) -> tuple[str, ...]:
    """Set a workspace's `credits.low` fractions (None: back to the defaults)."""
    parsed = parse_fractions(fractions)
    with Session(engine) as session:
        workspace = session.get(Workspace, workspace_id)
        if workspace is None:
            raise UnknownAccount(f"no workspace {workspace_id!r}")
        workspace.low_fractions = None if fractions is None else ",".join(parsed)
        session.add(workspace)
        session.commit()
    return parsed


@dataclass(frozen=True, slots=True)
class _Config:
    expires: float
    anchor: str
    first_period: str
    low_fractions: tuple[str, ...]
    endpoints: bool
    recharge: RechargeSettings | None
    alerts: tuple[str, ...] = ()  # spend controls: credits.threshold

    @property
    def idle(self) -> bool:
        return not self.endpoints and not (self.recharge and self.recharge.enabled)


class Thresholds:
    def __init__(self, engine: Engine, clock: Clock, meter: Meter, recharges: Recharges,
                 webhooks: Webhooks, *, ttl: float = 2.0) -> None:
        self._engine = engine
        self._clock = clock
        self._meter = meter
        self._recharges = recharges
        self._webhooks = webhooks
        self._ttl = ttl
        self._configs: dict[str, _Config] = {}
        self._loading: dict[str, asyncio.Future[_Config]] = {}
        self._emitted: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- settings --------------------------------------------------------------

    def set_low_fractions(self, workspace_id: str, fractions: str | list[str] | list[float] | None
                          ) -> tuple[str, ...]:
        parsed = store_low_fractions(self._engine, workspace_id, fractions)
        self.forget(workspace_id)
        return parsed

    def set_alerts(self, workspace_id: str, alerts: str | list[Any] | None) -> tuple[str, ...]:
        parsed = store_alerts(self._engine, workspace_id, alerts)
        self.forget(workspace_id)
        return parsed

    def forget(self, workspace_id: str) -> None:
        """Drop this process's cached settings of a workspace (an operator changed them)."""
        self._configs.pop(workspace_id, None)

    def _load(self, workspace_id: str) -> _Config:
        with snapshot(self._engine) as (cur, sql):  # a read: no write lock on SQLite
            cur.execute(sql("SELECT anchor_date, created_ms, low_fractions, alert_thresholds "
                            "FROM workspaces WHERE id = ?"), (workspace_id,))
            row = cur.fetchone()
            if row is None:
                raise UnknownAccount(f"no workspace {workspace_id!r}")
            anchor, created, fractions = str(row[0]), int(row[1]), row[2]
            alerts = tuple(row[3].split(",")) if row[3] else ()
            cur.execute(sql("SELECT threshold, amount, monthly_cap, enabled FROM auto_recharge "
                            "WHERE workspace_id = ?"), (workspace_id,))
            found = cur.fetchone()
            recharge = RechargeSettings(int(found[0]), int(found[1]), int(found[2]),
                                        bool(found[3])) if found else None
            cur.execute(sql("SELECT 1 FROM webhook_endpoints WHERE workspace_id = ? AND enabled"),
                        (workspace_id,))
            endpoints = cur.fetchone() is not None
        first, _ = period_of(anchor, created / 1000)
        return _Config(self._clock.now() + self._ttl, anchor, first, parse_fractions(fractions),
                       endpoints, recharge, alerts)

    async def _config(self, workspace_id: str) -> _Config:
        config = self._configs.get(workspace_id)
        if config is not None and config.expires > self._clock.now():
            return config
        pending = self._loading.get(workspace_id)
        if pending is None:  # one load per workspace at a time
            pending = asyncio.ensure_future(asyncio.to_thread(self._load, workspace_id))
            self._loading[workspace_id] = pending
            pending.add_done_callback(lambda _f: self._loading.pop(workspace_id, None))
        config = await asyncio.shield(pending)
        if len(self._configs) >= _MEMO_LIMIT:
            self._configs.clear()
        self._configs[workspace_id] = config
        return config

    # --- after a charge ----------------------------------------------------------

    def after_charge(self, hold: Hold, balance: Balance | None = None) -> None:
        """Schedule the checks for the workspace of a settled hold (never blocks the reply)."""
        config = self._configs.get(hold.workspace_id)
        if config is not None and config.idle:
            if config.expires <= self._clock.now() and hold.workspace_id not in self._loading:
                self._spawn(self._config_only(hold.workspace_id))  # refresh, off the path
            return
        self._spawn(self.check(hold.workspace_id, balance))

    async def _config_only(self, workspace_id: str) -> None:
        await self._config(workspace_id)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("threshold check failed", exc_info=task.exception())

    async def check(self, workspace_id: str, balance: Balance | None = None) -> None:
        config = await self._config(workspace_id)
        if config.idle:
            return
        if balance is None:
            balance = await self._meter.balance(workspace_id)
        recharge = config.recharge
        if recharge is not None and recharge.enabled and balance.available < recharge.threshold:
            await self._recharges.check(self._meter, workspace_id, config.anchor, recharge)
        if config.endpoints:
            await self._events(workspace_id, config, balance)

    async def _events(self, workspace_id: str, config: _Config, balance: Balance) -> None:
        period = balance.period_start
        window = {"period_start": period, "period_end": balance.period_end}
        events: list[tuple[str, str, dict[str, Any]]] = []
        if period != config.first_period:
            events.append((PERIOD_RENEWED, period, {**window, "plan": balance.plan,
                                                    "allotment": balance.allotment}))
        for fraction in config.low_fractions:
            if balance.allotment and balance.available <= Fraction(fraction) * balance.allotment:
                events.append((CREDITS_LOW, f"{period}:{fraction}", {
                    **window, "fraction": fraction, "balance": balance.available,
                    "allotment": balance.allotment,
                    "threshold": int(Fraction(fraction) * balance.allotment)}))
        for alert, data in crossed(config.alerts, balance):
            events.append((CREDITS_THRESHOLD, f"{period}:{alert}", {**window, **data}))
        if balance.available <= 0:
            events.append((CREDITS_EXHAUSTED, period, {**window, "balance": balance.available}))
        for type_, discriminator, data in events:
            memo = f"{type_}\n{workspace_id}\n{discriminator}"
            if memo in self._emitted:
                continue
            await asyncio.to_thread(self._webhooks.emit, workspace_id, type_, discriminator, data)
            if len(self._emitted) >= _MEMO_LIMIT:
                self._emitted.clear()
            self._emitted.add(memo)

    async def close(self) -> None:
        """Let the checks in flight finish (briefly), then stop."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
