"""Which Provider serves a catalog entry, and the check each route makes before any credit moves."""

from __future__ import annotations

import inspect
from typing import Any

from gateway.providers.base import Provider
from gateway.providers.local import LocalProvider
from gateway.providers.local import check_request as check_local
from gateway.providers.relay import RelayProvider
from gateway.types import ModelEntry


class Providers:
    """local -> LocalProvider; openai -> RelayProvider (bytes); anything else -> litellm."""

    def __init__(self, relay: RelayProvider, local: LocalProvider, litellm: Any) -> None:
        self.relay = relay
        self.local = local
        self.litellm = litellm  # LitellmProvider: imported lazily, off the relay's path

    def for_model(self, model: ModelEntry) -> Provider:
        if model.provider == "local":
            return self.local
        if model.relayed:
            return self.relay
        provider: Provider = self.litellm
        return provider

    async def check(self, model: ModelEntry, body: dict[str, Any]) -> None:
        """Refuse, before reserving, a parameter the route cannot honour (400)."""
        if model.provider == "local":
            check_local(body)
        elif not model.relayed:
            result = self.litellm.check_request(model, body)
            if inspect.isawaitable(result):
                await result

    async def close(self) -> None:
        await self.relay.close()
        await self.local.close()
        await self.litellm.close()
