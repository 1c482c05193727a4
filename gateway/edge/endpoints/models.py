"""GET /v1/models and /v1/models/{id}: the catalog with credits, metering and aliases."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.edge.request import authenticate, endpoint, json_response, services
from gateway.errors import ModelNotFound, NotFound
from gateway.flow.provider_keys import available, house_key_env
from gateway.settings import Settings
from gateway.types import ModelEntry

OWNED_BY = {"local": "bookbag", "openai": "openai", "anthropic": "anthropic"}


def describe(model: ModelEntry, created: int, settings: Settings) -> dict[str, Any]:
    usable = available(model, settings)
    return {
        "id": model.id,
        "object": "model",
        "created": created,
        "owned_by": OWNED_BY.get(model.provider, model.provider),
        "kind": model.kind,
        "credits_per_reply": model.credits,
        "metered": model.metered,
        "byo": model.byo,
        "aliases": list(model.aliases),
        # What the house's key allows beyond the fixed price (billed_features.py).
        "max_output_tokens": model.max_output_tokens,
        "service_tiers": ["auto", "default", *model.service_tiers],
        "hosted_tools": list(model.hosted_tools),
        # false: the gateway has no key for it (`requires` names the variable); a BYO key
        # (X-Bookbag-Provider-Key, or one stored for the workspace) still reaches a byo model
        "available": usable,
        **({} if usable else {"requires": house_key_env(model)}),
    }


@endpoint
async def list_models(request: Request, headers: dict[str, str]) -> Response:
    await authenticate(request, "inference")
    svc = services(request)
    data = [describe(m, svc.inference.started, svc.settings) for m in svc.inference.catalog.models.values()]
    return json_response({"object": "list", "data": data}, headers=headers)


@endpoint
async def get_model(request: Request, headers: dict[str, str]) -> Response:
    await authenticate(request, "inference")
    svc = services(request)
    try:
        model = svc.inference.catalog.resolve(request.path_params["model_id"])
    except ModelNotFound as exc:  # a missing resource here, as in OpenAI's API: 404
        raise NotFound(exc.message, param="model", code="model_not_found") from None
    return json_response(describe(model, svc.inference.started, svc.settings), headers=headers)
