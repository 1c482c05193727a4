"""One gateway for the Responses tests, on the test catalog with gpt-4o-mini marked as
OpenAI itself (it speaks Responses: relayed), and the openai SDK at it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests import harness
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway

COST = {"gpt-4o-mini": 1, "claude-haiku-4-5": 2, "custom-llm": 3, "bookbag-local": 1}
RELAYED = "gpt-4o-mini"
TOOLS: list[Any] = [{"type": "function", "name": "lookup", "description": "Look something up",
                     "parameters": {"type": "object",
                                    "properties": {"input": {"type": "string"}},
                                    "required": ["input"]}}]


def pricing_text(fake: FakeProvider) -> str:
    return harness.speaks_responses(harness.test_pricing(fake))


@pytest.fixture(scope="package")
def gateway(tmp_path_factory: pytest.TempPathFactory, fake: FakeProvider
            ) -> Iterator[RunningGateway]:
    """One gateway for the package: every test works in its own workspace."""
    with harness.running_catalog(tmp_path_factory.mktemp("responses-api"),
                                 pricing_text(fake)) as gw:
        yield gw


def sdk(gateway: RunningGateway, key: str, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, **kwargs)
