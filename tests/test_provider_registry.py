"""The registry hands the check made before any credit moves to the model's own provider."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import UnsupportedParameter
from gateway.providers.local import LocalProvider
from gateway.providers.registry import Providers
from gateway.providers.relay import RelayProvider
from gateway.types import ModelEntry

LOCAL = ModelEntry(id="bookbag-local", provider="local", upstream_model="bookbag-local",
                   credits=1, metered=False, byo=False)
OPENAI = ModelEntry(id="gpt-x", provider="openai", upstream_model="gpt-x", credits=1,
                    metered=True, byo=True)
CLAUDE = ModelEntry(id="claude-x", provider="anthropic", upstream_model="claude-x", credits=1,
                    metered=True, byo=True)
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"1": 2}}


class RecordingLitellm:
    """Stands in for LitellmProvider: records each check, refuses nothing."""

    def __init__(self) -> None:
        self.checked: list[tuple[str, dict[str, Any]]] = []

    async def check(self, model: ModelEntry, body: dict[str, Any]) -> None:
        self.checked.append((model.id, body))

    async def close(self) -> None:
        pass


async def test_each_route_is_checked_by_its_own_provider() -> None:
    litellm = RecordingLitellm()
    providers = Providers(RelayProvider(), LocalProvider(), litellm)
    try:
        with pytest.raises(UnsupportedParameter) as info:  # bookbag-local refuses it
            await providers.check(LOCAL, BODY)
        assert info.value.param == "logit_bias"
        await providers.check(OPENAI, BODY)  # relayed as sent: OpenAI answers for it
        assert litellm.checked == []
        await providers.check(CLAUDE, BODY)
        assert litellm.checked == [("claude-x", BODY)]
    finally:
        await providers.close()
