"""A chat completion through the flow: the only code that knows the order of the steps.

    0. with an Idempotency-Key: validate and hash it   400
    1. resolve the model in the catalog                400 model_not_found
    2. billing decision: local | byo | unmetered | metered   (400 byo_not_allowed)
       metered with the rate limit unchecked            503 (ratelimit.fail_closed)
    2b. Responses: tenancy (a previous_response_id looked up) 400
    3. the route's parameter check                      400 unsupported_parameter
    3b. with an Idempotency-Key: claim it               Replay | 409 | 422
    4. the in-flight cap, then metered only: reserve    429 / 402 / 503
    5. call the provider                                502 / 504 / provider 4xx
    6. success: settle (charge + ledger entry, durable before the last byte)
       failure: `Settlement.abandon` voids -- the one place, shielded
       unmetered: a zero-credit ledger entry, never blocking the reply
    7. after a charge: auto-recharge and balance webhooks (`after_charge`, in the background)
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.errors import GatewayError, UpstreamError
from gateway.flow import billed_features
from gateway.flow import responses as responses_flow
from gateway.flow.call import ChatCall
from gateway.flow.outcome import JsonReply, Outcome, StreamReply
from gateway.flow.ratelimit import fail_closed
from gateway.flow.settlement import Settlement
from gateway.idempotency.service import (
    MAX_KEY_LENGTH,
    Claim,
    IdempotencyKey,
    Replay,
    json_response,
    key_of,
)
from gateway.providers.base import Provider
from gateway.types import CHAT, RESPONSES, Caller, ProviderCall

if TYPE_CHECKING:
    from gateway.flow.pipeline import Pipeline

log = logging.getLogger("bookbag.pipeline")


def _nothing() -> None:
    return None


def scoped(key: IdempotencyKey | None, dialect: str) -> IdempotencyKey | None:
    """The key scoped by route (SPEC: by workspace and route): a chat key stays as sent,
    another dialect's is prefixed with it (hashed when the prefix would make it too long),
    so one key on two routes is two keys, each replaying in its own dialect."""
    if key is None or dialect == CHAT:
        return key
    name = f"{dialect}:{key.key}"
    if len(name) > MAX_KEY_LENGTH:
        name = f"{dialect}:sha256:{hashlib.sha256(key.key.encode()).hexdigest()}"
    return IdempotencyKey(name, key.body_hash)


async def chat(p: Pipeline, caller: Caller, call: ChatCall) -> Outcome:
    started = time.perf_counter()
    req = call.request
    key = scoped(key_of(call.idempotency_key,
                        call.sent_body if call.sent_body is not None else req.body), req.dialect)
    model = p.decider.chat_model(req.model)
    call.report.model = model.id  # the log line names it even if the request fails here
    decision = await p.decider.decide(model, caller, call.provider_key)
    fail_closed(caller, metered=decision.metered)
    if req.dialect == RESPONSES:
        await responses_flow.prepare(p.responses, model, caller, req.body,
                                     house_pays=decision.house_pays,
                                     stores=p.settings.responses_store)
    else:
        billed_features.check(model, req.body, house_pays=decision.house_pays,
                              dialect=req.dialect, betas=req.betas)
    await p.providers.check(model, req.body, req.dialect)
    p.decider.own_key_required(model, decision)
    request_id = call.request_id
    claim: Claim | None = None
    if key is not None and p.idempotency is not None:
        claimed = await p.idempotency.claim(caller.workspace_id, key, request_id,
                                            metered=decision.metered)
        if isinstance(claimed, Replay):
            return claimed
        claim = claimed
        p.crash("after_claim")
    entry = p.decider.entry(request_id, caller, req, model, decision)
    settlement = Settlement(p.books, entry, claim)
    release = _nothing
    try:
        if model.provider != "local":  # the in-flight cap, before anything is reserved
            release = p.inflight.acquire(caller.workspace_id)
        call.report.entry = entry  # the request's log line and metrics read it when it ends
        cost = model.credits * req.n if decision.metered else 0
        if decision.metered:  # caps bind metered requests only
            settlement.hold = await p.meter.reserve(caller.workspace_id, cost, request_id,
                                                    caller.caps)
            p.crash("after_reserve")
        provider_call = p.decider.chat_call(model, req, decision)
        provider = p.providers.for_model(model, req.dialect)
        if req.stream:
            return await _stream(p, provider, provider_call, call, settlement, cost, release)
        try:
            return await _complete(p, provider, provider_call, settlement, cost, started)
        finally:
            release()
    except BaseException:
        release()
        await settlement.abandon()  # void the hold and give the key back, unless resolved
        raise


async def _complete(p: Pipeline, provider: Provider, call: ProviderCall,
                    settlement: Settlement, cost: int, started: float) -> JsonReply:
    provider_started = time.perf_counter()
    completion = await provider.complete(call)
    p.crash("after_provider")
    provider_ms = (time.perf_counter() - provider_started) * 1000
    entry = settlement.entry
    if call.dialect == RESPONSES:
        responses_flow.record_reply(p.responses, entry, completion.body)
    entry.prompt_tokens = completion.prompt_tokens
    entry.completion_tokens = completion.completion_tokens
    entry.latency_ms = int(provider_ms)
    headers = {"x-bookbag-credits-charged": str(cost)}
    stored = json_response(completion.body, headers) if settlement.claim is not None else None
    balance = await settlement.charge(stored)
    hold = settlement.hold
    if hold is not None:
        try:
            if balance is None:
                balance = await p.meter.balance(hold.workspace_id)
        except GatewayError:  # the reply is charged: a failed read costs only the header
            log.warning("no remaining balance for the reply of %s", entry.request_id)
        if balance is not None:
            headers["x-bookbag-credits-remaining"] = str(balance.available)
        p.books.after(hold, True, balance)
    overhead = (time.perf_counter() - started) * 1000 - provider_ms
    headers["x-bookbag-overhead-ms"] = f"{max(overhead, 0.0):.2f}"
    return JsonReply(completion.body, headers)


async def _stream(p: Pipeline, provider: Provider, call: ProviderCall, chat_call: ChatCall,
                  settlement: Settlement, cost: int, release: Callable[[], None]) -> StreamReply:
    provider_started = time.perf_counter()
    chunks = provider.stream(call)
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        raise UpstreamError("The provider ended the stream without sending anything.") from None
    if call.dialect == RESPONSES:
        responses_flow.record_stream(p.responses, settlement.entry, first)
    headers = {"x-bookbag-credits-reserved": str(cost)}
    settlement.streaming(headers, started=provider_started, on_end=release)
    return StreamReply(first, chunks, settlement, headers,
                       include_usage=chat_call.request.include_usage, credits=cost)
