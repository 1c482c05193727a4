"""The catalog that ships (the repository's pricing.toml), every chat model on every route:
issue 14's "Done when" on the real catalog, not only the tests' own.

Each provider entry is pointed at the fake provider (`api_base`, the only change), and an
OpenAI entry keeps the dialects the real OpenAI speaks (a custom `api_base` would otherwise
speak chat only). Every chat model then answers a tool loop (a call, its result, the
answer) on Chat Completions and the Responses API through the openai SDK and on Messages
through the anthropic SDK; `bookbag-local`, which refuses tools, answers text on each.
Every reply is one ledger row naming its API at the model's price, and the balance moved
by exactly the sum.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from gateway.catalog import load
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway

SHIPPED = Path(__file__).resolve().parent.parent / "pricing.toml"
QUESTION = "look up the weather"
TOOL = {"name": "lookup", "description": "Look something up.",
        "parameters": {"type": "object", "properties": {"input": {"type": "string"}},
                       "required": ["input"]}}


def shipped_at_the_fake(fake: FakeProvider) -> str:
    """pricing.toml as shipped, each provider entry's upstream at the fake provider."""
    text = SHIPPED.read_text()
    raw = tomllib.loads(text)
    for name, entry in raw["models"].items():
        head = re.compile(rf'^\[models\."{re.escape(name)}"\]\n', re.M)  # not a comment
        extra = ""
        if entry["provider"] == "openai":
            extra = f'api_base = "{fake.openai_base}"\n'
            if entry.get("kind", "chat") == "chat":
                extra += 'dialects = ["chat", "responses"]\n'  # as api.openai.com
        elif entry["provider"] == "anthropic":
            extra = f'api_base = "{fake.anthropic_base}"\n'
        at = head.search(text)
        assert at is not None, name
        text = text[:at.end()] + extra + text[at.end():]
    return text


@pytest.fixture
def pricing(tmp_path: Path, provider: FakeProvider) -> Path:
    path = tmp_path / "pricing.toml"
    path.write_text(shipped_at_the_fake(provider))
    return path


def chat_loop(client: openai.OpenAI, model: str) -> int:
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    tools: Any = [{"type": "function", "function": TOOL}]
    first = client.chat.completions.create(model=model, messages=messages, tools=tools)
    [call] = first.choices[0].message.tool_calls or []
    assert call.type == "function" and call.function.name == "lookup"
    assert "input" in json.loads(call.function.arguments)
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    second = client.chat.completions.create(model=model, messages=messages, tools=tools)
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content
    return 2


def responses_loop(client: openai.OpenAI, model: str) -> int:
    tools: Any = [{"type": "function", **TOOL}]
    first = client.responses.create(model=model, input=QUESTION, tools=tools)
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "lookup"
    history: list[Any] = [{"role": "user", "content": QUESTION}]
    history += [item.model_dump(exclude_none=True) for item in first.output]
    history.append({"type": "function_call_output", "call_id": call.call_id,
                    "output": "sunny"})
    second = client.responses.create(model=model, input=history, tools=tools)
    assert second.status == "completed" and second.output_text
    return 2


def messages_loop(client: anthropic.Anthropic, model: str) -> int:
    tools: Any = [{"name": TOOL["name"], "description": TOOL["description"],
                   "input_schema": TOOL["parameters"]}]
    turns: list[Any] = [{"role": "user", "content": QUESTION}]
    first = client.messages.create(model=model, max_tokens=200, messages=turns, tools=tools)
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "lookup"
    turns += [{"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                                for b in first.content]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                            "content": "sunny"}]}]
    second = client.messages.create(model=model, max_tokens=200, messages=turns, tools=tools)
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"
    return 2


def local_text(oa: openai.OpenAI, an: anthropic.Anthropic, model: str) -> dict[str, int]:
    chat = oa.chat.completions.create(model=model,
                                      messages=[{"role": "user", "content": QUESTION}])
    assert chat.choices[0].message.content
    assert oa.responses.create(model=model, input=QUESTION).output_text
    message = an.messages.create(model=model, max_tokens=100,
                                 messages=[{"role": "user", "content": QUESTION}])
    assert message.content[0].type == "text" and message.content[0].text
    return {"chat": 1, "responses": 1, "messages": 1}


def test_every_shipped_chat_model_runs_a_tool_loop_on_every_route_charged_as_chat(
        gateway: RunningGateway, provider: FakeProvider) -> None:
    shipped = load(SHIPPED)
    models = [m for m in gateway.gw.catalog.models.values() if m.kind == "chat"]
    assert sorted(m.id for m in models) == sorted(
        m.id for m in shipped.models.values() if m.kind == "chat")
    assert {m.provider for m in models} == {"local", "openai", "anthropic"}
    for model in models:
        ws, key = gateway.workspace("pro")
        before = gateway.balance(key)["balance"]
        received = len(provider.received)
        oa = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
        an = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
        if model.provider == "local":
            replies = local_text(oa, an, model.id)
        else:
            replies = {"chat": chat_loop(oa, model.id),
                       "responses": responses_loop(oa, model.id),
                       "messages": messages_loop(an, model.id)}
            # Each reply reached the provider once, on the path its upstream speaks.
            paths = [r.path for r in provider.received[received:]]
            assert len(paths) == 6, (model.id, paths)
            native = {"openai": r"/v1/(chat/completions|responses)",
                      "anthropic": r"/v1/messages"}[model.provider]
            assert all(re.fullmatch(native, p) for p in paths), (model.id, paths)
        price = model.credits if model.metered and model.provider != "local" else 0
        rows = gateway.wait_ledger(ws, sum(replies.values()))
        apis = {api: sum(1 for r in rows if r["api"] == api) for api in replies}
        assert apis == replies, model.id
        assert {(r["model"], r["credits"]) for r in rows} == {(model.id, price)}, model.id
        assert gateway.balance(key)["balance"] == before - sum(replies.values()) * price
