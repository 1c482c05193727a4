"""Which Provider serves a catalog entry, and the check each route makes before any credit moves."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.providers.base import Provider
from gateway.providers.local import LocalProvider
from gateway.providers.relay import RelayProvider
from gateway.types import ModelEntry

if TYPE_CHECKING:
    from gateway.providers.litellm_provider import LitellmProvider


class Providers:
    """local -> LocalProvider; openai -> RelayProvider (bytes); anything else -> litellm."""

    def __init__(self, relay: RelayProvider, local: LocalProvider, litellm: LitellmProvider) -> None:
        self.relay = relay
        self.local = local
        self.litellm = litellm  # it imports litellm lazily, off the relay's path

    def for_model(self, model: ModelEntry) -> Provider:
        if model.provider == "local":
            return self.local
        if model.relayed:
            return self.relay
        provider: Provider = self.litellm
        return provider

    async def check(self, model: ModelEntry, body: dict[str, Any]) -> None:
        """Refuse, before reserving, a parameter the route cannot honour (400)."""
        await self.for_model(model).check(model, body)

    async def close(self) -> None:
        await self.relay.close()
        await self.local.close()
        await self.litellm.close()
