"""Reading the ledger: credits used over a window (the balance's 30-day figure)."""

from __future__ import annotations

import asyncio

from sqlalchemy import Engine

from gateway.clock import Clock, now_ms
from gateway.database import transaction

DAY_MS = 86_400_000


class Usage:
    def __init__(self, engine: Engine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock

    def _credits_since(self, workspace_id: str, since_ms: int) -> int:
        with transaction(self._engine) as (cur, sql):
            cur.execute(
                sql(
                    "SELECT COALESCE(SUM(credits), 0) FROM ledger WHERE workspace_id = ? "
                    "AND created_ms >= ? AND kind = 'reply'"
                ),
                (workspace_id, since_ms),
            )
            return int(cur.fetchone()[0])

    async def credits_used_30d(self, workspace_id: str) -> int:
        """Settled reply credits in the trailing 30 days (UTC)."""
        since = now_ms(self._clock) - 30 * DAY_MS
        return await asyncio.to_thread(self._credits_since, workspace_id, since)
