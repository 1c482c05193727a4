"""Fallbacks: the models a request may try, the hold that covers them, and the attempts.

Only a requested entry with `fallbacks` comes here (an entry without keeps chat.py's
path, unchanged). The billing decision is made once, for the requested model (decide.py):

    1. chain     the requested model, then its catalog fallbacks (expanded, catalog.py)
                 that are served the same way and can honour the request; each other
                 one is skipped with its reason:
                   billing_mode   served another way: a BYO key goes only to models of the
                                  same provider that accept one; metered only to metered,
                                  unmetered models only to unmetered ones
                   no_provider_key  the house has no key for it
                   response_state   a Responses request carrying `previous_response_id`
                                  never changes model
                   parameters     its own checks refuse the request (billed features,
                                  the route), the error's message saying why
                   circuit_open   its breaker is open, or half-open with another
                                  request's trial out (breaker.py), at the chain or
                                  when its turn comes; when no member may be tried,
                                  all are tried anyway
    2. hold      metered: n x the most expensive member that fits the balance and caps,
                 found by reserving from the most expensive price down to the requested
                 model's (whose refusal is the request's 402); dearer members: `balance`
    3. attempts  in order, inside the request's one deadline (the total provider timeout
                 bounds all of them: each attempt gets what is left): a failure before the
                 first byte -- 5xx or connection error (`upstream_error`), 429
                 (`rate_limited`), the provider's timeout (`timeout`), no first byte within
                 the member's `first_byte_timeout` while another member is left
                 (`first_byte`) -- tries the next; any other error is the request's.
                 "First byte": a stream's first event; a JSON reply's whole body (a
                 provider sends a JSON reply's head when the body is ready).
The answering model is charged n x its own credits: the settle trims the hold.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from gateway.errors import (
    DeadlineExceeded,
    GatewayError,
    InsufficientCredits,
    ProviderRejected,
    SpendCapReached,
    UpstreamError,
    UpstreamTimeout,
    deadline_exceeded,
)
from gateway.flow import billed_features
from gateway.flow import responses as responses_flow
from gateway.flow.breaker import HALF_OPEN, OPEN
from gateway.flow.decide import Decision
from gateway.providers.base import open_stream
from gateway.types import (
    RESPONSES,
    BillingMode,
    Caller,
    ChatRequest,
    Completion,
    Hold,
    ModelEntry,
    ProviderCall,
)

if TYPE_CHECKING:
    from gateway.flow.pipeline import Pipeline

FallbackSeen = Callable[[str, str, str], None]  # (requested, answering, reason): the metric


@dataclass(frozen=True, slots=True)
class Member:
    model: ModelEntry
    body: dict[str, Any]  # the request's body as checked for this model (its own caps)


@dataclass(slots=True)
class Chain:
    requested: Member
    members: list[Member]  # in the order they are tried; the requested model first
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (model id, reason)

    def skip(self, model_id: str, reason: str) -> None:
        self.skipped.append((model_id, reason))

    def within(self, price: int) -> None:
        """Keep the members of at most `price` credits, the others skipped (`balance`).
        When none is left (the requested model skipped by its breaker, the others too
        dear), the requested model is tried anyway."""
        for m in self.members:
            if m.model.credits > price:
                self.skip(m.model.id, "balance")
        self.members = [m for m in self.members if m.model.credits <= price] \
            or [self.requested]


@dataclass(slots=True)
class Answer:
    """The call that was answered (its `model` the answering one), and its reply: a
    completion, or a stream's first payload and the rest."""

    call: ProviderCall
    completion: Completion | None = None
    first: bytes = b""
    rest: AsyncIterator[bytes] | None = None


def served_differently(p: Pipeline, member: ModelEntry, requested: ModelEntry,
                       decision: Decision) -> str | None:
    """Why `member` cannot serve a request decided as `decision`, or None."""
    mode = decision.mode
    if mode is BillingMode.BYO:
        same = member.provider == requested.provider and member.byo
        return None if same else "billing_mode"
    if mode is BillingMode.METERED and not member.metered:
        return "billing_mode"
    if mode is BillingMode.UNMETERED and decision.reason == "model_unmetered" and member.metered:
        return "billing_mode"
    if mode is not BillingMode.LOCAL and not member.api_base \
            and not p.settings.provider_key(member.provider, member.api_key_env):
        return "no_provider_key"
    return None


