"""The gateway's own (house) provider keys: which variable a model needs, and whether it is set.

Used by the pipeline's error when a model has no key (a non-retryable 400
saying what to set), by `/v1/models` (`available`) and by `serve`'s startup
summary, which warns about every model it cannot reach.
"""

from __future__ import annotations

from gateway.errors import ProviderKeyMissing
from gateway.settings import Settings
from gateway.types import ModelEntry

# The variables `Settings.from_env` reads for the providers it knows by name.
HOUSE_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


def house_key_env(model: ModelEntry) -> str:
    return model.api_key_env or HOUSE_KEY_ENV.get(model.provider,
                                                  f"{model.provider.upper()}_API_KEY")


def available(model: ModelEntry, settings: Settings) -> bool:
    """Whether the gateway can serve the model without a caller's own key."""
    return (model.provider == "local" or model.api_base is not None
            or settings.provider_key(model.provider, model.api_key_env) is not None)


def missing_key(model: ModelEntry) -> ProviderKeyMissing:
    fix = f"the gateway operator must set {house_key_env(model)}"
    if model.byo:
        fix += (", or send your own provider key in X-Bookbag-Provider-Key (or store one for the "
                "workspace with `bookbag-gateway byo set`)")
    return ProviderKeyMissing(f"No provider key is configured for `{model.id}`: {fix}.",
                              param="model")


def unavailable(models: list[ModelEntry], settings: Settings) -> list[str]:
    """`model (VARIABLE)` for each model the gateway cannot reach with its own keys."""
    return [f"{m.id} ({house_key_env(m)})" for m in models if not available(m, settings)]
