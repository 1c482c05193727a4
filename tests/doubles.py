"""In-process doubles for the flow: a scripted provider and a counting meter.

`ProviderDouble` plays the part httpx's `MockTransport` plays for a client:
each call takes the next scripted reply (a JSON completion, a stream of
payloads, an error before or after the first payload, a stall until the test
lets it go) and is recorded, so a test can say how many calls reached the
provider. It also answers the flow's routing (`for_model`, `check`), standing
in for `gateway.providers.registry.Providers`.

`CountingMeter` wraps a real meter and counts settles and voids per request
id: "exactly once" is then a count, not an inference from balances.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.metering.base import Meter
from gateway.types import Balance, Cap, Completion, Hold, LedgerEntry, ModelEntry, ProviderCall


def chunk(content: str | None = None, *, role: str | None = None,
          finish: str | None = None) -> bytes:
    """One chat completion chunk as a provider sends it (usage null, as asked)."""
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    return orjson.dumps({"id": "chatcmpl-double", "object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                         "usage": None})


def usage_chunk(prompt: int = 3, completion: int = 2) -> bytes:
    return orjson.dumps({"id": "chatcmpl-double", "object": "chat.completion.chunk",
                         "choices": [], "usage": {"prompt_tokens": prompt,
                                                  "completion_tokens": completion,
                                                  "total_tokens": prompt + completion}})


def completion_body(text: str = "hello") -> bytes:
    return orjson.dumps({"id": "chatcmpl-double", "object": "chat.completion",
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": text}}],
                         "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                   "total_tokens": 5}})


@dataclass
class Scripted:
    """One scripted reply. A stream sends `payloads`; `error_at` (an index into them)
    raises `error` instead of sending that payload (0: before the first); `stall_at`
    waits there until `released` is set."""

    payloads: list[bytes] = field(default_factory=list)
    body: bytes | None = None  # a JSON completion
    error: BaseException | None = None
    error_at: int | None = None
    stall_at: int | None = None
    released: asyncio.Event = field(default_factory=asyncio.Event)


class ProviderDouble:
    def __init__(self) -> None:
        self.script: deque[Scripted] = deque()
        self.calls: list[ProviderCall] = []
        self.closed = 0  # streams the gateway closed or cancelled before their end
        self.finished = 0  # streams that sent all their payloads

    # --- scripting -------------------------------------------------------------

    def reply_json(self, body: bytes | None = None, *, error: BaseException | None = None) -> Scripted:
        scripted = Scripted(body=body if body is not None else completion_body(), error=error)
        self.script.append(scripted)
        return scripted

    def reply_stream(self, *payloads: bytes, error: BaseException | None = None,
               error_at: int | None = None, stall_at: int | None = None) -> Scripted:
        scripted = Scripted(list(payloads), error=error, error_at=error_at, stall_at=stall_at)
        self.script.append(scripted)
        return scripted

    # --- the Provider protocol ----------------------------------------------------

    async def complete(self, call: ProviderCall) -> Completion:
        scripted = self._next(call)
        if scripted.stall_at is not None:
            await scripted.released.wait()
        if scripted.error is not None:
            raise scripted.error
        assert scripted.body is not None, "a stream was scripted for a JSON call"
        return Completion(scripted.body, 1, 3, 2)

    def stream(self, call: ProviderCall) -> AsyncIterator[bytes]:
        return self._relay(self._next(call))

    async def embed(self, call: ProviderCall) -> bytes:
        self._next(call)
        return b'{"object": "list", "data": []}'

    async def close(self) -> None:
        return None

    async def _relay(self, scripted: Scripted) -> AsyncIterator[bytes]:
        try:
            for i, payload in enumerate([*scripted.payloads, b""]):
                if i == scripted.stall_at:
                    await scripted.released.wait()
                if i == scripted.error_at and scripted.error is not None:
                    raise scripted.error
                if i == len(scripted.payloads):
                    break
                yield payload
            self.finished += 1
        except (GeneratorExit, asyncio.CancelledError):  # closed, or cancelled mid-read
            self.closed += 1
            raise

    def _next(self, call: ProviderCall) -> Scripted:
        self.calls.append(call)
        assert self.script, "the provider double was called more often than scripted"
        return self.script.popleft()

    # --- the flow's routing (gateway.flow.pipeline.ProviderRoutes) ------------------

    def for_model(self, model: ModelEntry, dialect: str = "chat") -> ProviderDouble:
        return self

    async def check(self, model: ModelEntry, body: dict[str, Any],
                    dialect: str = "chat") -> None:
        return None

    def token_counter(self, model: ModelEntry) -> None:
        return None  # estimated: the double counts no tokens


class CountingMeter:
    """A real meter, with its settles and voids counted per request id."""

    def __init__(self, meter: Meter) -> None:
        self.inner = meter
        self.settled: Counter[str] = Counter()
        self.voided: Counter[str] = Counter()
        self.reserved: Counter[str] = Counter()

    async def reserve(self, workspace_id: str, credits: int, request_id: str,
                      caps: tuple[Cap, ...] = ()) -> Hold:
        hold = await self.inner.reserve(workspace_id, credits, request_id, caps)
        self.reserved[request_id] += 1
        return hold

    async def settle(self, hold: Hold, entry: LedgerEntry,
                     credits: int | None = None) -> Balance | None:
        self.settled[hold.request_id] += 1
        return await self.inner.settle(hold, entry, credits)

    async def void(self, hold: Hold) -> None:
        self.voided[hold.request_id] += 1
        await self.inner.void(hold)

    async def balance(self, workspace_id: str) -> Balance:
        return await self.inner.balance(workspace_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
