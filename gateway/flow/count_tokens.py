"""POST /v1/messages/count_tokens: a prompt's input tokens, never charged, not a reply.

No hold, no ledger entry, no Idempotency-Key (the edge ignores it), no fail-closed:
it costs nothing, so it runs when the rate-limit store is down. Its own rate-limit
buckets, per key and per workspace (agents call it dozens of times at startup and
every tenant shares the house's provider limit), are taken at admission
(`admit`). A model whose upstream speaks Messages is asked (its count_tokens, in
the in-flight cap like any provider call); any other, and an upstream without the
route (404 / 405), is estimated off the event loop
(gateway/dialects/messages/tokens.py), and the reply says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from gateway.catalog import RateLimit
from gateway.dialects.messages.tokens import estimate_off_loop
from gateway.errors import UpstreamError
from gateway.ratelimit.limiter import RateLimiter
from gateway.types import BillingMode, Caller, ChatRequest, ProviderCall

if TYPE_CHECKING:
    from gateway.flow.pipeline import Pipeline

BUCKET = "count_tokens"
PER_KEY = RateLimit(600, 60.0)  # a startup burst of dozens fits many times over
PER_WORKSPACE = RateLimit(3000, 60.0)
# What shapes the prompt (Anthropic's count_tokens takes nothing that shapes the output).
FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers")


async def admit(limiter: RateLimiter | None, caller: Caller) -> tuple[Caller, dict[str, str]]:
    if limiter is None:
        return caller, {}
    return caller, await limiter.admit_bucket(caller, BUCKET, PER_KEY, PER_WORKSPACE)


async def count_tokens(p: Pipeline, caller: Caller, req: ChatRequest,
                       provider_key: str | None) -> dict[str, Any]:
    model = p.decider.chat_model(req.model)
    decision = await p.decider.decide(model, caller, provider_key)
    counter = p.providers.token_counter(model)
    if counter is None:
        return {"input_tokens": await estimate_off_loop(req.body), "estimated": True}
    p.decider.own_key_required(model, decision)
    byo = decision.mode is BillingMode.BYO
    body = {k: req.body[k] for k in FIELDS if req.body.get(k) is not None}
    body["model"] = model.upstream_model
    betas = req.betas if byo else tuple(b for b in req.betas if b in model.anthropic_betas)
    call = ProviderCall(model, body, decision.api_key, byo, p.settings.provider_timeouts,
                        req.dialect, betas)
    release = p.inflight.acquire(caller.workspace_id)
    try:
        raw = await counter(call)
    finally:
        release()
    if raw is None:  # the upstream has no count_tokens route
        return {"input_tokens": await estimate_off_loop(req.body), "estimated": True}
    try:
        tokens = orjson.loads(raw)["input_tokens"]
        if isinstance(tokens, bool) or not isinstance(tokens, int):
            raise TypeError("input_tokens")
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise UpstreamError("The provider's token count could not be read.") from exc
    return {"input_tokens": tokens}
