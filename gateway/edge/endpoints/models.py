"""GET /v1/models and /v1/models/{id}: the catalog with credits, metering and aliases."""

from __future__ import annotations

import datetime as dt
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.dialects.messages.parse import VERSION_HEADER as ANTHROPIC_VERSION
from gateway.edge.endpoints.messages import anthropic_caller, messages_endpoint
from gateway.edge.request import authenticate, endpoint, headers_of, json_response, services
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


def anthropic_model(model: ModelEntry, created: int) -> dict[str, Any]:
    """A model in Anthropic's shape (`GET /v1/models` with `anthropic-version`)."""
    stamp = dt.datetime.fromtimestamp(created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": "model", "id": model.id,
            "display_name": next((a for a in model.aliases if " " in a), model.id),
            "created_at": stamp}


def _anthropic(request: Request) -> bool:
    """Anthropic's SDKs and Claude Code send `anthropic-version`: they get its shapes."""
    return ANTHROPIC_VERSION in headers_of(request)


async def _caller(request: Request) -> None:
    if _anthropic(request):
        await anthropic_caller(request)
    else:
        await authenticate(request, "inference")


def _model(request: Request) -> ModelEntry:
    try:
        return services(request).inference.catalog.resolve(request.path_params["model_id"])
    except ModelNotFound as exc:  # a missing resource here, as in OpenAI's API: 404
        raise NotFound(exc.message, param="model", code="model_not_found") from None


async def _list(request: Request, headers: dict[str, str]) -> Response:
    await _caller(request)
    svc = services(request)
    if _anthropic(request):
        chat = [anthropic_model(m, svc.inference.started) for m in svc.inference.catalog.models.values()
                if m.kind == "chat"]
        return json_response({"data": chat, "has_more": False,
                              "first_id": chat[0]["id"] if chat else None,
                              "last_id": chat[-1]["id"] if chat else None}, headers=headers)
    data = [describe(m, svc.inference.started, svc.settings) for m in svc.inference.catalog.models.values()]
    return json_response({"object": "list", "data": data}, headers=headers)


async def _get(request: Request, headers: dict[str, str]) -> Response:
    await _caller(request)
    svc = services(request)
    model = _model(request)
    if _anthropic(request):
        return json_response(anthropic_model(model, svc.inference.started), headers=headers)
    return json_response(describe(model, svc.inference.started, svc.settings), headers=headers)


_list_openai, _list_anthropic = endpoint(_list), messages_endpoint(_list)
_get_openai, _get_anthropic = endpoint(_get), messages_endpoint(_get)


async def list_models(request: Request) -> Response:
    return await (_list_anthropic if _anthropic(request) else _list_openai)(request)


async def get_model(request: Request) -> Response:
    return await (_get_anthropic if _anthropic(request) else _get_openai)(request)
