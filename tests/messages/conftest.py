"""One gateway for the Messages tests, on the test catalog with the Claude entry allowing
two betas and a thinking budget (what Claude Code sends), and the Anthropic SDK at it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests import harness
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway

BETAS = ("interleaved-thinking-2025-05-14", "fine-grained-tool-streaming-2025-05-14")
THINKING_CAP = 2048
HELLO: list[Any] = [{"role": "user", "content": "hello there"}]
TOOLS: list[Any] = [{"name": "lookup", "description": "Look something up",
                     "input_schema": {"type": "object",
                                      "properties": {"input": {"type": "string"}}}}]
COST = {"claude-haiku-4-5": 2, "gpt-4o-mini": 1, "bookbag-local": 0}


def pricing_text(fake: FakeProvider) -> str:
    text = harness.test_pricing(fake)
    claude = 'aliases = ["Claude Haiku 4.5"]\n'
    assert claude in text
    dated = 'aliases = ["Claude Haiku 4.5", "claude-haiku-4-5-20251001"]\n'  # as packaged
    betas = ", ".join(f'"{b}"' for b in BETAS)
    return text.replace(claude, dated + f"anthropic_betas = [{betas}]\n"
                        f"max_thinking_tokens = {THINKING_CAP}\nmax_output_tokens = 16384\n")


@pytest.fixture(scope="package")
def gateway(tmp_path_factory: pytest.TempPathFactory, fake: FakeProvider
            ) -> Iterator[RunningGateway]:
    """One gateway for the package: every test works in its own workspace."""
    with harness.running_catalog(tmp_path_factory.mktemp("messages-api"),
                                 pricing_text(fake)) as gw:
        yield gw


def sdk(gateway: RunningGateway, key: str, **kwargs: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0, **kwargs)


def reply_rows(gateway: RunningGateway, ws: str) -> list[dict[str, Any]]:
    return gateway.ledger(ws)
