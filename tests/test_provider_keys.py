"""A model without a provider key: a 400 that says what to set, named in the log and /v1/models."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import GatewayFactory

NO_KEY_PRICING = """
[models."bookbag-local"]
provider = "local"
credits = 1

[models."gpt-4o-mini"]
provider = "openai"
credits = 1
byo = true

[models."claude-haiku-4-5"]
provider = "anthropic"
credits = 2

[plans.free]
credits = 100
"""


def test_a_missing_house_key_is_a_clear_non_retryable_error(
        make_gateway: GatewayFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pricing = tmp_path / "no-keys.toml"
    pricing.write_text(NO_KEY_PRICING)
    gw = make_gateway(BOOKBAG_PRICING=str(pricing), OPENAI_API_KEY="", ANTHROPIC_API_KEY="")
    _ws, key = gw.workspace("free")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=2)
    caplog.set_level(logging.INFO, logger="bookbag.request")
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "hi"}])
    error = raised.value.body
    assert isinstance(error, dict) and error["code"] == "provider_key_missing", error
    assert "OPENAI_API_KEY" in error["message"] and "X-Bookbag-Provider-Key" in error["message"]
    lines = [r.getMessage() for r in caplog.records if r.name == "bookbag.request"
             and "/v1/chat/completions" in r.getMessage()]
    assert len(lines) == 1, lines  # not retried by the SDK
    assert "model=gpt-4o-mini" in lines[0] and "status=400" in lines[0], lines
    assert gw.balance(key)["balance"] == 100

    models = httpx.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).json()
    by_id = {m["id"]: m for m in models["data"]}
    assert by_id["bookbag-local"]["available"] is True and "requires" not in by_id["bookbag-local"]
    assert (by_id["gpt-4o-mini"]["available"], by_id["gpt-4o-mini"]["requires"]) == (
        False, "OPENAI_API_KEY")
    assert by_id["claude-haiku-4-5"]["requires"] == "ANTHROPIC_API_KEY"
