"""What the endpoints receive: five services, not the app's whole state.

The composition root (gateway/app.py) builds the parts once and hands the
edge a `Services`: each endpoint reaches only the service of its concern.

    inference   the flow's front door (chat, embeddings, preview), the key cache, the catalog
    admin       the operator API: workspaces, keys, caps, plans, BYO keys, recharge, webhooks
    reads       what a workspace reads: balance, usage, the ledger export
    ops         health, readiness and metrics
    sessions    the dashboard's cookie sessions

The lifecycle (background tasks, closing in order) stays the root's `Gateway`;
no endpoint sees it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from sqlalchemy import Engine

from gateway.accounts.auth import KeyCache
from gateway.accounts.byo import ByoKeys
from gateway.accounts.plans import Plans
from gateway.accounts.recharge import Recharges
from gateway.accounts.thresholds import Thresholds
from gateway.accounts.workspaces import Accounts
from gateway.catalog import Catalog
from gateway.clock import Clock
from gateway.dashboard.sessions import Sessions
from gateway.flow.pipeline import Pipeline
from gateway.ledger.export import LedgerExport
from gateway.ledger.spool import Spool
from gateway.ledger.usage import Usage
from gateway.metering.base import Meter, Pingable
from gateway.observability.metrics import Metrics
from gateway.settings import Settings
from gateway.storage.database import transaction
from gateway.webhooks.registry import Webhooks


@dataclass(frozen=True, slots=True)
class Inference:
    """The flow and who may call it."""

    pipeline: Pipeline
    keys: KeyCache
    catalog: Catalog
    started: int = field(default_factory=lambda: int(time.time()))  # `created` in /v1/models


@dataclass(frozen=True, slots=True)
class Admin:
    """The operator API's operations (every route checks the admin token first)."""

    accounts: Accounts
    meter: Meter  # grants, adjustments and balances go through the meter
    plans: Plans
    byo: ByoKeys
    recharges: Recharges
    thresholds: Thresholds
    webhooks: Webhooks


@dataclass(frozen=True, slots=True)
class Reads:
    """What a workspace key (or its dashboard session) reads."""

    meter: Meter  # the balance and cap usage
    usage: Usage
    export: LedgerExport
    clock: Clock
    catalog: Catalog


class Ops:
    """Liveness, readiness and the metrics registry."""

    def __init__(self, engine: Engine, meter: Meter, metrics: Metrics,
                 spool: Spool | None = None) -> None:
        self._engine = engine
        self._meter = meter
        self._spool = spool
        self.metrics = metrics

    async def spool_backlog(self) -> int:
        """Unmetered entries waiting on local disk for the database."""
        if self._spool is None or not self._spool.has_backlog():
            return 0
        return await asyncio.to_thread(self._spool.backlog)

    async def readiness(self) -> dict[str, bool]:
        def ping() -> None:
            with transaction(self._engine) as (cur, _):
                cur.execute("SELECT 1")

        checks = {"local_model": True}
        try:
            await asyncio.wait_for(asyncio.to_thread(ping), 2.0)
            checks["database"] = True
        except Exception:
            checks["database"] = False
        checks["spool"] = await self.spool_backlog() == 0
        if isinstance(self._meter, Pingable):  # the Redis meter: metered requests need it
            checks["redis"] = await self._meter.ping()
        return checks


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings  # the edge's own limits (body size and time, admin token)
    inference: Inference
    admin: Admin
    reads: Reads
    ops: Ops
    sessions: Sessions
