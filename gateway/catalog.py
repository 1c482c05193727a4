"""The catalog: `pricing.toml` -> models, aliases and plans, validated at load.

A bad file stops startup with a `CatalogError` naming the entry and the field.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.errors import ModelNotFound
from gateway.types import CHAT, DIALECTS, MESSAGES, RESPONSES, ModelEntry, Plan

_MODEL_KEYS = {
    "provider", "credits", "upstream", "aliases", "metered", "byo", "api_base",
    "api_key_env", "kind", "max_output_tokens", "service_tiers", "hosted_tools",
    "anthropic_betas", "max_thinking_tokens", "dialects", "fallbacks", "first_byte_timeout",
}
DEFAULT_FIRST_BYTE_TIMEOUT = 30.0  # seconds; docs/configuration.md
_PLAN_KEYS = {"credits", "rate_limit"}
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*s\s*$")
LOCAL_PROVIDER = "local"


class CatalogError(ValueError):
    """`pricing.toml` is invalid; the message names the entry and the field."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    requests: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Catalog:
    models: dict[str, ModelEntry]
    plans: dict[str, Plan]
    rate_limits: dict[str, RateLimit]
    _lookup: dict[str, ModelEntry]

    def resolve(self, name: object) -> ModelEntry:
        """The entry for a canonical id or alias (case-insensitive), or ModelNotFound."""
        if isinstance(name, str):
            entry = self._lookup.get(name) or self._lookup.get(name.lower())
            if entry is not None:
                return entry
        shown = name if isinstance(name, str) else type(name).__name__
        raise ModelNotFound(
            f"The model `{str(shown)[:200]}` does not exist or is not served by this gateway; "
            "GET /v1/models lists the models available.",
            param="model",
        )

    def plan(self, name: str) -> Plan:
        return self.plans[name]

    def plan_rate_limit(self, name: str) -> RateLimit | None:
        return self.rate_limits.get(name)


def parse_rate_limit(where: str, raw: object) -> RateLimit:
    match = _RATE_RE.match(raw) if isinstance(raw, str) else None
    if not match or int(match.group(1)) < 1 or float(match.group(2)) <= 0:
        raise CatalogError(f"{where}: rate_limit must look like \"100/10s\", got {raw!r}")
    return RateLimit(int(match.group(1)), float(match.group(2)))


def _model(model_id: str, raw: Any) -> ModelEntry:
    where = f'[models."{model_id}"]'
    if not isinstance(raw, dict):
        raise CatalogError(f"{where} must be a table")
    unknown = set(raw) - _MODEL_KEYS
    if unknown:
        raise CatalogError(f"{where}: unknown field {sorted(unknown)[0]!r}")

    provider = raw.get("provider")
    if not isinstance(provider, str) or not provider:
        raise CatalogError(f"{where}: field 'provider' is required (local, openai, anthropic, ...)")
    kind = raw.get("kind", "chat")
    if kind not in ("chat", "embedding"):
        raise CatalogError(f"{where}: field 'kind' must be 'chat' or 'embedding', got {kind!r}")
    credits = raw.get("credits")
    if isinstance(credits, bool) or not isinstance(credits, int) or credits < 0:
        raise CatalogError(f"{where}: field 'credits' must be a whole number >= 0, got {credits!r}")
    if kind == "embedding" and credits != 0:
        raise CatalogError(f"{where}: field 'credits' must be 0 for embedding models")
    if kind == "chat" and credits == 0 and raw.get("metered", True) and provider != LOCAL_PROVIDER:
        raise CatalogError(f"{where}: field 'credits' must be >= 1 for a metered chat model")

    def string(name: str) -> str | None:
        value = raw.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise CatalogError(f"{where}: field {name!r} must be a non-empty string")
        return value

    api_base = string("api_base")
    if api_base is not None and not re.match(r"^https?://", api_base):
        raise CatalogError(f"{where}: field 'api_base' must be an http(s) URL, got {api_base!r}")
    aliases = _strings(where, raw, "aliases")
    for flag in ("metered", "byo"):
        if flag in raw and not isinstance(raw[flag], bool):
            raise CatalogError(f"{where}: field {flag!r} must be true or false")

    local = provider == LOCAL_PROVIDER
    fallbacks = _strings(where, raw, "fallbacks")
    budget = raw.get("first_byte_timeout", DEFAULT_FIRST_BYTE_TIMEOUT)
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not budget > 0:
        raise CatalogError(f"{where}: field 'first_byte_timeout' must be a number of seconds "
                           f"> 0, got {budget!r}")
    if kind != "chat" and ("fallbacks" in raw or "first_byte_timeout" in raw):
        raise CatalogError(f"{where}: fallbacks and first_byte_timeout are for chat models")
    return ModelEntry(
        fallbacks=tuple(fallbacks),
        first_byte_timeout=float(budget),
        dialects=_dialects(where, raw, provider, api_base, kind),
        id=model_id,
        provider=provider,
        upstream_model=string("upstream") or model_id,
        credits=credits,
        metered=False if local or kind == "embedding" else bool(raw.get("metered", True)),
        byo=False if local else bool(raw.get("byo", api_base is None)),
        kind=kind,
        api_base=api_base.rstrip("/") if api_base else None,
        api_key_env=string("api_key_env"),
        aliases=tuple(aliases),
        **_billed_features(where, raw, kind),
    )


