"""A `/v1/responses` body validated like the real API, attribution taken out of it, and the
tenancy and catalog rules applied on the house's keys (pure functions, no server)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.dialects.responses.parse import responses_request
from gateway.dialects.responses.tenancy import apply_tenancy
from gateway.errors import Forbidden, InvalidRequest, UnsupportedParameter
from gateway.flow import billed_responses as billed
from gateway.types import Caller, ModelEntry
from tests.dialects.fixtures import load

CALLER = Caller("ws_1", "key_1", None, frozenset({"inference"}), "free")
MODEL = ModelEntry("gpt-4.1", "openai", "gpt-4.1", 2, True, True, max_output_tokens=1000)


def _parse(body: dict[str, Any], headers: dict[str, str] | None = None,
           caller: Caller = CALLER) -> Any:
    return responses_request(body, headers or {}, caller)


def test_a_tool_round_trip_is_accepted_as_the_sdk_sends_it() -> None:
    body = {**load("responses_function_call")["follow_up"], "instructions": "Be brief.",
            "stream": True, "tool_choice": {"type": "function", "name": "get_weather"},
            "text": {"format": {"type": "json_schema", "name": "weather",
                                "schema": {"type": "object"}, "strict": True}},
            "reasoning": {"effort": "low", "summary": "auto"}, "max_output_tokens": 500,
            "parallel_tool_calls": False, "store": True, "include": ["reasoning.encrypted_content"]}
    req = _parse(body)
    assert (req.model, req.stream, req.n, req.include_usage) == ("gpt-4.1", True, 1, True)
    assert req.body is body
    plain = _parse({"model": "gpt-4.1", "input": "Tell me a joke."})
    assert (plain.stream, plain.include_usage) == (False, False)


@pytest.mark.parametrize(("patch", "param"), [
    ({"model": None}, "model"),
    ({"input": None}, "input"),
    ({"input": {"role": "user"}}, "input"),
    ({"input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
    ({"input": [{"role": "user"}]}, "input[0].content"),
    ({"input": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]},
     "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
     "input[0].content[0].text"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
     "input[0].call_id"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": 14}]},
     "input[0].output"),
    ({"input": [{"content": "no role or type"}]}, "input[0].type"),
    ({"tools": [{"type": "function", "name": "bad name!"}]}, "tools[0].name"),
    ({"tools": [{"type": "function", "name": "f", "parameters": "{}"}]},
     "tools[0].parameters"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": {"type": "function"}}, "tool_choice.name"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"max_output_tokens": 10}, "max_output_tokens"),
    ({"max_output_tokens": "100"}, "max_output_tokens"),
    ({"temperature": 3}, "temperature"),
    ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"stream": "yes"}, "stream"),
    ({"store": 1}, "store"),
    ({"stream_options": {"include_obfuscation": False}}, "stream_options"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"n": 1}}, "metadata.n"),
    ({"metadata": {"agent_id": "bad id"}}, "metadata.agent_id"),
])
def test_bad_input_is_a_400_naming_the_parameter(patch: dict[str, Any], param: str) -> None:
    body = {"model": "gpt-4.1", "input": "hi", **patch}
    body = {k: v for k, v in body.items() if not (k == "model" and v is None)}
    with pytest.raises(InvalidRequest) as info:
        _parse(body)
    assert info.value.param == param and info.value.status == 400


def test_background_is_refused_on_every_route() -> None:
    with pytest.raises(UnsupportedParameter) as info:
        _parse({"model": "m", "input": "hi", "background": True})
    assert info.value.param == "background"
    assert not _parse({"model": "m", "input": "hi", "background": False}).stream


def test_attribution_headers_then_metadata_which_is_removed() -> None:
    body = {"model": "m", "input": "hi",
            "metadata": {"agent_id": "a1", "conversation_id": "c1", "team": "x"}}
    req = _parse(body)
    assert (req.agent_id, req.conversation_id) == ("a1", "c1")
    assert body["metadata"] == {"team": "x"}
    only = {"model": "m", "input": "hi", "metadata": {"agent_id": "a1"}}
    req = _parse(only, {"x-bookbag-agent-id": "h1", "x-bookbag-conversation-id": "hc"})
    assert (req.agent_id, req.conversation_id) == ("h1", "hc") and "metadata" not in only
    bound = Caller("ws_1", "key_2", "a9", frozenset({"inference"}), "free")
    assert _parse({"model": "m", "input": "hi"}, caller=bound).agent_id == "a9"
    with pytest.raises(Forbidden):
        _parse({"model": "m", "input": "hi", "metadata": {"agent_id": "a1"}}, caller=bound)


def _tenancy(body: dict[str, Any], *, house_pays: bool = True, stores: bool = False,
             owned: frozenset[str] = frozenset()) -> dict[str, Any]:
    apply_tenancy(body, workspace_id="ws_1", house_pays=house_pays, workspace_stores=stores,
                  owns=lambda ws, rid: ws == "ws_1" and rid in owned)
    return body


def test_store_is_forced_off_on_house_keys_unless_the_workspace_opts_in() -> None:
    assert _tenancy({"input": "hi"})["store"] is False  # the API's default is true
    assert _tenancy({"input": "hi", "store": True})["store"] is False
    assert _tenancy({"input": "hi", "store": True}, stores=True)["store"] is True
    assert "store" not in _tenancy({"input": "hi"}, stores=True)
    assert _tenancy({"input": "hi", "store": True}, house_pays=False)["store"] is True


def test_previous_response_id_only_for_the_workspace_s_own_responses() -> None:
    mine = {"previous_response_id": "resp_mine", "input": "and then?"}
    assert _tenancy(mine, owned=frozenset({"resp_mine"})) is mine
    with pytest.raises(InvalidRequest) as info:
        _tenancy({"previous_response_id": "resp_other", "input": "hi"})
    assert (info.value.param, info.value.code) == ("previous_response_id",
                                                   "previous_response_not_found")
    _tenancy({"previous_response_id": "resp_other"}, house_pays=False)  # BYO: its account
    assert _parse({"model": "m", "previous_response_id": "resp_mine"}).n == 1  # no input


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"conversation": "conv_1", "input": "hi"}, "conversation"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
])
def test_shared_provider_state_is_refused_on_house_keys(body: dict[str, Any],
                                                        param: str) -> None:
    with pytest.raises(UnsupportedParameter) as info:
        _tenancy(dict(body))
    assert info.value.param == param
    _tenancy(dict(body), house_pays=False)


def test_hosted_tools_tiers_and_budgets_follow_the_catalog_entry() -> None:
    search = {"tools": [{"type": "function", "name": "f"}, {"type": "web_search"}]}
    with pytest.raises(UnsupportedParameter) as info:
        billed.check(MODEL, dict(search), house_pays=True)
    assert info.value.param == "tools[1].type"
    billed.check(MODEL, dict(search), house_pays=False)
    enabled = ModelEntry("gpt-4.1", "openai", "gpt-4.1", 2, True, True,
                         hosted_tools=("web_search",), service_tiers=("flex",))
    billed.check(enabled, {**search, "tool_choice": {"type": "web_search"},
                           "service_tier": "flex"}, house_pays=True)
    with pytest.raises(UnsupportedParameter) as info:
        billed.check(MODEL, {"tool_choice": {"type": "code_interpreter"}}, house_pays=True)
    assert info.value.param == "tool_choice.type"
    with pytest.raises(UnsupportedParameter) as info:
        billed.check(MODEL, {"service_tier": "priority"}, house_pays=True)
    assert info.value.param == "service_tier"
    with pytest.raises(UnsupportedParameter) as info:
        billed.check(MODEL, {"max_output_tokens": 1001}, house_pays=True)
    assert info.value.param == "max_output_tokens"
    body: dict[str, Any] = {"input": "hi"}
    billed.check(MODEL, body, house_pays=True)
    assert body["max_output_tokens"] == 1000 and "max_completion_tokens" not in body
    billed.check(MODEL, {"tool_choice": {"type": "allowed_tools", "mode": "auto",
                                         "tools": []}}, house_pays=True)
