"""A Claude-Code-like session, the Idempotency-Key scoped by route, count_tokens' own
rate-limit buckets, and GET /v1/models in Anthropic's shape."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway.flow import count_tokens as count_tokens_flow
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway
from tests.messages.conftest import BETAS, HELLO, TOOLS, sdk

DATED = "claude-haiku-4-5-20251001"  # Claude Code sends dated ids


def test_a_claude_code_like_session(gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("pro")
    headers = {"anthropic-beta": ",".join(BETAS), "x-app": "cli",
               "anthropic-dangerous-direct-browser-access": "true"}
    client = sdk(gateway, key, default_headers=headers)
    models = client.models.list()
    assert DATED not in {m.id for m in models.data}  # aliases resolve; ids are canonical
    assert {"claude-haiku-4-5", "gpt-4o-mini", "bookbag-local"} <= {m.id for m in models.data}
    assert all(m.type == "model" for m in models.data)
    for _ in range(25):  # the startup burst
        assert client.beta.messages.count_tokens(model=DATED, messages=HELLO,
                                                 tools=TOOLS).input_tokens > 0
    turns: list[Any] = [{"role": "user", "content": "read the file"}]
    with client.beta.messages.stream(model=DATED, max_tokens=1024, messages=turns,
                                     tools=TOOLS, system="You are Claude Code.") as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    turns += [{"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                                for b in first.content]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                            "content": "the file's text"}]}]
    with client.beta.messages.stream(model=DATED, max_tokens=1024, messages=turns,
                                     tools=TOOLS) as stream:
        text = "".join(stream.text_stream)
    assert text.startswith("Hello from fake")
    with httpx.Client(base_url=gateway.url, timeout=10) as c:  # the query, sent explicitly
        raw = c.post("/v1/messages?beta=true", headers={"x-api-key": key, **headers}, json={
            "model": DATED, "max_tokens": 64, "messages": HELLO, "stream": True})
    assert raw.status_code == 200 and raw.text.rstrip().endswith('{"type":"message_stop"}')
    sent = [r for r in provider.received if r.path == "/v1/messages"]
    assert len(sent) == 3 and all(r.headers["anthropic-beta"] == ",".join(BETAS) for r in sent)
    assert provider.count("/v1/messages/count_tokens") == 25
    rows = gateway.ledger(ws)  # two replies; the 25 counts are free and not in the ledger
    assert [(r["api"], r["model"], r["credits"]) for r in rows] == [
        ("messages", "claude-haiku-4-5", 2)] * 3


def test_models_in_anthropic_shape(gateway: RunningGateway) -> None:
    _, key = gateway.workspace("free")
    with httpx.Client(base_url=gateway.url) as c:
        listed = c.get("/v1/models", headers={"x-api-key": key,
                                              "anthropic-version": "2023-06-01"})
        one = c.get("/v1/models/Claude Haiku 4.5", headers={"x-api-key": key,
                                                            "anthropic-version": "2023-06-01"})
        missing = c.get("/v1/models/nope", headers={"x-api-key": key,
                                                   "anthropic-version": "2023-06-01"})
        openai_shape = c.get("/v1/models", headers={"authorization": f"Bearer {key}"})
    body = listed.json()
    assert set(body) == {"data", "has_more", "first_id", "last_id"} and not body["has_more"]
    assert body["first_id"] == body["data"][0]["id"]
    assert "text-embedding-3-small" not in {m["id"] for m in body["data"]}
    assert one.json() == {"type": "model", "id": "claude-haiku-4-5",
                          "display_name": "Claude Haiku 4.5",
                          "created_at": one.json()["created_at"]}
    assert one.json()["created_at"].endswith("Z")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert openai_shape.json()["object"] == "list"


@pytest.mark.parametrize("stream", [False, True])
def test_an_idempotency_key_replays_in_its_dialect_and_is_scoped_by_route(
        gateway: RunningGateway, provider: FakeProvider, stream: bool) -> None:
    ws, key = gateway.workspace("free")
    body = {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": HELLO,
            "stream": stream}
    sent = {"x-api-key": key, "idempotency-key": f"same-key-{stream}"}
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        first = c.post("/v1/messages", json=body, headers=sent)
        again = c.post("/v1/messages", json=body, headers=sent)
        # the same key on the chat route is another key: a new reply in chat's dialect
        chat = c.post("/v1/chat/completions", headers={
            "authorization": f"Bearer {key}", "idempotency-key": f"same-key-{stream}"},
            json={"model": "claude-haiku-4-5", "messages": HELLO, "max_tokens": 50})
    assert first.status_code == again.status_code == chat.status_code == 200
    assert again.content == first.content  # byte-identical, event lines included
    assert again.headers["idempotent-replayed"] == "true"
    assert chat.json()["object"] == "chat.completion"
    assert provider.count("/v1/messages") == 2
    rows = gateway.ledger(ws)
    assert sorted((r["api"], r["credits"]) for r in rows) == [("chat", 2), ("messages", 2)]


def test_count_tokens_has_its_own_buckets_and_ignores_idempotency(
        gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.catalog import RateLimit

    ws, key = gateway.workspace("free")
    monkeypatch.setattr(count_tokens_flow, "PER_KEY", RateLimit(3, 60.0))
    with httpx.Client(base_url=gateway.url) as c:
        def count(k: str, **headers: str) -> httpx.Response:
            return c.post("/v1/messages/count_tokens", json={
                "model": "gpt-4o-mini", "messages": HELLO},
                headers={"x-api-key": k, **headers})

        got = [count(key, **{"idempotency-key": "k1"}).status_code for _ in range(3)]
        over = count(key)
        other = count(gateway.key(ws))  # the bucket is per key
        reply = c.post("/v1/messages", headers={"x-api-key": key}, json={
            "model": "bookbag-local", "max_tokens": 10, "messages": HELLO})
    assert got == [200, 200, 200]
    assert over.status_code == 429 and over.json()["error"]["type"] == "rate_limit_error"
    assert "retry-after" in over.headers
    assert other.status_code == 200
    assert reply.status_code == 200  # the key's own limit is untouched


def test_openai_sdk_errors_stay_openai_shaped(gateway: RunningGateway) -> None:
    """The chat route keeps OpenAI's error shape (only /v1/messages answers Anthropic's)."""
    _, key = gateway.workspace("free")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="nope", messages=HELLO)
    assert info.value.code == "model_not_found"
    with pytest.raises(anthropic.NotFoundError):
        sdk(gateway, key).models.retrieve("nope")


def test_the_readme_example_runs_as_written(gateway: RunningGateway) -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S)
                 if "anthropic.Anthropic" in b)
    ws, key = gateway.workspace("free")
    ns: dict[str, Any] = {}
    exec(compile(block.replace("http://127.0.0.1:8080", gateway.url).replace("bk_...", key),
                 "README", "exec"), ns)
    assert ns["message"].content[0].text.startswith("Hello from fake")
    assert [(r["api"], r["credits"]) for r in gateway.ledger(ws)] == [("messages", 2)]
