"""Which Provider serves a catalog entry in a dialect, and the check each route makes
before any credit moves.

Each upstream speaks some dialects natively (the catalog's `dialects`): a call
in one of them goes to that dialect's native provider; any other is
translated (`TranslatingProvider`) onto the upstream's first dialect that has
a native provider here. Native providers:
  chat       local -> LocalProvider; openai -> RelayProvider (bytes); else litellm
  messages   AnthropicProvider (bytes)
  responses  openai -> RelayProvider (bytes, `/responses`)
So a chat request to an Anthropic model goes chat -> Messages -> the Anthropic
relay (litellm stays for providers without a native translation), and a
Messages request to an OpenAI model goes Messages -> chat -> the relay.
A Responses request is always translated onto chat, whatever serves chat for
the model: Responses -> chat -> Messages for Anthropic, Responses -> chat ->
litellm or the relay for the others.
`bookbag-local` answers text in every dialect: natively in chat, the others
through the chat translation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import Provider
from gateway.providers.local import LocalProvider
from gateway.providers.relay import RelayProvider
from gateway.providers.translating import TranslatingProvider
from gateway.types import CHAT, MESSAGES, RESPONSES, ModelEntry, ProviderCall

if TYPE_CHECKING:
    from gateway.providers.litellm_provider import LitellmProvider

NATIVE = (CHAT, MESSAGES, RESPONSES)  # the dialects some provider here speaks as an upstream


class Providers:
    def __init__(self, relay: RelayProvider, local: LocalProvider, litellm: LitellmProvider,
                 anthropic: AnthropicProvider | None = None) -> None:
        self.relay = relay
        self.local = local
        self.litellm = litellm  # it imports litellm lazily, off the relay's path
        self.anthropic = anthropic or AnthropicProvider()
        self._translating: dict[tuple[int, str, str], TranslatingProvider] = {}

    def speaks(self, model: ModelEntry) -> tuple[str, ...]:
        """The dialects this model's upstream is called in natively."""
        if model.provider == "local":
            return (CHAT,)
        # Responses is relayed as bytes only: an upstream reached otherwise is translated.
        return tuple(d for d in model.dialects if d in NATIVE
                     and (d != RESPONSES or model.relayed)) or (CHAT,)

    def uses_litellm(self, model: ModelEntry) -> bool:
        """Some call to this model goes through litellm (its upstream is called in chat and
        no provider here speaks to it natively): the import is worth preloading."""
        return model.provider != "local" and not model.relayed and CHAT in self.speaks(model)

    def native(self, model: ModelEntry, dialect: str) -> Provider:
        if dialect == MESSAGES:
            return self.anthropic
        if model.provider == "local":
            return self.local
        if model.relayed:
            return self.relay
        provider: Provider = self.litellm
        return provider

    def for_model(self, model: ModelEntry, dialect: str = CHAT) -> Provider:
        speaks = self.speaks(model)
        if dialect in speaks:
            return self.native(model, dialect)
        if dialect == RESPONSES:  # onto chat, however chat reaches the upstream
            upstream, inner = CHAT, self.for_model(model, CHAT)
        else:
            upstream = MESSAGES if MESSAGES in speaks and CHAT not in speaks else CHAT
            inner = self.native(model, upstream)
        key = (id(inner), dialect, upstream)
        found = self._translating.get(key)
        if found is None:
            found = self._translating[key] = TranslatingProvider(inner, dialect, upstream)
        return found

    def token_counter(self, model: ModelEntry
                      ) -> Callable[[ProviderCall], Awaitable[bytes | None]] | None:
        """Anthropic's count_tokens when the upstream speaks Messages; else None (estimated)."""
        if model.provider == "local" or MESSAGES not in self.speaks(model):
            return None
        return self.anthropic.count_tokens

    async def check(self, model: ModelEntry, body: dict[str, Any], dialect: str = CHAT) -> None:
        """Refuse, before reserving, a parameter the route cannot honour (400)."""
        await self.for_model(model, dialect).check(model, body)

    async def close(self) -> None:
        await self.relay.close()
        await self.anthropic.close()
        await self.local.close()
        await self.litellm.close()
