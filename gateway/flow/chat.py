"""A chat completion through the flow: the only code that knows the order of the steps.

    0. with an Idempotency-Key: validate and hash it   400
    1. resolve the model in the catalog                400 model_not_found
    2. billing decision: local | byo | unmetered | metered   (400 byo_not_allowed)
       metered with the rate limit unchecked            503 (ratelimit.fail_closed)
    2b. Responses: tenancy (a previous_response_id looked up) 400
    3. the route's parameter check                      400 unsupported_parameter
    3b. with an Idempotency-Key: claim it               Replay | 409 | 422
    4. the in-flight cap, then metered only: reserve    429 / 402 / 503
       (an entry with fallbacks: flow/fallback.py builds the chain and its hold)
    5. call the provider (a chain: each member in turn, within the one deadline)
                                                        502 / 504 / provider 4xx
    6. success: settle (charge + ledger entry, durable before the last byte)
       failure: `Settlement.abandon` voids -- the one place, shielded
       unmetered: a zero-credit ledger entry, never blocking the reply
    7. after a charge: auto-recharge and balance webhooks (`after_charge`, in the background)
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError
from gateway.flow import billed_features, fallback
from gateway.flow import responses as responses_flow
from gateway.flow.call import ChatCall
from gateway.flow.decide import Decision
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
from gateway.providers.base import Provider, open_stream
from gateway.types import CHAT, RESPONSES, Caller, Completion, ModelEntry, ProviderCall

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
    # The body before the checks below add the requested model's caps: each fallback
    # member is checked on its own copy.
    original = copy.deepcopy(req.body) if model.fallbacks else None
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
        if original is not None:
            return await _chain(p, caller, call, model, decision, settlement, original,
                                started, release)
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


async def _chain(p: Pipeline, caller: Caller, call: ChatCall, model: ModelEntry,
                 decision: Decision, settlement: Settlement, original: dict[str, Any],
                 started: float, release: Callable[[], None]) -> Outcome:
    """An entry with fallbacks: the chain, its hold, the attempts (flow/fallback.py); the
    reply then goes on as any other, charged n x the answering model's credits."""
    req = call.request
    found = await fallback.chain(p, model, caller, req, decision, original)
    if decision.metered:
        settlement.hold = await fallback.reserve(p, caller, call.request_id, model, found, req.n)
        p.crash("after_reserve")
    provider_started = time.perf_counter()
    answer = await fallback.attempt(p, found, req, decision, model)
    answering = answer.call.model
    entry = settlement.entry
    entry.model, entry.provider = answering.id, answering.provider
    cost = answering.credits * req.n if decision.metered else 0
    if settlement.hold is not None and cost < settlement.hold.credits:
        settlement.credits = cost  # the settle trims the hold to the answering model
    if answer.completion is None:
        assert answer.rest is not None
        return await _stream(p, None, answer.call, call, settlement, cost, release,
                             opened=(answer.first, answer.rest, provider_started))
    try:
        return await _complete(p, None, answer.call, settlement, cost, started,
                               done=(answer.completion, provider_started))
    finally:
        release()


async def _complete(p: Pipeline, provider: Provider | None, call: ProviderCall,
                    settlement: Settlement, cost: int, started: float,
                    done: tuple[Completion, float] | None = None) -> JsonReply:
    if done is None:
        assert provider is not None
        provider_started = time.perf_counter()
        completion = await provider.complete(call)
    else:  # a fallback chain's answer (flow/fallback.py)
        completion, provider_started = done
    p.crash("after_provider")
    provider_ms = (time.perf_counter() - provider_started) * 1000
    entry = settlement.entry
    if call.dialect == RESPONSES:
        responses_flow.record_reply(p.responses, entry, completion.body)
    entry.prompt_tokens = completion.prompt_tokens
    entry.completion_tokens = completion.completion_tokens
    entry.latency_ms = int(provider_ms)
    headers = {"x-bookbag-credits-charged": str(cost), "x-bookbag-model": call.model.id}
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


async def _stream(p: Pipeline, provider: Provider | None, call: ProviderCall,
                  chat_call: ChatCall, settlement: Settlement, cost: int,
                  release: Callable[[], None],
                  opened: tuple[bytes, AsyncIterator[bytes], float] | None = None,
                  ) -> StreamReply:
    if opened is None:
        assert provider is not None
        provider_started = time.perf_counter()
        first, chunks = await open_stream(provider, call)
    else:  # a fallback chain's answer: its first payload is in (flow/fallback.py)
        first, chunks, provider_started = opened
    if call.dialect == RESPONSES:
        responses_flow.record_stream(p.responses, settlement.entry, first)
    headers = {"x-bookbag-credits-reserved": str(cost), "x-bookbag-model": call.model.id}
    settlement.streaming(headers, started=provider_started, on_end=release)
    return StreamReply(first, chunks, settlement, headers,
                       include_usage=chat_call.request.include_usage, credits=cost)
