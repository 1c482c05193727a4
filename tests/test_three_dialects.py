"""Every chat model of the catalog answers on all three routes through the official
clients (SPEC "Three dialects, one meter"), and each reply is charged as on chat: one
ledger row per reply naming its API, at the model's price (zero for the local model),
the balance moved by exactly that."""

from __future__ import annotations

import anthropic
import openai

from tests.harness import RunningGateway

HELLO = "hello there"


def test_every_chat_model_answers_on_every_route_and_is_charged_as_chat(
        gateway: RunningGateway) -> None:
    models = [m for m in gateway.gw.catalog.models.values() if m.kind == "chat"]
    assert {m.provider for m in models} >= {"local", "openai", "anthropic"}
    for model in models:
        ws, key = gateway.workspace("pro")
        before = gateway.balance(key)["balance"]
        oa = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
        chat = oa.chat.completions.create(model=model.id,
                                          messages=[{"role": "user", "content": HELLO}])
        assert chat.choices[0].message.content, model.id
        response = oa.responses.create(model=model.id, input=HELLO)
        assert response.status == "completed" and response.output_text, model.id
        an = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
        message = an.messages.create(model=model.id, max_tokens=100,
                                     messages=[{"role": "user", "content": HELLO}])
        assert message.content[0].type == "text" and message.content[0].text, model.id

        price = model.credits if model.metered and model.provider != "local" else 0
        rows = gateway.wait_ledger(ws, 3)
        assert sorted(r["api"] for r in rows) == ["chat", "messages", "responses"]
        assert {(r["model"], r["credits"]) for r in rows} == {(model.id, price)}, model.id
        assert gateway.balance(key)["balance"] == before - 3 * price, model.id


def test_usage_groups_replies_by_dialect(gateway: RunningGateway) -> None:
    """GET /v1/usage?group_by=dialect: one group per API, its replies and credits."""
    ws, key = gateway.workspace("pro")
    model = next(m for m in gateway.gw.catalog.models.values()
                 if m.kind == "chat" and m.metered and m.provider == "openai")
    oa = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    for _ in range(2):
        oa.chat.completions.create(model=model.id, messages=[{"role": "user", "content": HELLO}])
    oa.responses.create(model=model.id, input=HELLO)
    an = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    an.messages.create(model="bookbag-local", max_tokens=100,
                       messages=[{"role": "user", "content": HELLO}])
    gateway.wait_ledger(ws, 4)
    with gateway.client(key) as c:
        usage = c.get("/v1/usage", params={"group_by": "dialect"}).json()
        both = c.get("/v1/usage", params={"group_by": "dialect,model"}).json()
    assert {(g["dialect"], g["replies"], g["credits"]) for g in usage["data"]} == {
        ("chat", 2, 2 * model.credits), ("responses", 1, model.credits), ("messages", 1, 0)}
    assert {(g["dialect"], g["model"]) for g in both["data"]} == {
        ("chat", model.id), ("responses", model.id), ("messages", "bookbag-local")}
