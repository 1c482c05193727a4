"""One request, one charge, one ledger entry: the thin slice end to end."""

from __future__ import annotations

import openai

from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway


def test_metered_reply_is_charged_once(gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}]
    )
    reply = raw.parse()
    assert reply.choices[0].message.content == "Hello from fake gpt-4o-mini: hello there"
    assert raw.headers["x-bookbag-credits-charged"] == "1"
    assert raw.headers["x-bookbag-credits-remaining"] == "99"
    assert provider.count("/v1/chat/completions") == 1
    rows = gateway.ledger(ws)
    assert len(rows) == 1
    assert rows[0]["credits"] == 1 and rows[0]["billing_mode"] == "metered"
    assert rows[0]["model"] == "gpt-4o-mini"
    assert gateway.balance(key)["balance"] == 99
