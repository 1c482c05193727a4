"""Who pays for a call: the billing decision, and the provider call it implies.

Precedence: a local model -> a provider key the caller sent -> the
workspace's stored BYO key -> metering off / an unmetered model -> metered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.catalog import Catalog
from gateway.clock import Clock, now_ms
from gateway.errors import ByoNotAllowed, InvalidRequest
from gateway.flow.provider_keys import missing_key
from gateway.settings import Settings
from gateway.types import (
    CHAT,
    BillingMode,
    Caller,
    ChatRequest,
    LedgerEntry,
    ModelEntry,
    ProviderCall,
)

PROVIDER_KEY_HEADER = "x-bookbag-provider-key"  # named in errors; the edge reads it
StoredKey = Callable[[str, str], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class Decision:
    mode: BillingMode
    api_key: str | None
    reason: str | None

    @property
    def house_pays(self) -> bool:
        """The gateway's own provider key pays (metered or not): billed_features apply."""
        return self.mode in (BillingMode.METERED, BillingMode.UNMETERED)

    @property
    def metered(self) -> bool:
        return self.mode is BillingMode.METERED


async def no_stored_key(_workspace_id: str, _provider: str) -> str | None:
    return None


class Decider:
    def __init__(self, settings: Settings, catalog: Catalog, clock: Clock,
                 stored_byo_key: StoredKey = no_stored_key) -> None:
        self.settings = settings
        self.catalog = catalog
        self.clock = clock
        self._stored_byo_key = stored_byo_key

    def chat_model(self, name: str) -> ModelEntry:
        model = self.catalog.resolve(name)
        if model.kind != "chat":
            raise InvalidRequest(
                f"`{model.id}` is an embedding model; use POST /v1/embeddings.", param="model"
            )
        return model

    async def decide(self, model: ModelEntry, caller: Caller,
                     provider_key: str | None) -> Decision:
        """`provider_key`: the X-Bookbag-Provider-Key the caller sent, if any."""
        if model.provider == "local":
            return Decision(BillingMode.LOCAL, None, "local_model")
        if provider_key is not None:
            if not model.byo:
                raise ByoNotAllowed(
                    f"`{model.id}` does not accept a provider key: it runs on an endpoint "
                    "configured by the gateway operator.",
                    param=PROVIDER_KEY_HEADER,
                )
            if not provider_key.strip():
                raise InvalidRequest("X-Bookbag-Provider-Key is empty.", param=PROVIDER_KEY_HEADER)
            return Decision(BillingMode.BYO, provider_key.strip(), "byo_header")
        if model.byo:
            stored = await self._stored_byo_key(caller.workspace_id, model.provider)
            if stored:
                return Decision(BillingMode.BYO, stored, "byo_workspace")
        own_key = self.settings.provider_key(model.provider, model.api_key_env)
        if not self.settings.metering:
            return Decision(BillingMode.UNMETERED, own_key, "metering_off")
        if not model.metered:
            return Decision(BillingMode.UNMETERED, own_key, "model_unmetered")
        return Decision(BillingMode.METERED, own_key, None)

    @staticmethod
    def own_key_required(model: ModelEntry, decision: Decision) -> None:
        if decision.mode is not BillingMode.LOCAL and not decision.api_key and not model.api_base:
            raise missing_key(model)  # a 400 saying what to set: a retry cannot fix it

    def chat_call(self, model: ModelEntry, req: ChatRequest, decision: Decision,
                  body: dict[str, Any] | None = None) -> ProviderCall:
        """`body`: a fallback member's own (flow/fallback.py); default the request's."""
        body = dict(req.body if body is None else body)
        body["model"] = model.upstream_model
        if req.stream and req.dialect == CHAT:  # Messages streams carry usage by design
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return ProviderCall(model, body, decision.api_key, decision.mode is BillingMode.BYO,
                            self.settings.provider_timeouts, req.dialect, req.betas)

    def entry(self, request_id: str, caller: Caller, req: ChatRequest, model: ModelEntry,
              decision: Decision) -> LedgerEntry:
        return LedgerEntry(
            request_id=request_id, workspace_id=caller.workspace_id, billing_mode=decision.mode,
            key_id=caller.key_id, agent_id=req.agent_id, conversation_id=req.conversation_id,
            model=model.id, provider=model.provider, replies=req.n, reason=decision.reason,
            created_ms=now_ms(self.clock), api=req.dialect, requested_model=model.id,
        )