def default_dialects(provider: str, api_base: str | None) -> tuple[str, ...]:
    """What an upstream speaks unless its entry says: OpenAI itself chat and Responses, any
    other OpenAI-compatible server chat only, Anthropic Messages, other litellm providers
    chat (through litellm), bookbag-local all three."""
    if provider == LOCAL_PROVIDER:
        return DIALECTS
    if provider == "openai":
        return (CHAT,) if api_base else (CHAT, RESPONSES)
    if provider == "anthropic":
        return (MESSAGES,)
    return (CHAT,)


def _dialects(where: str, raw: dict[str, Any], provider: str, api_base: str | None,
              kind: str) -> tuple[str, ...]:
    if "dialects" not in raw:
        return default_dialects(provider, api_base)
    given = _strings(where, raw, "dialects")
    unknown = [d for d in given if d not in DIALECTS]
    if unknown or not given or len(set(given)) != len(given):
        raise CatalogError(f"{where}: field 'dialects' must list distinct values of "
                           f"{', '.join(DIALECTS)} (what the upstream speaks), got {given!r}")
    if kind != "chat":
        raise CatalogError(f"{where}: field 'dialects' is for chat models")
    if provider == LOCAL_PROVIDER and tuple(given) != DIALECTS:
        raise CatalogError(f"{where}: bookbag-local answers every dialect; leave out 'dialects'")
    return tuple(d for d in DIALECTS if d in given)


def _strings(where: str, raw: dict[str, Any], name: str) -> list[str]:
    value = raw.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise CatalogError(f"{where}: field {name!r} must be a list of non-empty strings")
    return value


def _billed_features(where: str, raw: dict[str, Any], kind: str) -> dict[str, Any]:
    """max_output_tokens, service_tiers, hosted_tools, anthropic_betas,
    max_thinking_tokens: what may raise the provider's bill."""
    caps = {}
    for name in ("max_output_tokens", "max_thinking_tokens"):
        cap = caps[name] = raw.get(name)
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise CatalogError(f"{where}: field {name!r} must be a whole number >= 1, "
                               f"got {cap!r}")
    tiers = _strings(where, raw, "service_tiers")
    tools = _strings(where, raw, "hosted_tools")
    betas = _strings(where, raw, "anthropic_betas")
    if any("," in beta or beta != beta.strip() for beta in betas):
        raise CatalogError(f"{where}: field 'anthropic_betas' lists single beta names, "
                           "e.g. [\"interleaved-thinking-2025-05-14\"]")
    if kind != "chat" and (any(v is not None for v in caps.values()) or tiers or tools or betas):
        raise CatalogError(f"{where}: max_output_tokens, max_thinking_tokens, service_tiers, "
                           "hosted_tools and anthropic_betas are for chat models")
    if set(tiers) & {"auto", "default"}:
        raise CatalogError(f"{where}: field 'service_tiers' lists the tiers beyond auto and "
                           "default (always allowed), e.g. [\"flex\", \"priority\"]")
    if set(tools) & {"function", "custom"}:
        raise CatalogError(f"{where}: field 'hosted_tools' lists hosted tool types such as "
                           "\"web_search\" (function and custom tools are always allowed)")
    return {"max_output_tokens": caps["max_output_tokens"],
            "max_thinking_tokens": caps["max_thinking_tokens"], "service_tiers": tuple(tiers),
            "hosted_tools": tuple(tools), "anthropic_betas": tuple(betas)}