async def chain(p: Pipeline, requested: ModelEntry, caller: Caller, req: ChatRequest,
                decision: Decision, original: dict[str, Any], *, breakers: bool = True) -> Chain:
    """The members that may serve this request, the requested model first (its checks
    were made by the caller on `req.body`); `original` is the body before those checks."""
    primary = Member(requested, req.body)
    out = Chain(primary, [primary])
    stateful = req.dialect == RESPONSES and req.body.get("previous_response_id") is not None
    for model_id in requested.fallbacks:
        member = p.catalog.models[model_id]
        why = "response_state" if stateful else served_differently(p, member, requested,
                                                                   decision)
        if why is None:
            body = copy.deepcopy(original)
            try:
                if req.dialect == RESPONSES:
                    await responses_flow.prepare(p.responses, member, caller, body,
                                                 house_pays=decision.house_pays,
                                                 stores=p.settings.responses_store)
                else:
                    billed_features.check(member, body, house_pays=decision.house_pays,
                                          dialect=req.dialect, betas=req.betas)
                await p.providers.check(member, body, req.dialect)
            except GatewayError as exc:
                why = f"parameters: {exc.message}"
            else:
                out.members.append(Member(member, body))
                continue
        out.skip(model_id, why)
    if breakers:
        allowed = [m for m in out.members if p.breakers.allows(m.model.id)]
        if allowed and len(allowed) < len(out.members):
            for m in out.members:
                if m not in allowed:
                    out.skip(m.model.id, "circuit_open")
            out.members = allowed
    return out


async def reserve(p: Pipeline, caller: Caller, request_id: str, requested: ModelEntry,
                  found: Chain, n: int) -> Hold:
    """n x the dearest member that fits the balance and caps; dearer ones are skipped."""
    prices = sorted({m.model.credits for m in found.members
                     if m.model.credits > requested.credits} | {requested.credits},
                    reverse=True)
    for price in prices:
        try:
            hold = await p.meter.reserve(caller.workspace_id, n * price, request_id,
                                         caller.caps)
        except (InsufficientCredits, SpendCapReached):
            if price == requested.credits:
                raise  # the requested model does not fit: the request's 402
            continue
        found.within(price)
        return hold
    raise AssertionError("unreachable: the requested model's price is tried last")


def _whole(error: GatewayError, requested: ModelEntry, total: float,
           past: bool) -> GatewayError:
    """The request's deadline named as a whole (an attempt saw only what was left of it):
    a timeout once the deadline has passed is the deadline's."""
    if isinstance(error, DeadlineExceeded) or (isinstance(error, UpstreamTimeout) and past):
        return deadline_exceeded(requested.id, total)
    return error


def reason_of(exc: BaseException) -> str | None:
    """The fallback reason of a failed attempt, or None: not one a fallback may fix."""
    if isinstance(exc, TimeoutError):  # our first-byte budget (asyncio.timeout)
        return "first_byte"
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, ProviderRejected):
        return "rate_limited" if exc.status == 429 else None
    if isinstance(exc, UpstreamError):
        return "upstream_error"
    return None


async def attempt(p: Pipeline, found: Chain, req: ChatRequest, decision: Decision,
                  requested: ModelEntry) -> Answer:
    """Try the members in order within the one deadline; the first to answer wins."""
    loop = asyncio.get_running_loop()
    timeouts = p.settings.provider_timeouts
    deadline = loop.time() + timeouts.total
    members = found.members
    first_reason = "circuit_open" if members[0].model is not requested else ""
    error: GatewayError | None = None
    for i, member in enumerate(members):
        model = member.model
        left = deadline - loop.time()
        if error is not None and left <= 0:  # the request's one deadline has passed
            raise deadline_exceeded(requested.id, timeouts.total) from error
        call = p.decider.chat_call(model, req, decision, body=member.body)
        # The deadline left; a BYO key stays (same provider); the house's key is the model's.
        key = decision.api_key if decision.mode is BillingMode.BYO or model is requested \
            else p.settings.provider_key(model.provider, model.api_key_env)
        call = replace(call, timeouts=replace(timeouts, total=left), api_key=key)
        provider = p.providers.for_model(model, req.dialect)
        more = i + 1 < len(members)
        admitted = p.breakers.trial(model.id)
        if admitted == OPEN and any(p.breakers.allows(m.model.id) for m in members[i + 1:]):
            # Opened, or another request took its half-open trial, since the chain was
            # made; a model is still tried when nothing after it may be.
            first_reason = first_reason or "circuit_open"
            continue
        budget = model.first_byte_timeout if more and model.first_byte_timeout < left else None
        try:
            async with asyncio.timeout(budget):
                if req.stream:
                    first, chunks = await open_stream(provider, call)  # closed if it fails
                    answer = Answer(call, first=first, rest=chunks)
                else:
                    answer = Answer(call, completion=await provider.complete(call))
        except (GatewayError, TimeoutError) as exc:
            why = reason_of(exc)
            if why is not None:
                p.breakers.failed(model.id)
            elif admitted == HALF_OPEN:  # the client's error: no verdict on the model
                p.breakers.release(model.id)
            failure = exc if isinstance(exc, GatewayError) else UpstreamTimeout(
                f"`{model.id}` sent nothing within its first-byte budget "
                f"({model.first_byte_timeout:g} s).")
            if why is None or not more:
                raise _whole(failure, requested, timeouts.total,
                             loop.time() >= deadline) from exc
            first_reason = first_reason or why
            error = failure
            continue
        except asyncio.CancelledError:
            if admitted == HALF_OPEN:
                p.breakers.release(model.id)
            raise
        p.breakers.succeeded(model.id)
        if model is not requested and p.on_fallback is not None:
            p.on_fallback(requested.id, model.id, first_reason or "upstream_error")
        return answer
    raise AssertionError("unreachable: the last member returns or raises")
