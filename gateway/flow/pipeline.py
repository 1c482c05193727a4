"""The request flow: the only module that knows the order of the steps.

    1. resolve the model in the catalog            400 model_not_found
    2. billing decision: local | byo | unmetered | metered   (400 byo_not_allowed)
    3. the route's parameter check                 400 unsupported_parameter
    3b. with an Idempotency-Key: claim it          replay | 409 | 422 (idempotency.py)
    4. metered only: reserve n x credits           402 / 503
    5. call the provider                           502 / 504 / provider 4xx
    6. success: settle (charge + ledger entry, durable before the last byte)
       failure: void -- in `finally`, shielded from cancellation
       unmetered: a zero-credit ledger entry, never blocking the reply
    7. after a charge: auto-recharge and balance webhooks (`after_charge`, in the background)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import Response

from gateway.catalog import Catalog
from gateway.clock import Clock, now_ms
from gateway.crashpoints import Crash, no_crash
from gateway.errors import (
    ByoNotAllowed,
    ChargeUnconfirmed,
    GatewayError,
    InvalidRequest,
    ServiceUnavailable,
    UpstreamError,
)
from gateway.flow import billed_features
from gateway.flow.inflight import InFlight
from gateway.flow.provider_keys import missing_key
from gateway.flow.stream import MeteredStream
from gateway.idempotency.service import Claim, Idempotency, IdempotencyKey, Replay
from gateway.idempotency.service import json_response as stored_json
from gateway.idempotency.service import sse_response as stored_sse
from gateway.idempotency.store import StoredResponse
from gateway.ledger.recorder import Recorder
from gateway.metering.base import Meter
from gateway.observability.logs import RequestRecord
from gateway.providers.registry import Providers
from gateway.settings import Settings
from gateway.types import (
    Balance,
    BillingMode,
    Caller,
    ChatRequest,
    Hold,
    LedgerEntry,
    ModelEntry,
    ProviderCall,
)

log = logging.getLogger("bookbag.pipeline")

PROVIDER_KEY_HEADER = "x-bookbag-provider-key"
StoredKey = Callable[[str, str], Awaitable[str | None]]
AfterCharge = Callable[[Hold, Balance | None], None]  # schedules auto-recharge and balance events


@dataclass(frozen=True, slots=True)
class Decision:
    mode: BillingMode
    api_key: str | None
    reason: str | None

    @property
    def house_pays(self) -> bool:
        """The gateway's own provider key pays (metered or not): billed_features apply."""
        return self.mode in (BillingMode.METERED, BillingMode.UNMETERED)

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
        idempotency: Idempotency | None = None,
        after_charge: AfterCharge | None = None,
        crash: Crash = no_crash,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.clock = clock
        self.meter = meter
        self.recorder = recorder
        self.providers = providers
        self._stored_byo_key = stored_byo_key
        self.idempotency = idempotency
        self._after_charge = after_charge
        self._crash = crash  # test-only crash points (crashpoints.py); a no-op in production
        self.inflight = InFlight(settings.max_inflight_per_workspace)

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
            raise missing_key(model)  # a 400 saying what to set: a retry cannot fix it

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
                   response_headers: dict[str, str],
                   idempotency_key: IdempotencyKey | None = None,
                   record: RequestRecord | None = None) -> Response:
        started = time.perf_counter()
        model = self.chat_model(req.model)
        if record is not None:
            record.model = model.id  # the log line names it even if the request fails here
        decision = await self.decide(model, caller, headers)
        if decision.metered and caller.rate_unchecked:
            raise ServiceUnavailable("The rate-limit store is unavailable; retry shortly.")
        billed_features.check(model, req.body, house_pays=decision.house_pays)
        await self.providers.check(model, req.body)
        self._own_key_required(model, decision)
        request_id = response_headers["x-request-id"]
        claim: Claim | None = None
        if idempotency_key is not None and self.idempotency is not None:
            claimed = await self.idempotency.claim(caller.workspace_id, idempotency_key,
                                                   request_id, metered=decision.metered)
            if isinstance(claimed, Replay):
                return claimed.render(response_headers)
            claim = claimed
            self._crash("after_claim")
        release = _nothing
        try:
            if model.provider != "local":  # the in-flight cap, before anything is reserved
                release = self.inflight.acquire(caller.workspace_id)
            entry = self._entry(request_id, caller, req, model, decision)
            if record is not None:
                record.entry = entry  # the request's log line and metrics read it when it ends
            cost = model.credits * req.n if decision.metered else 0
            hold = await self.meter.reserve(caller.workspace_id, cost, request_id, caller.caps) \
                if decision.metered else None  # caps bind metered requests only
            if hold is not None:
                self._crash("after_reserve")
            call = self._call(model, req, decision)
            provider = self.providers.for_model(model)
            if req.stream:
                return await self._stream(provider, call, req, hold, entry, cost, response_headers,
                                          started, claim, release)
            try:
                return await self._complete(provider, call, hold, entry, cost, response_headers,
                                            started, claim)
            finally:
                release()
        except BaseException:
            release()
            if claim is not None:  # failed before a reply existed: the key can be used again
                await claim.release()
            raise

    async def _complete(self, provider: Any, call: ProviderCall, hold: Hold | None,
                        entry: LedgerEntry, cost: int, headers: dict[str, str],
                        started: float, claim: Claim | None = None) -> Response:
        provider_started = time.perf_counter()
        try:
            completion = await provider.complete(call)
        except BaseException:
            if hold is not None:
                await asyncio.shield(self.meter.void(hold))
                self._crash("after_void")
            raise
        self._crash("after_provider")
        provider_ms = (time.perf_counter() - provider_started) * 1000
        entry.prompt_tokens = completion.prompt_tokens
        entry.completion_tokens = completion.completion_tokens
        entry.latency_ms = int(provider_ms)
        if claim is None:
            balance = await self._resolve(hold, entry, charge=True)
        else:
            stored = stored_json(completion.body, {"x-bookbag-credits-charged": str(cost)})
            balance = await self._resolve_claimed(claim, hold, entry, charge=True, response=stored)
        headers["x-bookbag-credits-charged"] = str(cost)
        if hold is not None:
            try:
                if balance is None:
                    balance = await self.meter.balance(hold.workspace_id)
            except GatewayError:  # the reply is charged: a failed read costs only the header
                log.warning("no remaining balance for the reply of %s", entry.request_id)
            if balance is not None:
                headers["x-bookbag-credits-remaining"] = str(balance.available)
            self._charged(hold, True, balance)
        overhead = (time.perf_counter() - started) * 1000 - provider_ms
        headers["x-bookbag-overhead-ms"] = f"{max(overhead, 0.0):.2f}"
        return Response(completion.body, 200, headers=headers, media_type="application/json")

    def _charged(self, hold: Hold | None, charge: bool, balance: Balance | None = None) -> None:
        """A metered reply was settled: let auto-recharge and the balance events look."""
        if charge and hold is not None and self._after_charge is not None:
            self._after_charge(hold, balance)

    async def _resolve(self, hold: Hold | None, entry: LedgerEntry, *,
                       charge: bool) -> Balance | None:
        """Settle or void the hold (metered), or record the entry (unmetered). Shielded.
        Returns the balance after a settle when the meter read it on the way (else None)."""
        if hold is None:
            if charge:
                await asyncio.shield(self.recorder.record(entry))
                self._crash("after_settle")
            return None
        try:
            if charge:
                balance = await asyncio.shield(self.meter.settle(hold, entry))
                self._crash("after_settle")
                return balance
            await asyncio.shield(self.meter.void(hold))
            self._crash("after_void")
            return None
        except Exception as exc:
            if not charge:  # the hold stays until it expires: nothing is charged either way
                if isinstance(exc, GatewayError):
                    raise
                raise ServiceUnavailable("The hold could not be released; it expires.") from exc
            # A failed settle may still have been applied (its reply lost with the connection,
            # or run late by a store that was paused), so "not charged" could be false. Give
            # the credits back if the hold is still there (a void fences out a late settle),
            # and say that the charge is unconfirmed.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.meter.void(hold))
            raise ChargeUnconfirmed(
                "The reply's charge could not be confirmed: it was charged once or not at all. "
                "Retry with the same Idempotency-Key to get this reply without a second charge.",
                headers={"x-should-retry": "false"},  # an SDK retry without the key could
            ) from exc                                # charge a second reply

    async def _resolve_claimed(self, claim: Claim, hold: Hold | None, entry: LedgerEntry, *,
                               charge: bool, response: StoredResponse | None) -> Balance | None:
        """`_resolve` for a request holding an Idempotency-Key: the response is staged
        before the charge and the key marked done after it; nothing charged releases it.
        A failed settle keeps the key (it may have committed): idempotency.py recovers it."""
        if not charge:
            try:
                await self._resolve(hold, entry, charge=False)
            finally:
                await claim.release()
            return None
        if response is not None:
            try:
                await claim.stage(response)
            except BaseException as exc:
                try:
                    if hold is None and isinstance(exc, Exception):
                        # Unmetered: no charge to protect; the reply never fails for the key.
                        return await self._resolve(hold, entry, charge=True)
                    await self._resolve(hold, entry, charge=False)
                finally:
                    await claim.release()
                raise
        balance = await self._resolve(hold, entry, charge=True)
        await claim.finish()
        return balance

    async def _stream(self, provider: Any, call: ProviderCall, req: ChatRequest,
                      hold: Hold | None, entry: LedgerEntry, cost: int,
                      headers: dict[str, str], started: float,
                      claim: Claim | None = None,
                      release: Callable[[], None] | None = None) -> Response:
        provider_started = time.perf_counter()
        chunks: AsyncIterator[bytes] = provider.stream(call)
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            if hold is not None:
                await asyncio.shield(self.meter.void(hold))
                self._crash("after_void")
            raise UpstreamError("The provider ended the stream without sending anything.") from None
        except BaseException:
            if hold is not None:
                await asyncio.shield(self.meter.void(hold))
                self._crash("after_void")
            raise

        async def finish(charge: bool, usage: dict[str, Any] | None) -> None:
            if release is not None:
                release()  # the stream has ended: its in-flight slot is free
            entry.latency_ms = int((time.perf_counter() - provider_started) * 1000)
            if usage:
                entry.prompt_tokens = usage.get("prompt_tokens")
                entry.completion_tokens = usage.get("completion_tokens")
            if charge:
                self._crash("after_provider")
            if claim is None:
                self._charged(hold, charge, await self._resolve(hold, entry, charge=charge))
                return
            # Only a stream that reached its end is replayable; one whose client left
            # after content is charged and marked done without a response.
            stored = stored_sse(events, headers) if events is not None and stream.completed \
                else None
            self._charged(hold, charge, await self._resolve_claimed(
                claim, hold, entry, charge=charge, response=stored))

        headers["x-bookbag-credits-reserved"] = str(cost)
        headers["cache-control"] = "no-cache"
        headers["x-accel-buffering"] = "no"
        events: list[bytes] | None = [] if claim is not None else None
        stream = MeteredStream(first, chunks, finish=finish, include_usage=req.include_usage,
                               credits=cost, headers=headers, events=events, crash=self._crash)
        return stream

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
        await self.providers.check(model, body)  # litellm: the same parameter allowlist as chat
        self._own_key_required(model, decision)
        call = ProviderCall(model, {**body, "model": model.upstream_model}, decision.api_key,
                            decision.mode is BillingMode.BYO, self.settings.provider_timeouts)
        release = self.inflight.acquire(caller.workspace_id)
        try:
            result: bytes = await self.providers.for_model(model).embed(call)
        finally:
            release()
        return result


def _nothing() -> None:
    return None


def new_request_id() -> str:
    # 128 random bits as 32 hex digits, like uuid4().hex but ~5x cheaper (measured 9 us vs 1.7 us).
    return "req_" + os.urandom(16).hex()


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)
