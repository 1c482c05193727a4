"""Shared value types passed between the pipeline's steps."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class BillingMode(enum.StrEnum):
    METERED = "metered"
    LOCAL = "local"
    BYO = "byo"
    UNMETERED = "unmetered"


class EntryKind(enum.StrEnum):
    REPLY = "reply"
    ALLOTMENT = "allotment"
    TOPUP = "topup"
    ADJUSTMENT = "adjustment"


SCOPES = frozenset({"inference", "read"})

# The wire dialects a client speaks and an upstream may speak (SPEC "Three dialects").
CHAT, RESPONSES, MESSAGES = "chat", "responses", "messages"
DIALECTS = (CHAT, RESPONSES, MESSAGES)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: resolved from a workspace API key."""

    workspace_id: str
    key_id: str
    agent_id: str | None
    scopes: frozenset[str]
    plan: str
    suspended: bool = False
    rate_limit: str | None = None  # the key's (or workspace's) own limit, e.g. "100/10s"
    rate_unchecked: bool = False  # the shared limit store was down: metered requests fail closed
    expires_ms: int | None = None  # spend controls: the key's expiry (401 key_expired from then)
    caps: tuple[Cap, ...] = ()  # spend controls: the key's cap and its bound agent's cap
    responses_store: bool = False  # the workspace opted in to the Responses API's `store`


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model of the catalog: how to reach it and what a reply costs."""

    id: str
    provider: str  # "local", "openai" (relayed as bytes), or a litellm provider ("anthropic", ...)
    upstream_model: str
    credits: int
    metered: bool
    byo: bool
    kind: str = "chat"  # "chat" | "embedding"
    api_base: str | None = None
    api_key_env: str | None = None
    aliases: tuple[str, ...] = ()
    # What may raise the provider's bill behind the fixed price (billed_features.py).
    max_output_tokens: int | None = None  # None: no cap (the client's budget, or the provider's)
    service_tiers: tuple[str, ...] = ()  # beyond auto/default
    hosted_tools: tuple[str, ...] = ()  # tool `type`s beyond function/custom; web_search too
    anthropic_betas: tuple[str, ...] = ()  # `anthropic-beta` values the house's key may send
    max_thinking_tokens: int | None = None  # cap on a Messages `thinking.budget_tokens`
    # What the upstream speaks natively (catalog.py's defaults); the rest is translated.
    dialects: tuple[str, ...] = (CHAT,)
    # Fallbacks (SPEC "Spend controls"): the models tried after this one, canonical ids,
    # already expanded through their own fallbacks (catalog.py); and how long an attempt
    # on this model may go without its first byte while another model is left to try.
    fallbacks: tuple[str, ...] = ()
    first_byte_timeout: float = 30.0

    @property
    def relayed(self) -> bool:
        return self.provider == "openai"


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    credits: int | None  # None: custom (Enterprise), set per workspace


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    idle: float
    total: float


@dataclass(slots=True)
class ChatRequest:
    """A validated chat completion request, Bookbag metadata already removed."""

    model: str
    body: dict[str, Any]
    stream: bool
    n: int
    include_usage: bool
    agent_id: str | None = None
    conversation_id: str | None = None
    dialect: str = CHAT  # the client's wire dialect: the body's shape and the reply's
    betas: tuple[str, ...] = ()  # Messages: the client's `anthropic-beta` values


@dataclass(frozen=True, slots=True)
class ProviderCall:
    """What a provider needs for one call; `body` already names the upstream model and is
    in `dialect`, the client's (a translating provider turns it into its upstream's)."""

    model: ModelEntry
    body: dict[str, Any]
    api_key: str | None
    byo: bool
    timeouts: Timeouts
    dialect: str = CHAT
    betas: tuple[str, ...] = ()  # `anthropic-beta` values to send (already allowed)


@dataclass(frozen=True, slots=True)
class Completion:
    """A non-streamed provider reply in the call's dialect, as bytes to send unchanged."""

    body: bytes
    choices: int
    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass(frozen=True, slots=True)
class Hold:
    """Credits reserved for one request, and the buckets they came from."""

    request_id: str
    workspace_id: str
    credits: int
    from_allotment: int
    from_topups: int
    period_start: str  # ISO date of the period the hold was reserved in
    expires_at: float
    caps: tuple[str, ...] = ()  # spend controls: the cap subjects this hold counts against


@dataclass(frozen=True, slots=True)
class Cap:
    """Spend controls: a credit cap per billing period on `key:<id>` or `agent:<id>`."""

    subject: str
    credits: int


@dataclass(frozen=True, slots=True)
class Balance:
    workspace_id: str
    plan: str
    allotment: int
    allotment_remaining: int
    topups_remaining: int
    reserved: int
    period_start: str
    period_end: str

    @property
    def available(self) -> int:
        return self.allotment_remaining + self.topups_remaining


@dataclass(slots=True)
class LedgerEntry:
    """One row of the usage ledger. Signed deltas say what it did to each bucket."""

    request_id: str
    workspace_id: str
    kind: EntryKind = EntryKind.REPLY
    billing_mode: BillingMode | None = BillingMode.METERED
    credits: int = 0
    allotment_delta: int = 0
    topup_delta: int = 0
    period_start: str | None = None
    key_id: str | None = None
    agent_id: str | None = None
    conversation_id: str | None = None
    model: str | None = None
    provider: str | None = None
    replies: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: int | None = None
    reason: str | None = None
    ref: str | None = None
    actor: str | None = None
    created_ms: int = 0
    api: str | None = None  # the client's dialect: chat | responses | messages (replies only)
    response_id: str | None = None  # Responses: the id the gateway returned (state ownership)
    requested_model: str | None = None  # fallbacks: the model asked for; `model` answered
