"""The request flow: the only module that knows the order of the steps.

    1. resolve the model in the catalog            400 model_not_found
    2. billing decision: local | byo | unmetered | metered   (400 byo_not_allowed)
    3. the route's parameter check                 400 unsupported_parameter
    4. metered only: reserve n x credits           402 / 503
    5. call the provider                           502 / 504 / provider 4xx
    6. success: settle (charge + ledger entry, durable before the last byte)
       failure: void -- in `finally`, shielded from cancellation
       unmetered: a zero-credit ledger entry, never blocking the reply
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import Response

from gateway.catalog import Catalog
from gateway.clock import Clock, now_ms
from gateway.errors import (
    ByoNotAllowed,
    GatewayError,
    InvalidRequest,
    ServiceUnavailable,
    UpstreamError,
)
from gateway.ledger.recorder import Recorder
from gateway.metering.base import Meter
from gateway.providers.registry import Providers
from gateway.settings import Settings
from gateway.streaming import MeteredStream
from gateway.types import (
    BillingMode,
    Caller,
    ChatRequest,
    Hold,
    LedgerEntry,
    ModelEntry,
    ProviderCall,
)

PROVIDER_KEY_HEADER = "x-bookbag-provider-key"
StoredKey = Callable[[str, str], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class Decision:
    mode: BillingMode
    api_key: str | None
    reason: str | None

    @property
    def metered(self) -> bool:
        return self.mode is BillingMode.METERED


async def _no_stored_key(_workspace_id: str, _provider: str) -> str | None:
    return None


class Pipeline:
    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        clock: Clock,
        meter: Meter,
        recorder: Recorder,
        providers: Providers,
        stored_byo_key: StoredKey = _no_stored_key,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.clock = clock
        self.meter = meter
        self.recorder = recorder
        self.providers = providers
        self._stored_byo_key = stored_byo_key

    # --- decisions ------------------------------------------------------

    def chat_model(self, name: str) -> ModelEntry:
        model = self.catalog.resolve(name)
        if model.kind != "chat":
            raise InvalidRequest(
                f"`{model.id}` is an embedding model; use POST /v1/embeddings.", param="model"
            )
        return model

    async def decide(self, model: ModelEntry, caller: Caller,
                     headers: Mapping[str, str]) -> Decision:
        """Precedence: local -> header key -> workspace BYO key -> metering off -> metered."""
        header_key = headers.get(PROVIDER_KEY_HEADER)
        if model.provider == "local":
            return Decision(BillingMode.LOCAL, None, "local_model")
        if header_key is not None:
            if not model.byo:
                raise ByoNotAllowed(
                    f"`{model.id}` does not accept a provider key: it runs on an endpoint "
                    "configured by the gateway operator.",
                    param=PROVIDER_KEY_HEADER,
                )
            if not header_key.strip():
                raise InvalidRequest("X-Bookbag-Provider-Key is empty.", param=PROVIDER_KEY_HEADER)
            return Decision(BillingMode.BYO, header_key.strip(), "byo_header")
        if model.byo:
            stored = await self._stored_byo_key(caller.workspace_id, model.provider)
            if stored:
                return Decision(BillingMode.BYO, stored, "byo_workspace")
        own_key = self.settings.provider_key(model.provider, model.api_key_env)
        if not self.settings.metering:
            return Decision(BillingMode.UNMETERED, own_key, "metering_off")
        if not model.metered:
            return Decision(BillingMode.UNMETERED, own_key, "model_unmetered")
        return Decision(BillingMode.METERED, own_key, None)

    def _own_key_required(self, model: ModelEntry, decision: Decision) -> None:
        if decision.mode is not BillingMode.LOCAL and not decision.api_key and not model.api_base:
            raise UpstreamError(f"No provider key is configured for `{model.id}`.")

    def _call(self, model: ModelEntry, req: ChatRequest, decision: Decision) -> ProviderCall:
        body = dict(req.body)
        body["model"] = model.upstream_model
        if req.stream:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return ProviderCall(model, body, decision.api_key, decision.mode is BillingMode.BYO,
                            self.settings.provider_timeouts)

    def _entry(self, request_id: str, caller: Caller, req: ChatRequest, model: ModelEntry,
               decision: Decision) -> LedgerEntry:
        return LedgerEntry(
            request_id=request_id, workspace_id=caller.workspace_id, billing_mode=decision.mode,
            key_id=caller.key_id, agent_id=req.agent_id, conversation_id=req.conversation_id,
            model=model.id, provider=model.provider, replies=req.n, reason=decision.reason,
            created_ms=now_ms(self.clock),
        )

    # --- chat completions -------------------------------------------------

    async def chat(self, caller: Caller, req: ChatRequest, headers: Mapping[str, str],
                   response_headers: dict[str, str]) -> Response:
        started = time.perf_counter()
        model = self.chat_model(req.model)
        decision = await self.decide(model, caller, headers)
        await self.providers.check(model, req.body)
        self._own_key_required(model, decision)
        request_id = response_headers["x-request-id"]
        cost = model.credits * req.n if decision.metered else 0
        hold = await self.meter.reserve(caller.workspace_id, cost, request_id) \
            if decision.metered else None
        entry = self._entry(request_id, caller, req, model, decision)
        call = self._call(model, req, decision)
        provider = self.providers.for_model(model)
        if req.stream:
            return await self._stream(provider, call, req, hold, entry, cost, response_headers,
                                      started)
        return await self._complete(provider, call, hold, entry, cost, response_headers, started)

    async def _complete(self, provider: Any, call: ProviderCall, hold: Hold | None,
                        entry: LedgerEntry, cost: int, headers: dict[str, str],
                        started: float) -> Response:
        provider_started = time.perf_counter()
        try:
            completion = await provider.complete(call)
        except BaseException:
            if hold is not None:
                await asyncio.shield(self.meter.void(hold))
            raise
        provider_ms = (time.perf_counter() - provider_started) * 1000
        entry.prompt_tokens = completion.prompt_tokens
        entry.completion_tokens = completion.completion_tokens
        entry.latency_ms = int(provider_ms)
        await self._resolve(hold, entry, charge=True)
        headers["x-bookbag-credits-charged"] = str(cost)
        if hold is not None:
            balance = await self.meter.balance(hold.workspace_id)
            headers["x-bookbag-credits-remaining"] = str(balance.available)
        overhead = (time.perf_counter() - started) * 1000 - provider_ms
        headers["x-bookbag-overhead-ms"] = f"{max(overhead, 0.0):.2f}"
        return Response(completion.body, 200, headers=headers, media_type="application/json")

    async def _resolve(self, hold: Hold | None, entry: LedgerEntry, *, charge: bool) -> None:
        """Settle or void the hold (metered), or record the entry (unmetered). Shielded."""
        if hold is None:
            if charge:
                await asyncio.shield(self.recorder.record(entry))
            return
        try:
            if charge:
                await asyncio.shield(self.meter.settle(hold, entry))
            else:
                await asyncio.shield(self.meter.void(hold))
        except GatewayError:
            raise
        except Exception as exc:
            raise ServiceUnavailable(
                "The reply could not be recorded, so it was not charged; retry shortly."
            ) from exc

    async def _stream(self, provider: Any, call: ProviderCall, req: ChatRequest,
                      hold: Hold | None, entry: LedgerEntry, cost: int,
                      headers: dict[str, str], started: float) -> Response:
        provider_started = time.perf_counter()
        chunks: AsyncIterator[bytes] = provider.stream(call)
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            if hold is not None:
                await asyncio.shield(self.meter.void(hold))
            raise UpstreamError("The provider ended the stream without sending anything.") from None
        except BaseException:
            if hold is not None:
                await asyncio.shield(self.meter.void(hold))
            raise

        async def finish(charge: bool, usage: dict[str, Any] | None) -> None:
            entry.latency_ms = int((time.perf_counter() - provider_started) * 1000)
            if usage:
                entry.prompt_tokens = usage.get("prompt_tokens")
                entry.completion_tokens = usage.get("completion_tokens")
            await self._resolve(hold, entry, charge=charge)

        headers["x-bookbag-credits-reserved"] = str(cost)
        headers["cache-control"] = "no-cache"
        headers["x-accel-buffering"] = "no"
        return MeteredStream(first, chunks, finish=finish, include_usage=req.include_usage,
                             credits=cost, headers=headers)

    # --- preview and embeddings ------------------------------------------

    async def preview(self, caller: Caller, req: ChatRequest,
                      headers: Mapping[str, str]) -> dict[str, Any]:
        model = self.chat_model(req.model)
        decision = await self.decide(model, caller, headers)
        cost = model.credits * req.n if decision.metered else 0
        balance: int | None
        try:
            balance = (await self.meter.balance(caller.workspace_id)).available
        except GatewayError:
            balance = None
        return {
            "object": "chat.completion.preview",
            "model": model.id,
            "billing_mode": str(decision.mode),
            "credits_per_reply": model.credits if decision.metered else 0,
            "replies": req.n,
            "credits_if_sent": cost,
            "balance": balance,
            "would_be_refused": bool(decision.metered and (balance is None or cost > balance)),
        }

    async def embeddings(self, caller: Caller, body: dict[str, Any],
                         headers: Mapping[str, str]) -> bytes:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("you must provide a model parameter", param="model")
        if body.get("input") is None:
            raise InvalidRequest("Missing required parameter: 'input'.", param="input")
        model = self.catalog.resolve(name)
        if model.kind != "embedding":
            raise InvalidRequest(f"`{model.id}` is not an embedding model.", param="model")
        decision = await self.decide(model, caller, headers)
        self._own_key_required(model, decision)
        call = ProviderCall(model, {**body, "model": model.upstream_model}, decision.api_key,
                            decision.mode is BillingMode.BYO, self.settings.provider_timeouts)
        result: bytes = await self.providers.for_model(model).embed(call)
        return result


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)
