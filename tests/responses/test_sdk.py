"""The openai SDK's `responses.create` against the gateway: JSON, stream and a tool round
trip with `function_call_output`, on the OpenAI-backed model (relayed to the upstream's
/v1/responses), an Anthropic model and an OpenAI-compatible server (translated through
chat), and bookbag-local; each charged exactly as on chat (ledger rows and balance), the
ledger naming the Response the client received."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.fake_provider import OPENAI_KEY, FakeProvider
from tests.harness import RunningGateway
from tests.responses.conftest import COST, RELAYED, TOOLS, sdk

PROVIDER_MODELS = ("gpt-4o-mini", "claude-haiku-4-5", "custom-llm")
UPSTREAM_PATH = {"gpt-4o-mini": "/v1/responses", "claude-haiku-4-5": "/v1/messages",
                 "custom-llm": "/v1/chat/completions"}


def charged(gateway: RunningGateway, key: str, ws: str, model: str,
            ids: list[str]) -> list[dict[str, Any]]:
    """One Responses reply per id in the ledger at the chat price, each naming the
    Response the client got, and the balance moved by exactly that."""
    rows = gateway.ledger(ws)
    assert sorted(r["response_id"] for r in rows) == sorted(ids), rows
    assert {(r["api"], r["model"], r["credits"]) for r in rows} == {
        ("responses", model, COST[model])}
    assert gateway.balance(key)["balance"] == 100 - COST[model] * len(ids)
    return rows


@pytest.mark.parametrize("model", PROVIDER_MODELS)
def test_create_is_charged_as_chat(gateway: RunningGateway, provider: FakeProvider,
                                   model: str) -> None:
    ws, key = gateway.workspace("free")
    raw = sdk(gateway, key).responses.with_raw_response.create(model=model,
                                                                input="hello there")
    response = raw.parse()
    assert response.object == "response" and response.status == "completed"
    assert response.output_text.startswith("Hello from fake")
    assert response.output_text.endswith("hello there")
    assert response.usage is not None and response.usage.output_tokens > 0
    assert raw.headers["x-bookbag-credits-charged"] == str(COST[model])
    assert raw.headers["x-bookbag-credits-remaining"] == str(100 - COST[model])
    assert provider.received[-1].path == UPSTREAM_PATH[model]
    row = charged(gateway, key, ws, model, [response.id])[0]
    assert row["prompt_tokens"] == response.usage.input_tokens
    assert row["completion_tokens"] == response.usage.output_tokens


def test_the_relay_sends_the_body_and_the_house_key(gateway: RunningGateway,
                                                    provider: FakeProvider) -> None:
    _, key = gateway.workspace("free")
    sdk(gateway, key).responses.create(model=RELAYED, input="hi", instructions="Be brief.",
                                       metadata={"agent_id": "agent-7", "team": "red"})
    sent = provider.received[-1]
    assert sent.path == "/v1/responses"
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert key not in str(sent.headers)
    assert sent.body["instructions"] == "Be brief." and sent.body["input"] == "hi"
    assert sent.body["metadata"] == {"team": "red"}  # Bookbag's attribution taken out
    assert sent.body["store"] is False  # the house's key: no state kept upstream


@pytest.mark.parametrize("model", PROVIDER_MODELS)
def test_stream_is_charged_once_with_the_providers_usage(
        gateway: RunningGateway, provider: FakeProvider, model: str) -> None:
    ws, key = gateway.workspace("free")
    kinds: list[str] = []
    with sdk(gateway, key).responses.stream(model=model, input="hello there") as stream:
        text = ""
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert text.startswith("Hello from fake") and text.endswith("hello there")
    assert final.output_text == text
    assert final.usage is not None and final.usage.output_tokens > 0
    assert final.usage.model_extra == {"credits": COST[model]}  # the reply's price, added
    assert provider.received[-1].path == UPSTREAM_PATH[model]
    assert "stream_options" not in provider.received[-1].body or model != RELAYED
    row = charged(gateway, key, ws, model, [final.id])[0]
    assert row["completion_tokens"] == final.usage.output_tokens


def _round_trip(client: openai.OpenAI, model: str, stream: bool) -> list[Any]:
    """Ask with a tool, answer its call with `function_call_output`, get the text."""
    def create(input_: Any) -> Any:
        if not stream:
            return client.responses.create(model=model, input=input_, tools=TOOLS)
        with client.responses.stream(model=model, input=input_, tools=TOOLS) as events:
            for _ in events:
                pass
            return events.get_final_response()

    first = create("look up the weather")
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "lookup"
    assert "input" in calls[0].arguments
    history: list[Any] = [{"role": "user", "content": "look up the weather"}]
    history += [item.model_dump(exclude_none=True) for item in first.output]
    history.append({"type": "function_call_output", "call_id": calls[0].call_id,
                    "output": "sunny, 21 C"})
    second = create(history)
    assert second.status == "completed" and second.output_text.startswith("Hello from fake")
    return [first, second]


@pytest.mark.parametrize("model", PROVIDER_MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_round_trip(gateway: RunningGateway, provider: FakeProvider, model: str,
                           stream: bool) -> None:
    ws, key = gateway.workspace("free")
    replies = _round_trip(sdk(gateway, key), model, stream)
    assert provider.received[-1].path == UPSTREAM_PATH[model]
    charged(gateway, key, ws, model, [r.id for r in replies])


@pytest.mark.parametrize("stream", [False, True])
def test_bookbag_local_answers_text_free(gateway: RunningGateway, stream: bool) -> None:
    ws, key = gateway.workspace("free")
    client = sdk(gateway, key)
    question = [{"role": "developer", "content": "The capital of France is Paris."},
                {"role": "user", "content": "What is the capital of France?"}]
    if stream:
        with client.responses.stream(model="bookbag-local", input=question) as events:
            for _ in events:
                pass
            response = events.get_final_response()
    else:
        response = client.responses.create(model="bookbag-local", input=question)
    assert "Paris" in response.output_text
    rows = gateway.ledger(ws)
    assert [(r["api"], r["billing_mode"], r["credits"], r["response_id"]) for r in rows] == [
        ("responses", "local", 0, response.id)]
    assert gateway.balance(key)["balance"] == 100


def test_bookbag_local_refuses_tools_in_openais_shape(gateway: RunningGateway) -> None:
    ws, key = gateway.workspace("free")
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway, key).responses.create(model="bookbag-local", input="hi", tools=TOOLS)
    assert caught.value.status_code == 400
    body: Any = caught.value.body
    assert body["type"] == "invalid_request_error" and body["param"] == "tools"
    assert gateway.ledger(ws) == []


def test_the_route_has_its_own_metrics(gateway: RunningGateway) -> None:
    _, key = gateway.workspace("free")
    sdk(gateway, key).responses.create(model=RELAYED, input="hi")
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        text = c.get("/metrics").text
    assert ('bookbag_requests_total{billing_mode="metered",model="gpt-4o-mini",'
            'route="/v1/responses",status="200"}') in text
    assert 'bookbag_gateway_overhead_seconds_count{route="/v1/responses"}' in text
