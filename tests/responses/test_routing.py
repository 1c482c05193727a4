"""Which provider serves a Responses call (relayed where the upstream speaks it, else
translated onto chat however chat reaches the model), and reading the id of the Response
a client received from the provider's bytes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.catalog import parse
from gateway.dialects.responses.ids import event_response_id, reply_response_id
from gateway.errors import UnsupportedParameter
from gateway.providers.local import LocalProvider
from gateway.providers.registry import Providers
from gateway.providers.relay import RelayProvider
from gateway.providers.translating import TranslatingProvider
from gateway.types import ModelEntry
from tests.messages.test_routing import Litellm

HI: dict[str, Any] = {"input": "hi"}


def catalog(**models: dict[str, Any]) -> dict[str, ModelEntry]:
    return parse({"models": models, "plans": {"free": {"credits": 100}}}).models


async def test_relayed_where_spoken_else_translated_onto_chat() -> None:
    got = catalog(local={"provider": "local", "credits": 1},
                  oai={"provider": "openai", "credits": 1},
                  compatible={"provider": "openai", "credits": 1,
                              "api_base": "http://127.0.0.1:1/v1"},
                  claude={"provider": "anthropic", "credits": 1},
                  gemini={"provider": "gemini", "credits": 1},
                  litellm_says={"provider": "gemini", "credits": 1,
                                "dialects": ["chat", "responses"]})
    litellm = Litellm()
    providers = Providers(RelayProvider(), LocalProvider(), litellm)  # type: ignore[arg-type]
    try:
        assert providers.for_model(got["oai"], "responses") is providers.relay
        for name, inner in (("compatible", providers.relay), ("gemini", litellm),
                            ("litellm_says", litellm),  # only the relay speaks Responses
                            ("local", providers.local)):
            served = providers.for_model(got[name], "responses")
            assert isinstance(served, TranslatingProvider), name
            assert (served.client, served.upstream, served.inner) == ("responses", "chat", inner)
        claude = providers.for_model(got["claude"], "responses")
        assert isinstance(claude, TranslatingProvider)
        assert claude.inner is providers.for_model(got["claude"], "chat")  # -> Messages
        assert providers.for_model(got["claude"], "responses") is claude  # built once
        model = got["claude"]
        with pytest.raises(UnsupportedParameter) as info:  # unknown: refused, not dropped
            await providers.check(model, {"model": "c", **HI, "shiny": 1}, "responses")
        assert info.value.param == "shiny"
        with pytest.raises(UnsupportedParameter) as info:  # chat carries it, Messages not
            await providers.check(model, {"model": "c", **HI, "service_tier": "flex"},
                                  "responses")
        assert info.value.param == "service_tier"
        await providers.check(model, {"model": "c", **HI, "truncation": "disabled"},
                              "responses")
    finally:
        await providers.close()


def test_the_response_id_is_read_from_the_bytes_or_parsed() -> None:
    assert reply_response_id(b'{\n  "id": "resp_abc",\n  "object": "response"}') == "resp_abc"
    assert reply_response_id(b'{"object": "response", "id": "resp_late"}') == "resp_late"
    assert reply_response_id(b'{"id": 7}') is None
    assert reply_response_id(orjson.dumps({"id": "r" * 129})) is None  # over the column
    assert reply_response_id(b"not json") is None
    created = {"type": "response.created", "sequence_number": 0,
               "response": {"id": "resp_s", "object": "response"}}
    assert event_response_id(orjson.dumps(created)) == "resp_s"
    late = {"type": "response.created", "response": {"object": "response", "id": "resp_l"}}
    assert event_response_id(orjson.dumps(late)) == "resp_l"
    assert event_response_id(b'{"type": "response.output_text.delta"}') is None
