"""POST /v1/embeddings: passed to the provider, never charged (but counted in flight)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.errors import InvalidRequest
from gateway.types import BillingMode, Caller, ProviderCall

if TYPE_CHECKING:
    from gateway.flow.pipeline import Pipeline


async def embeddings(p: Pipeline, caller: Caller, body: dict[str, Any],
                     provider_key: str | None) -> bytes:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("you must provide a model parameter", param="model")
    if body.get("input") is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    model = p.catalog.resolve(name)
    if model.kind != "embedding":
        raise InvalidRequest(f"`{model.id}` is not an embedding model.", param="model")
    decision = await p.decider.decide(model, caller, provider_key)
    await p.providers.check(model, body)  # litellm: the same parameter allowlist as chat
    p.decider.own_key_required(model, decision)
    call = ProviderCall(model, {**body, "model": model.upstream_model}, decision.api_key,
                        decision.mode is BillingMode.BYO, p.settings.provider_timeouts)
    release = p.inflight.acquire(caller.workspace_id)
    try:
        result: bytes = await p.providers.for_model(model).embed(call)
    finally:
        release()
    return result
