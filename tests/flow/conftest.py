"""The flow built in-process: the embedded meter on SQLite, a provider double, no server.

`flow` is a `Pipeline` as the app builds it (gateway/app.py), but its
provider is `tests.doubles.ProviderDouble` and its meter is counted
(`CountingMeter` around the `MemoryMeter`); `relay` runs a stream reply
through the edge's event writer with an in-memory ASGI send/receive.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from gateway.accounts.workspaces import Accounts, allotment_of
from gateway.catalog import parse
from gateway.clock import ManualClock
from gateway.dialects.chat.parse import chat_request
from gateway.dialects.chat.stream import CHAT_STREAM
from gateway.edge.sse import SseResponse
from gateway.flow.call import ChatCall
from gateway.flow.outcome import StreamReply
from gateway.flow.pipeline import Pipeline
from gateway.idempotency.service import Idempotency
from gateway.idempotency.sql import LedgerCheck, SqlIdempotencyStore
from gateway.ledger.recorder import Recorder
from gateway.ledger.writer import GroupWriter
from gateway.metering.base import Meter
from gateway.metering.memory import MemoryMeter
from gateway.settings import Settings
from gateway.storage.database import create_schema, make_engine
from gateway.types import Caller
from tests.doubles import CountingMeter, ProviderDouble

START = 1_773_576_000.0  # 2026-03-15 12:00 UTC
ALLOTMENT = 100
CREDITS = 2  # per reply of the test model
IDLE = 3600.0  # the meter's background loops never run on their own in a test
_ids = itertools.count(1)


@dataclass
class Flow:
    pipeline: Pipeline
    provider: ProviderDouble
    meter: CountingMeter
    caller: Caller
    writer: GroupWriter
    engine: Any
    calls: list[ChatCall] = field(default_factory=list)

    async def available(self) -> int:
        return (await self.meter.balance(self.caller.workspace_id)).available

    def call(self, *, stream: bool = False, include_usage: bool = False,
             key: str | None = None, **extra: Any) -> ChatCall:
        body: dict[str, Any] = {"model": "m1", "messages": [{"role": "user", "content": "hi"}],
                                **extra}
        if stream:
            body["stream"] = True
            if include_usage:
                body["stream_options"] = {"include_usage": True}
        sent = dict(body) if key is not None else None
        req = chat_request(body, {}, self.caller)
        call = ChatCall(req, f"req_test_{next(_ids)}", None, key, sent)
        self.calls.append(call)
        return call


@pytest.fixture
async def flow(tmp_path: Path) -> AsyncIterator[Flow]:
    catalog = parse({
        "models": {"m1": {"provider": "openai", "credits": CREDITS,
                          "api_base": "http://127.0.0.1:9"}},
        "plans": {"free": {"credits": 100}, "enterprise": {"credits": "custom"}},
    })
    clock = ManualClock(START)
    engine = make_engine(f"sqlite:///{tmp_path / 'flow.db'}")
    create_schema(engine)
    writer = GroupWriter(engine)
    writer.start()

    def allotment(plan: str, custom: int | None) -> int:
        return allotment_of(catalog, plan, custom)

    inner = MemoryMeter(engine, writer, clock, allotment, hold_ttl=60.0, sync_interval=IDLE,
                        sweep_interval=IDLE)
    await inner.start()
    meter = CountingMeter(inner)
    workspace = Accounts(engine, catalog, clock).create_workspace(
        "flow", "enterprise", custom_allotment=ALLOTMENT)
    caller = Caller(workspace.id, "key_flow", None, frozenset({"inference", "read"}),
                    "enterprise")
    provider = ProviderDouble()
    idempotency = Idempotency(SqlIdempotencyStore(writer, postgres=False), clock,
                              LedgerCheck(engine), retention=3600.0, lease=60.0)
    pipeline = Pipeline(settings=Settings.from_env({}), catalog=catalog, clock=clock,
                        meter=cast(Meter, meter), recorder=Recorder(writer),
                        providers=provider, idempotency=idempotency)
    try:
        yield Flow(pipeline, provider, meter, caller, writer, engine)
    finally:
        await idempotency.close()
        await inner.close()
        await writer.close()
        engine.dispose()


@dataclass
class Relayed:
    events: list[bytes]
    task_cancelled: bool = False

    @property
    def body(self) -> bytes:
        return b"".join(self.events)


async def relay(reply: StreamReply, *, leave_after: int | None = None) -> Relayed:
    """Run the stream through the edge's writer; the client leaves once it received
    `leave_after` body messages (None: it stays to the end)."""
    out = Relayed([])
    gone = asyncio.Event()
    if leave_after == 0:
        gone.set()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            out.events.append(message["body"])
            if leave_after is not None and len(out.events) >= leave_after:
                gone.set()

    response = SseResponse(reply, CHAT_STREAM, {"x-request-id": "req_edge"})
    await response({"type": "http"}, receive, send)  # type: ignore[arg-type]
    return out
