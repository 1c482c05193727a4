"""POST /v1/chat/completions/preview: what a request would cost, reserving nothing."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError
from gateway.flow import billed_features, fallback
from gateway.flow.decide import Decision
from gateway.types import Caller, ChatRequest, ModelEntry

if TYPE_CHECKING:
    from gateway.flow.pipeline import Pipeline


async def preview(p: Pipeline, caller: Caller, req: ChatRequest,
                  provider_key: str | None) -> dict[str, Any]:
    model = p.decider.chat_model(req.model)
    decision = await p.decider.decide(model, caller, provider_key)
    cost = model.credits * req.n if decision.metered else 0
    refused = await _parameters(p, model, req, house_pays=decision.house_pays)
    balance: int | None
    try:
        balance = (await p.meter.balance(caller.workspace_id)).available
    except GatewayError:
        balance = None
    chain = await _chain(p, caller, req, model, decision, balance) if model.fallbacks else None
    return {
        "object": "chat.completion.preview",
        "model": model.id,
        "billing_mode": str(decision.mode),
        "credits_per_reply": model.credits if decision.metered else 0,
        "replies": req.n,
        "credits_if_sent": cost,
        "balance": balance,
        "would_be_refused": bool(decision.metered and (balance is None or cost > balance)),
        "parameters_refusal": refused,  # the dry-run's `parameters` verdict (admission.py)
        **({"fallbacks": chain} if chain is not None else {}),
    }


async def _chain(p: Pipeline, caller: Caller, req: ChatRequest, model: ModelEntry,
                 decision: Decision, balance: int | None) -> dict[str, Any]:
    """The chain a real request would try (flow/fallback.py), what it would hold at worst
    (n x the dearest member that fits the balance and caps), and each member skipped and
    why. Unmetered: nothing is held; a balance that cannot be read skips nothing for it."""
    found = await fallback.chain(p, model, caller, req, decision, copy.deepcopy(req.body))
    worst = 0
    if decision.metered:
        room = balance
        if room is not None and caller.caps:
            try:
                used = await p.meter.cap_usage(caller.workspace_id, caller.caps)
                room = min([room, *(c.credits - used[c.subject] for c in caller.caps)])
            except GatewayError:
                pass
        price = max([model.credits, *(m.model.credits for m in found.members
                                      if room is None or req.n * m.model.credits <= room)])
        found.within(price)
        worst = req.n * price
    return {"chain": [m.model.id for m in found.members], "worst_case_credits": worst,
            "skipped": [{"model": model_id, "reason": why} for model_id, why in found.skipped]}


async def _parameters(p: Pipeline, model: ModelEntry, req: ChatRequest, *,
                      house_pays: bool) -> GatewayError | None:
    """What the request's parameters would meet before any credit moves: the features
    that change the provider's bill (billed_features) and the route's own check. On a copy
    of the body: the real request's check adds the entry's output cap to it."""
    try:
        billed_features.check(model, dict(req.body), house_pays=house_pays,
                              dialect=req.dialect, betas=req.betas)
        await p.providers.check(model, dict(req.body), req.dialect)
    except GatewayError as exc:
        return exc
    return None
