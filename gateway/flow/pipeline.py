"""The flow's front door: its dependencies, built once, and the three calls it answers.

It knows nothing of HTTP: the edge hands it a parsed call and a `Caller`
and renders the `Outcome` it returns. The steps live beside it, one concept
each: `decide` (who pays), `chat` (the order of a chat completion),
`settlement` / `books` (the money, exactly once), `preview`, `embeddings`,
`ratelimit` (the admission verdict and its fail-closed rule).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from gateway.catalog import Catalog
from gateway.clock import Clock
from gateway.crashpoints import Crash, no_crash
from gateway.flow import chat as chat_flow
from gateway.flow import count_tokens as count_tokens_flow
from gateway.flow import embeddings as embeddings_flow
from gateway.flow import preview as preview_flow
from gateway.flow import ratelimit
from gateway.flow.books import AfterCharge, Books
from gateway.flow.breaker import Breakers
from gateway.flow.call import ChatCall
from gateway.flow.decide import Decider, StoredKey, no_stored_key
from gateway.flow.fallback import FallbackSeen
from gateway.flow.inflight import InFlight
from gateway.flow.outcome import Outcome
from gateway.flow.responses import RecentResponses, ResponseOwners
from gateway.idempotency.service import Idempotency
from gateway.ledger.recorder import Recorder
from gateway.metering.base import Meter
from gateway.providers.base import Provider
from gateway.ratelimit.limiter import RateLimiter
from gateway.settings import Settings
from gateway.types import CHAT, Caller, ChatRequest, ModelEntry, ProviderCall

TokenCounter = Callable[[ProviderCall], Awaitable[bytes | None]]


class ProviderRoutes(Protocol):
    """Which provider serves a model in a dialect, and the parameter check made before any
    credit moves (gateway.providers.registry.Providers; an in-process double in tests)."""

    def for_model(self, model: ModelEntry, dialect: str = CHAT) -> Provider: ...

    async def check(self, model: ModelEntry, body: dict[str, Any],
                    dialect: str = CHAT) -> None: ...

    def token_counter(self, model: ModelEntry) -> TokenCounter | None:
        """The provider's own count_tokens for `model`, None where it has none."""


class Pipeline:
    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        clock: Clock,
        meter: Meter,
        recorder: Recorder,
        providers: ProviderRoutes,
        limiter: RateLimiter | None = None,
        stored_byo_key: StoredKey = no_stored_key,
        idempotency: Idempotency | None = None,
        after_charge: AfterCharge | None = None,
        crash: Crash = no_crash,
        responses: ResponseOwners | None = None,
        breakers: Breakers | None = None,
        on_fallback: FallbackSeen | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.clock = clock
        self.meter = meter
        self.recorder = recorder
        self.providers = providers
        self.limiter = limiter
        self.idempotency = idempotency
        self.crash = crash  # test-only crash points (crashpoints.py); a no-op in production
        # Who was given which Response id (the ledger's; in-process tests: memory only).
        self.responses: ResponseOwners = responses or RecentResponses()
        self.decider = Decider(settings, catalog, clock, stored_byo_key)
        self.books = Books(meter, recorder, after_charge, crash)
        self.inflight = InFlight(settings.max_inflight_per_workspace)
        # Fallbacks (flow/fallback.py): the models' breakers, and who counts a fallback taken.
        self.breakers = breakers or Breakers(clock, failures=settings.breaker_failures,
                                             cooldown=settings.breaker_cooldown)
        self.on_fallback = on_fallback

    async def admit(self, caller: Caller) -> tuple[Caller, dict[str, str]]:
        """The rate-limit verdict, before the body is read (see gateway/flow/ratelimit.py)."""
        if self.limiter is None:
            return caller, {}
        return await ratelimit.admit(self.limiter, caller)

    async def chat(self, caller: Caller, call: ChatCall) -> Outcome:
        return await chat_flow.chat(self, caller, call)

    async def admit_count_tokens(self, caller: Caller) -> tuple[Caller, dict[str, str]]:
        """count_tokens' own rate-limit buckets instead of the key's (fails open)."""
        return await count_tokens_flow.admit(self.limiter, caller)

    async def count_tokens(self, caller: Caller, req: ChatRequest,
                           provider_key: str | None) -> dict[str, Any]:
        return await count_tokens_flow.count_tokens(self, caller, req, provider_key)

    async def preview(self, caller: Caller, req: ChatRequest,
                      provider_key: str | None) -> dict[str, Any]:
        return await preview_flow.preview(self, caller, req, provider_key)

    async def embeddings(self, caller: Caller, body: dict[str, Any],
                         provider_key: str | None) -> bytes:
        return await embeddings_flow.embeddings(self, caller, body, provider_key)
