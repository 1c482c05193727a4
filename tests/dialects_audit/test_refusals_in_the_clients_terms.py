"""A refusal on a translated route names the field the client sent, in its own dialect
(SPEC "Three dialects": a parameter a route cannot honour is refused with the dialect's
400, never dropped): a Responses client that asks `bookbag-local` or Claude for
structured output or a reasoning effort hears about `text.format` / `reasoning.effort`,
not chat's `response_format` / `reasoning_effort`, which it never sent."""

from __future__ import annotations

from typing import Any

import pytest

from tests.dialects_audit.conftest import post, responses_refused
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway

SCHEMA = {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}


@pytest.mark.parametrize("model", ["bookbag-local", "claude-haiku-4-5"])
@pytest.mark.parametrize(("extra", "param"), [
    ({"text": SCHEMA}, "text.format"),
    ({"text": {"format": {"type": "json_object"}}}, "text.format"),
    ({"reasoning": {"effort": "low"}}, "reasoning.effort"),
])
def test_a_responses_refusal_names_the_responses_field(
        gateway: RunningGateway, provider: FakeProvider, model: str, extra: dict[str, Any],
        param: str) -> None:
    error = responses_refused(gateway, provider, model, extra, param)
    assert f"'{param}'" in error["message"], error["message"]


def test_what_chat_carries_is_still_answered(gateway: RunningGateway) -> None:
    _, key = gateway.workspace("free")
    for extra in ({"text": SCHEMA}, {"reasoning": {"effort": "low"}}):
        r = post(gateway, "/v1/responses", {"model": "custom-llm", "input": "hi", **extra}, key)
        assert r.status_code == 200, r.text