def _chains(models: dict[str, ModelEntry],
            lookup: dict[str, ModelEntry]) -> dict[str, ModelEntry]:
    """Each entry's `fallbacks` as canonical ids, expanded depth first through the fallbacks'
    own (each model once): a chain is what a request to the entry may try. Refused: an
    unknown or embedding model, the entry itself, a duplicate, a cycle, local mixed with
    provider models."""
    direct: dict[str, tuple[str, ...]] = {}
    for entry in models.values():
        where = f'[models."{entry.id}"]: fallbacks'
        ids: list[str] = []
        for name in entry.fallbacks:
            target = lookup.get(name) or lookup.get(name.lower())
            if target is None:
                raise CatalogError(f"{where}: unknown model {name!r}")
            if target.kind != "chat":
                raise CatalogError(f"{where}: {name!r} is an embedding model")
            if target.id == entry.id:
                raise CatalogError(f"{where}: {name!r} is the model itself")
            if target.id in ids:
                raise CatalogError(f"{where}: {name!r} is listed twice")
            if (target.provider == LOCAL_PROVIDER) != (entry.provider == LOCAL_PROVIDER):
                raise CatalogError(f"{where}: {name!r} mixes bookbag-local with provider "
                                   "models (a local reply is never charged)")
            ids.append(target.id)
        direct[entry.id] = tuple(ids)

    def expand(model_id: str, path: tuple[str, ...]) -> list[str]:
        chain: list[str] = []
        for nxt in direct[model_id]:
            if nxt in path:
                cycle = " -> ".join((*path[path.index(nxt):], nxt))
                raise CatalogError(f'[models."{path[0]}"]: fallbacks form a cycle: {cycle}')
            for member in (nxt, *expand(nxt, (*path, nxt))):
                if member not in chain:
                    chain.append(member)
        return chain

    return {model_id: replace(entry, fallbacks=tuple(expand(model_id, (model_id,))))
            if direct[model_id] else entry for model_id, entry in models.items()}


def _plan(name: str, raw: Any) -> tuple[Plan, RateLimit | None]:
    where = f"[plans.{name}]"
    if not isinstance(raw, dict):
        raise CatalogError(f"{where} must be a table")
    unknown = set(raw) - _PLAN_KEYS
    if unknown:
        raise CatalogError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    credits = raw.get("credits")
    if credits == "custom":
        plan = Plan(name, None)
    elif isinstance(credits, int) and not isinstance(credits, bool) and credits >= 0:
        plan = Plan(name, credits)
    else:
        raise CatalogError(f"{where}: field 'credits' must be a whole number >= 0 or \"custom\"")
    limit = parse_rate_limit(where, raw["rate_limit"]) if "rate_limit" in raw else None
    return plan, limit


def parse(data: dict[str, Any]) -> Catalog:
    unknown = set(data) - {"models", "plans"}
    if unknown:
        raise CatalogError(f"unknown top-level table {sorted(unknown)[0]!r} (expected models, plans)")
    raw_models = data.get("models")
    if not isinstance(raw_models, dict) or not raw_models:
        raise CatalogError("[models]: at least one model is required")
    models = {model_id: _model(model_id, raw) for model_id, raw in raw_models.items()}

    lookup: dict[str, ModelEntry] = {}
    for entry in models.values():
        for name in (entry.id, *entry.aliases):
            for key in {name, name.lower()}:
                other = lookup.get(key)
                if other is not None and other.id != entry.id:
                    raise CatalogError(
                        f'[models."{entry.id}"]: alias {name!r} is already used by "{other.id}"'
                    )
                lookup[key] = entry

    models = _chains(models, lookup)
    lookup = {name: models[entry.id] for name, entry in lookup.items()}

    raw_plans = data.get("plans")
    if not isinstance(raw_plans, dict) or not raw_plans:
        raise CatalogError("[plans]: at least one plan is required")
    plans: dict[str, Plan] = {}
    limits: dict[str, RateLimit] = {}
    for name, raw in raw_plans.items():
        plan, limit = _plan(name, raw)
        plans[name] = plan
        if limit:
            limits[name] = limit
    return Catalog(models=models, plans=plans, rate_limits=limits, _lookup=lookup)


def load(path: Path) -> Catalog:
    """Load a catalog file; the packaged default when `path` is the default name and absent."""
    try:
        if path.exists():
            text = path.read_text(encoding="utf-8")
        elif path == Path("pricing.toml"):
            text = resources.files("gateway").joinpath("default_pricing.toml").read_text("utf-8")
        else:
            raise CatalogError(f"{path}: no such file (BOOKBAG_PRICING)")
        return parse(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{path}: not valid TOML: {exc}") from exc
    except CatalogError as exc:
        raise CatalogError(f"{path}: {exc}") from None
