"""Which workspace a Response id was returned to, read from the ledger (`response_id`,
indexed; migration 0009), for the Responses route's `previous_response_id` rule
(gateway/flow/responses.py). The ids this process issued lately are answered from memory
first: their entries may still be queued for the database."""

from __future__ import annotations

from sqlalchemy import Engine

from gateway.flow.responses import RecentResponses
from gateway.storage.database import snapshot
from gateway.storage.offload import run_db

_OWNED = "SELECT 1 FROM ledger WHERE response_id = ? AND workspace_id = ? LIMIT 1"


class LedgerResponses(RecentResponses):
    def __init__(self, engine: Engine, size: int = 10_000) -> None:
        super().__init__(size)
        self._engine = engine

    def _lookup(self, workspace_id: str, response_id: str) -> bool:
        with snapshot(self._engine) as (cur, sql):
            cur.execute(sql(_OWNED), (response_id, workspace_id))
            return cur.fetchone() is not None

    async def owns(self, workspace_id: str, response_id: str) -> bool:
        """Memory, then the ledger off the event loop (a database failure: 503)."""
        if self.recent(workspace_id, response_id):
            return True
        return await run_db(self._lookup, workspace_id, response_id)
