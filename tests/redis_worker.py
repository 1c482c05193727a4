"""A reserving process for the multi-process Redis test (light imports: it starts fast).

    python -m tests.redis_worker REDIS_URL DB_URL PREFIX WORKSPACE N CLOCK TAG

Warms up (seeds the workspace, opens its connections), prints READY, reads a
wall-clock start time on stdin, and from that instant reserves N times (costs
alternating 1 and 2) in waves of 20 concurrent reserves; prints one JSON line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time

from gateway.clock import ManualClock
from gateway.errors import InsufficientCredits
from gateway.metering.redis import RedisMeter
from gateway.metering.redis_keys import Layout
from gateway.storage.database import make_engine
from gateway.storage.redis import connect
from gateway.types import Hold

WAVE = 20


async def main(redis_url: str, sql_url: str, prefix: str, workspace_id: str, n: int,
               clock: float, tag: str) -> None:
    engine = make_engine(sql_url)
    meter = RedisMeter(connect(redis_url, timeout=2.0), engine, ManualClock(clock),
                       lambda plan, custom: custom or 0, hold_ttl=60.0, sync_interval=3600.0,
                       sweep_interval=3600.0, layout=Layout(prefix))
    await meter.start()
    try:
        await asyncio.gather(*(meter.balance(workspace_id) for _ in range(WAVE)))
        print("READY", flush=True)
        go = float(await asyncio.to_thread(sys.stdin.readline))
        await asyncio.sleep(max(0.0, go - time.time()))
        began = time.time()
        results: list[object] = []
        for first in range(0, n, WAVE):
            results += await asyncio.gather(
                *(meter.reserve(workspace_id, 1 + i % 2, f"{tag}-{i}")
                  for i in range(first, min(first + WAVE, n))),
                return_exceptions=True)
        holds = [dataclasses.asdict(r) for r in results if isinstance(r, Hold)]
        refused = sum(isinstance(r, InsufficientCredits) for r in results)
        errors = [repr(r) for r in results
                  if isinstance(r, BaseException) and not isinstance(r, InsufficientCredits)]
        print(json.dumps({"holds": holds, "refused": refused, "errors": errors,
                          "began": began, "ended": time.time()}), flush=True)
    finally:
        await meter.close()
        engine.dispose()


if __name__ == "__main__":
    url, db, prefix, ws, count, at, name = sys.argv[1:8]
    asyncio.run(main(url, db, prefix, ws, int(count), float(at), name))
