"""The catalog's `dialects` (defaults and validation) and the registry's choice: native
where the upstream speaks the call's dialect, translated otherwise."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.catalog import CatalogError, parse
from gateway.errors import UnsupportedParameter
from gateway.providers.anthropic import messages_url
from gateway.providers.local import LocalProvider
from gateway.providers.registry import Providers
from gateway.providers.relay import RelayProvider
from gateway.providers.relay_common import split_named_events as split_events
from gateway.providers.translating import TranslatingProvider
from gateway.types import ModelEntry

PLANS = {"free": {"credits": 100}}


def catalog(**models: dict[str, Any]) -> dict[str, ModelEntry]:
    return parse({"models": models, "plans": PLANS}).models


def test_dialect_defaults() -> None:
    got = catalog(
        local={"provider": "local", "credits": 1},
        oai={"provider": "openai", "credits": 1},
        compatible={"provider": "openai", "credits": 1, "api_base": "http://127.0.0.1:1/v1"},
        claude={"provider": "anthropic", "credits": 1},
        proxied={"provider": "anthropic", "credits": 1, "api_base": "http://127.0.0.1:1"},
        gemini={"provider": "gemini", "credits": 1},
        said={"provider": "openai", "credits": 1, "api_base": "http://x", "dialects": [
            "messages", "chat"]},
    )
    assert {k: v.dialects for k, v in got.items()} == {
        "local": ("chat", "responses", "messages"), "oai": ("chat", "responses"),
        "compatible": ("chat",), "claude": ("messages",), "proxied": ("messages",),
        "gemini": ("chat",), "said": ("chat", "messages")}


@pytest.mark.parametrize(("entry", "hint"), [
    ({"provider": "openai", "credits": 1, "dialects": ["grpc"]}, "dialects"),
    ({"provider": "openai", "credits": 1, "dialects": []}, "dialects"),
    ({"provider": "openai", "credits": 1, "dialects": ["chat", "chat"]}, "dialects"),
    ({"provider": "openai", "credits": 1, "dialects": "chat"}, "dialects"),
    ({"provider": "openai", "kind": "embedding", "credits": 0, "dialects": ["chat"]},
     "dialects"),
    ({"provider": "local", "credits": 1, "dialects": ["chat"]}, "bookbag-local"),
    ({"provider": "anthropic", "credits": 1, "anthropic_betas": ["a,b"]}, "anthropic_betas"),
    ({"provider": "anthropic", "credits": 1, "max_thinking_tokens": 0}, "max_thinking_tokens"),
])
def test_bad_dialect_fields_stop_the_load(entry: dict[str, Any], hint: str) -> None:
    with pytest.raises(CatalogError, match=hint):
        catalog(m=entry)


class Litellm:
    async def check(self, model: ModelEntry, body: dict[str, Any]) -> None:
        return None

    async def close(self) -> None:
        return None


async def test_native_where_spoken_translated_elsewhere() -> None:
    got = catalog(local={"provider": "local", "credits": 1},
                  oai={"provider": "openai", "credits": 1},
                  claude={"provider": "anthropic", "credits": 1},
                  gemini={"provider": "gemini", "credits": 1})
    litellm = Litellm()
    providers = Providers(RelayProvider(), LocalProvider(), litellm)  # type: ignore[arg-type]
    try:
        assert providers.for_model(got["oai"]) is providers.relay
        assert providers.for_model(got["claude"], "messages") is providers.anthropic
        assert providers.for_model(got["gemini"]) is litellm
        assert providers.for_model(got["local"]) is providers.local
        for name, dialect, inner in (("claude", "chat", providers.anthropic),
                                     ("oai", "messages", providers.relay),
                                     ("gemini", "messages", litellm),
                                     ("local", "messages", providers.local)):
            served = providers.for_model(got[name], dialect)
            assert isinstance(served, TranslatingProvider) and served.inner is inner, name
            assert providers.for_model(got[name], dialect) is served  # built once
        assert [n for n, m in got.items() if providers.uses_litellm(m)] == ["gemini"]
        assert providers.token_counter(got["claude"]) == providers.anthropic.count_tokens
        assert providers.token_counter(got["oai"]) is None
        assert providers.token_counter(got["local"]) is None
        # the translation refuses what it cannot carry, before anything is reserved
        with pytest.raises(UnsupportedParameter) as info:
            await providers.check(got["claude"], {"model": "claude", "messages": [
                {"role": "user", "content": "hi"}], "logprobs": True})
        assert info.value.param == "logprobs"
        with pytest.raises(UnsupportedParameter) as info:
            await providers.check(got["claude"], {"model": "claude", "messages": [
                {"role": "user", "content": "hi"}], "verbosity": "low"})
        assert info.value.param == "verbosity"
        with pytest.raises(UnsupportedParameter) as info:
            await providers.check(got["local"], {"model": "local", "max_tokens": 5, "messages": [
                {"role": "user", "content": "hi"}], "tools": [{"name": "t", "input_schema": {
                    "type": "object"}}]}, "messages")
        assert info.value.param == "tools"
    finally:
        await providers.close()


def test_messages_urls_and_event_splitting() -> None:
    def entry(base: str | None) -> ModelEntry:
        return ModelEntry(id="c", provider="anthropic", upstream_model="c", credits=1,
                          metered=True, byo=True, api_base=base)
    assert messages_url(entry(None)) == "https://api.anthropic.com/v1/messages"
    assert messages_url(entry("http://h:1")) == "http://h:1/v1/messages"
    assert messages_url(entry("http://h:1/v1")) == "http://h:1/v1/messages"
    assert messages_url(entry("http://h:1/v1/messages"), "/count_tokens") == \
        "http://h:1/v1/messages/count_tokens"
    events, rest = split_events(
        b'event: ping\ndata: {"type":"ping"}\n\n: comment\n\n'
        b'data: {"type":"message_stop"}\n\nid: 3\nevent: x\ndata: {}\n\nevent: message_d')
    assert events == [b'event: ping\ndata: {"type":"ping"}', b'event: message_stop\ndata: '
                      b'{"type":"message_stop"}', b"event: x\ndata: {}"]
    assert rest == b"event: message_d"
