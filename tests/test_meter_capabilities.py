"""Each meter declares its optional capabilities as the named protocols of `metering/base.py`;
the composition root (readiness, metrics, plan refresh, crash recovery) asks `isinstance`."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import create_engine

from gateway.clock import SystemClock
from gateway.ledger.writer import GroupWriter
from gateway.metering.base import (
    CountsHolds,
    CountsHoldsRemotely,
    HasOutbox,
    KnowsCharges,
    Pingable,
    Syncs,
)
from gateway.metering.memory import MemoryMeter
from gateway.metering.outbox import OutboxConsumer
from gateway.metering.redis import RedisMeter
from gateway.metering.sql import SqlMeter
from gateway.storage.redis import connect

CAPABILITIES = (Pingable, Syncs, KnowsCharges, HasOutbox, CountsHolds, CountsHoldsRemotely)


def allotment(plan: str, custom: int | None) -> int:
    return custom or 100


def declared(meter: object) -> set[str]:
    return {c.__name__ for c in CAPABILITIES if isinstance(meter, c)}


def test_each_meter_declares_what_it_offers(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'caps.db'}")
    clock = SystemClock()

    async def redis_meter() -> set[str]:  # built, never started: nothing connects
        url = "redis://127.0.0.1:1"
        meter = RedisMeter(connect(url, timeout=0.1), engine, clock, allotment, hold_ttl=60,
                           outbox=OutboxConsumer(connect(url, timeout=0.1), engine))
        found = declared(meter)
        assert isinstance(meter, HasOutbox) and meter.outbox is not None
        await meter.close()
        return found

    memory = MemoryMeter(engine, GroupWriter(engine), clock, allotment, hold_ttl=60)
    assert declared(memory) == {"Syncs", "CountsHolds"}
    assert declared(SqlMeter(engine, clock, allotment, hold_ttl=60)) == set()
    assert asyncio.run(redis_meter()) == {"Pingable", "Syncs", "KnowsCharges", "HasOutbox",
                                          "CountsHoldsRemotely"}
