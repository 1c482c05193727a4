"""POST /v1/chat/completions/preview: what a request would cost, reserving nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError
from gateway.types import Caller, ChatRequest

if TYPE_CHECKING:
    from gateway.flow.pipeline import Pipeline


async def preview(p: Pipeline, caller: Caller, req: ChatRequest,
                  provider_key: str | None) -> dict[str, Any]:
    model = p.decider.chat_model(req.model)
    decision = await p.decider.decide(model, caller, provider_key)
    cost = model.credits * req.n if decision.metered else 0
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
    }
