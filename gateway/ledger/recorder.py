"""Recording unmetered replies (local, BYO, metering off): never blocks, never fails a reply.

The entry is committed through the group writer like any other; if the
database does not answer within `timeout`, the entry goes to the spool
(when one is configured) and is replayed later, exactly once by request_id.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from gateway.ledger.writer import GroupWriter
from gateway.storage.database import apply_entry
from gateway.types import LedgerEntry

log = logging.getLogger("bookbag.ledger")


class Spool(Protocol):
    def append(self, entry: LedgerEntry) -> None: ...


class Recorder:
    def __init__(self, writer: GroupWriter, *, spool: Spool | None = None,
                 timeout: float = 2.0) -> None:
        self._writer = writer
        self._spool = spool
        self._timeout = timeout
        self.spooled = 0
        self.lost = 0

    async def record(self, entry: LedgerEntry) -> None:
        try:
            fut = self._writer.submit(lambda cur, sql: apply_entry(cur, sql, entry))
            await asyncio.wait_for(asyncio.shield(fut), self._timeout)
            return
        except Exception:
            log.warning("ledger write for %s failed; spooling it", entry.request_id)
        if self._spool is None:
            self.lost += 1
            log.error("no spool configured: entry %s not recorded", entry.request_id)
            return
        try:
            self._spool.append(entry)
            self.spooled += 1
        except Exception:
            self.lost += 1
            log.error("spool write failed: entry %s not recorded", entry.request_id, exc_info=True)
