"""The OpenAI Agents SDK with its default model class (OpenAIResponsesModel) running a
tool loop through the gateway on the OpenAI-backed model, with trace export OFF (the SDK
would otherwise send traces to OpenAI with the configured key: here, the workspace's
gateway key). Every model call of the loop is a charged Responses reply."""

from __future__ import annotations

import asyncio

import agents
import openai
import pytest

from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway
from tests.responses.conftest import COST, RELAYED


@pytest.fixture(autouse=True)
def no_tracing() -> None:
    agents.set_tracing_disabled(True)


def test_an_agent_runs_a_tool_loop_through_the_gateway(gateway: RunningGateway,
                                                       provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    looked_up: list[str] = []

    @agents.function_tool
    def lookup(input: str) -> str:  # the fake names the argument `input`
        """Look something up."""
        looked_up.append(input)
        return "sunny, 21 C"

    client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    model = agents.OpenAIResponsesModel(model=RELAYED, openai_client=client)
    agent = agents.Agent(name="weather", instructions="Use the lookup tool.", tools=[lookup],
                         model=model)
    result = agents.Runner.run_sync(agent, "what is the weather in Paris?")
    assert looked_up and "Paris" in looked_up[0]
    assert str(result.final_output).startswith("Hello from fake")
    calls = [r for r in provider.received if r.path == "/v1/responses"]
    assert len(calls) == 2  # the tool call, then the answer to its output
    assert any(item.get("type") == "function_call_output" for item in calls[1].body["input"])
    assert all(r.path == "/v1/responses" for r in provider.received)  # no trace export
    rows = gateway.ledger(ws)
    assert [(r["api"], r["credits"]) for r in rows] == [("responses", COST[RELAYED])] * 2
    assert {r["response_id"] for r in rows} == {resp.response_id for resp in result.raw_responses}
    assert gateway.balance(key)["balance"] == 100 - 2 * COST[RELAYED]


def test_an_agent_streams_through_the_gateway(gateway: RunningGateway,
                                              provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    agent = agents.Agent(name="echo", instructions="Answer.",
                         model=agents.OpenAIResponsesModel(model=RELAYED, openai_client=client))

    async def run() -> str:
        streamed = agents.Runner.run_streamed(agent, "hello there")
        async for _ in streamed.stream_events():
            pass
        return str(streamed.final_output)

    assert asyncio.run(run()).endswith("hello there")
    assert [r["api"] for r in gateway.ledger(ws)] == ["responses"]
