"""POST /v1/chat/completions/preview: what a request would cost, reserving nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError
from gateway.flow import billed_features
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
    }


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
