"""Nothing multiplies the house's cost behind a fixed price (issue 12, point 7).

Hosted tools, service tiers beyond auto/default and output budgets above
the catalog entry's cap are refused with 400 `unsupported_parameter` unless
the entry enables them, on the relay (OpenAI) and the litellm (Anthropic)
paths; nothing is sent upstream and nothing is charged. With no budget in
the request the entry's cap is sent. A BYO key's own account pays: passed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.catalog import CatalogError, parse
from gateway.flow import billed_features
from gateway.types import ModelEntry
from tests import harness
from tests.conftest import GatewayFactory
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway

CAPPED = """
[models."capped-gpt"]
provider = "openai"
credits = 5
upstream = "gpt-4o"
api_base = "{openai}"
byo = true
max_output_tokens = 256

[models."open-gpt"]
provider = "openai"
credits = 5
upstream = "gpt-4o"
api_base = "{openai}"
max_output_tokens = 512
service_tiers = ["priority"]
hosted_tools = ["web_search"]

[models."capped-claude"]
provider = "anthropic"
credits = 2
upstream = "claude-haiku-4-5-20251001"
api_base = "{anthropic}"
max_output_tokens = 300
"""
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
def gateway(make_gateway: GatewayFactory, fake: FakeProvider, tmp_path: Path) -> RunningGateway:
    path = tmp_path / "capped.toml"
    path.write_text(harness.test_pricing(fake) + CAPPED.format(openai=fake.openai_base,
                                                        anthropic=fake.anthropic_base))
    return make_gateway(BOOKBAG_PRICING=path)


def sent(fake: FakeProvider) -> dict[str, Any]:
    body: dict[str, Any] = fake.received[-1].body
    return body


@pytest.mark.parametrize(("model", "extra", "param"), [
    ("gpt-4o", {"service_tier": "priority"}, "service_tier"),
    ("gpt-4o", {"service_tier": "flex"}, "service_tier"),
    ("open-gpt", {"service_tier": "scale"}, "service_tier"),
    ("gpt-4o", {"web_search_options": {}}, "web_search_options"),
    ("gpt-4o", {"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ("open-gpt", {"tools": [{"type": "function", "function": {"name": "f"}},
                            {"type": "code_interpreter"}]}, "tools[1].type"),
    ("capped-gpt", {"max_tokens": 257}, "max_tokens"),
    ("capped-gpt", {"max_completion_tokens": 100_000}, "max_completion_tokens"),
    ("capped-claude", {"max_tokens": 64_000}, "max_tokens"),
    ("claude-haiku-4-5", {"service_tier": "priority"}, "service_tier"),
    ("claude-haiku-4-5", {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
     "tools[0].type"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_features_that_raise_the_bill_are_refused_unless_the_entry_enables_them(
    gateway: RunningGateway, fake: FakeProvider, model: str, extra: dict[str, Any], param: str,
    stream: bool,
) -> None:
    ws, key = gateway.workspace("hobby")
    before = gateway.balance(key)["balance"]
    with gateway.client(key) as c:
        r = c.post("/v1/chat/completions",
                   json={"model": model, "messages": MESSAGES, "stream": stream, **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "unsupported_parameter"
    assert r.json()["error"]["param"] == param
    assert fake.count() == 0
    assert gateway.balance(key)["balance"] == before and gateway.ledger(ws) == []


@pytest.mark.parametrize(("extra", "forwarded"), [
    ({"service_tier": "priority"}, {"service_tier": "priority", "max_tokens": 512}),
    ({"service_tier": "default", "max_tokens": 512}, {"service_tier": "default", "max_tokens": 512}),
    ({"web_search_options": {}}, {"web_search_options": {}}),
])
def test_an_entry_enables_tiers_and_hosted_tools(
    gateway: RunningGateway, fake: FakeProvider, extra: dict[str, Any], forwarded: dict[str, Any],
) -> None:
    _, key = gateway.workspace("hobby")
    with gateway.client(key) as c:
        r = c.post("/v1/chat/completions", json={"model": "open-gpt", "messages": MESSAGES, **extra})
    assert r.status_code == 200, r.text
    assert sent(fake).items() >= forwarded.items()


def test_the_entry_cap_is_sent_when_the_client_sets_no_budget(
    gateway: RunningGateway, fake: FakeProvider,
) -> None:
    _, key = gateway.workspace("hobby")
    with gateway.client(key) as c:
        for model in ("capped-gpt", "capped-claude", "gpt-4o"):
            r = c.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES})
            assert r.status_code == 200, r.text
            if model == "capped-gpt":  # an OpenAI-compatible server at an api_base: max_tokens
                assert sent(fake)["max_tokens"] == 256
                assert "max_completion_tokens" not in sent(fake)
            elif model == "capped-claude":  # litellm -> Anthropic's own max_tokens
                assert sent(fake)["max_tokens"] == 300
            else:  # no cap in the entry: nothing added
                assert "max_tokens" not in sent(fake)
                assert "max_completion_tokens" not in sent(fake)
        r = c.post("/v1/chat/completions",
                   json={"model": "capped-gpt", "messages": MESSAGES, "max_tokens": 200})
        assert r.status_code == 200 and sent(fake)["max_tokens"] == 200


def test_openai_itself_gets_the_cap_as_max_completion_tokens() -> None:
    entry = ModelEntry("gpt-x", "openai", "gpt-x", 5, True, True, max_output_tokens=64)
    body: dict[str, Any] = {"model": "gpt-x", "messages": MESSAGES}
    billed_features.check(entry, body, house_pays=True)
    assert body["max_completion_tokens"] == 64 and "max_tokens" not in body
    untouched: dict[str, Any] = {"model": "gpt-x", "service_tier": "priority"}
    billed_features.check(entry, untouched, house_pays=False)
    assert untouched == {"model": "gpt-x", "service_tier": "priority"}


def test_a_byo_key_pays_for_what_it_asks(gateway: RunningGateway, fake: FakeProvider) -> None:
    fake.add_key("sk-client-own-key-123456")
    _, key = gateway.workspace("hobby")
    with gateway.client(key) as c:
        r = c.post("/v1/chat/completions", json={"model": "capped-gpt", "messages": MESSAGES,
                                                 "service_tier": "priority", "max_tokens": 4000},
                   headers={"x-bookbag-provider-key": "sk-client-own-key-123456"})
    assert r.status_code == 200, r.text
    assert sent(fake)["service_tier"] == "priority" and sent(fake)["max_tokens"] == 4000


@pytest.mark.parametrize("extra", [
    {"max_tokens": "many"}, {"max_tokens": 0}, {"max_completion_tokens": True},
    {"service_tier": 7}, {"tools": "web"}, {"tools": [{"name": "x"}]},
])
def test_malformed_budgets_tiers_and_tools_are_400(gateway: RunningGateway, fake: FakeProvider,
                                                   extra: dict[str, Any]) -> None:
    _, key = gateway.workspace("hobby")
    with gateway.client(key) as c:
        r = c.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES, **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert fake.count() == 0


@pytest.mark.parametrize(("fields", "message"), [
    ('max_output_tokens = 0', "'max_output_tokens' must be a whole number >= 1"),
    ('max_output_tokens = "lots"', "'max_output_tokens' must be a whole number >= 1"),
    ('service_tiers = "priority"', "'service_tiers' must be a list of non-empty strings"),
    ('service_tiers = ["default"]', "'service_tiers' lists the tiers beyond auto and default"),
    ('hosted_tools = [""]', "'hosted_tools' must be a list of non-empty strings"),
    ('hosted_tools = ["function"]', "'hosted_tools' lists hosted tool types"),
    ('kind = "embedding"\ncredits = 0\nmax_output_tokens = 5', "are for chat models"),
])
def test_the_catalog_fields_are_checked_at_load(fields: str, message: str) -> None:
    text = f'[models.m]\nprovider = "openai"\n{fields}\n[plans.free]\ncredits = 1\n'
    if "credits" not in fields:
        text = text.replace('provider = "openai"', 'provider = "openai"\ncredits = 1')
    with pytest.raises(CatalogError, match=message) as caught:
        parse(tomllib.loads(text))
    assert '[models."m"]' in str(caught.value)
