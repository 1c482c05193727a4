"""litellm embeddings take only the OpenAI embedding parameters (issue 12, point 8).

litellm's own keys (`mock_response`, `custom_llm_provider`, `litellm_params`,
`api_base`, ...) would steer the call or fake its answer: they are refused
with 400 `unsupported_parameter` before any upstream request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests import harness
from tests.conftest import GatewayFactory
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway

VLLM = """
[models."vllm-embed"]
provider = "hosted_vllm"
kind = "embedding"
credits = 0
upstream = "text-embedding-3-small"
api_base = "{openai}"
api_key_env = "OPENAI_API_KEY"
"""


@pytest.fixture
def gateway(make_gateway: GatewayFactory, fake: FakeProvider, tmp_path: Path) -> RunningGateway:
    path = tmp_path / "embed.toml"
    path.write_text(harness.test_pricing(fake) + VLLM.format(openai=fake.openai_base))
    return make_gateway(BOOKBAG_PRICING=path)


@pytest.mark.parametrize(("extra", "param"), [
    ({"mock_response": [0.1, 0.2]}, "mock_response"),
    ({"custom_llm_provider": "openai"}, "custom_llm_provider"),
    ({"litellm_params": {"api_base": "http://127.0.0.1:1"}}, "litellm_params"),
    ({"api_base": "http://169.254.169.254/"}, "api_base"),
    ({"temperature": 0.5}, "temperature"),
])
def test_litellm_embeddings_refuse_keys_outside_the_allowlist(
    gateway: RunningGateway, fake: FakeProvider, extra: dict[str, Any], param: str,
) -> None:
    _, key = gateway.workspace("free")
    with gateway.client(key) as c:
        r = c.post("/v1/embeddings", json={"model": "vllm-embed", "input": "a cat", **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "unsupported_parameter"
    assert r.json()["error"]["param"] == param
    assert fake.count() == 0


def test_litellm_embeddings_still_embed(gateway: RunningGateway, fake: FakeProvider) -> None:
    _, key = gateway.workspace("free")
    with gateway.client(key) as c:
        r = c.post("/v1/embeddings", json={"model": "vllm-embed", "input": ["a cat", "a dog"]})
    assert r.status_code == 200, r.text
    assert [d["index"] for d in r.json()["data"]] == [0, 1]
    assert fake.count("/v1/embeddings") == 1
