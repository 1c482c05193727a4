"""A `/v1/responses` body validated into what the flow needs, attribution taken out of it.

Checked like the real API (the same wording, the parameter named): `input` as text or
items, `instructions`, function tools and tool outputs, `tool_choice`, `text.format`,
`max_output_tokens` (>= 16, as OpenAI requires), `reasoning`, `metadata` (16 pairs of
strings), `store`, `stream`, `parallel_tool_calls` and the other scalars. Parameters the
gateway does not know are left to the route: a relayed upstream judges them, a translator
refuses them. `background: true` is refused on every route (a reply must end in the
request that pays for it); the tenancy rules that depend on who pays are in tenancy.py,
the catalog's in billed.py, both applied once the billing decision is known.

A Response is one reply (`n` = 1). A stream's terminal event carries its usage and must
always reach the client, so `include_usage` is the stream flag itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.dialects.attribution import BOOKBAG_METADATA, attribute, attribution_id
from gateway.dialects.responses.checks import (
    boolean,
    choice,
    integer,
    invalid_type,
    missing,
    number,
    obj,
    string,
)
from gateway.dialects.responses.items import (
    check_input,
    check_text,
    check_tool_choice,
    check_tools,
)
from gateway.errors import InvalidRequest, UnsupportedParameter
from gateway.types import RESPONSES, Caller, ChatRequest

EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
SUMMARIES = ("auto", "concise", "detailed")
METADATA_PAIRS, METADATA_KEY, METADATA_VALUE = 16, 64, 512
# What may stand in for `input`: the conversation is elsewhere (tenancy.py rules on each).
_CONTEXT = ("previous_response_id", "prompt", "conversation")


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise missing("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("`model` must be a non-empty string.", param="model")
    return model


def _scalars(body: dict[str, Any], stream: bool) -> None:
    string(body, "instructions")
    string(body, "previous_response_id")
    for key in ("user", "safety_identifier", "prompt_cache_key", "service_tier"):
        string(body, key)
    for key in ("store", "parallel_tool_calls"):
        boolean(body, key)
    integer(body, "max_output_tokens", low=16)
    integer(body, "max_tool_calls", low=1)
    integer(body, "top_logprobs", low=0, high=20)
    number(body, "temperature", low=0, high=2)
    number(body, "top_p", low=0, high=1)
    choice(body, "truncation", ("auto", "disabled"))
    include = body.get("include")
    if include is not None and (not isinstance(include, list)
                                or not all(isinstance(i, str) for i in include)):
        raise invalid_type("include", "an array of strings", include)
    reasoning = obj(body, "reasoning")
    if reasoning is not None:
        choice(reasoning, "effort", EFFORTS, "reasoning")
        choice(reasoning, "summary", SUMMARIES, "reasoning")
    if obj(body, "stream_options") is not None and not stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options")
    if boolean(body, "background"):
        raise UnsupportedParameter(
            "`background: true` is not supported by this gateway: a response is served and "
            "charged within its request. Send the request without it (stream it if it is "
            "long).", param="background")


def _metadata(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """Validate `metadata` as the API does and take Bookbag's keys out of it."""
    metadata = obj(body, "metadata")
    if metadata is None:
        return None, None
    agent = attribution_id(metadata.get("agent_id"), "metadata.agent_id")
    conversation = attribution_id(metadata.get("conversation_id"), "metadata.conversation_id")
    rest = {k: v for k, v in metadata.items() if k not in BOOKBAG_METADATA}
    if len(rest) > METADATA_PAIRS:
        raise InvalidRequest(f"Invalid 'metadata': too many properties. Expected an object "
                             f"with at most {METADATA_PAIRS} properties, but got an object "
                             f"with {len(rest)} properties instead.", param="metadata")
    for key, value in rest.items():
        if len(key) > METADATA_KEY:
            raise InvalidRequest(f"Invalid 'metadata': keys may be at most {METADATA_KEY} "
                                 "characters long.", param="metadata")
        if not isinstance(value, str):
            raise invalid_type(f"metadata.{key[:METADATA_KEY]}", "a string", value)
        if len(value) > METADATA_VALUE:
            raise InvalidRequest(f"Invalid 'metadata.{key}': string too long. Expected a "
                                 f"string with maximum length {METADATA_VALUE}.",
                                 param=f"metadata.{key}")
    if len(rest) < len(metadata):  # removed before forwarding (SPEC "Attribution")
        if rest:
            body["metadata"] = rest
        else:
            del body["metadata"]
    return agent, conversation


def responses_request(body: dict[str, Any], headers: Mapping[str, str],
                      caller: Caller) -> ChatRequest:
    """Validate a Responses body (in place: Bookbag's metadata removed) into the request
    the flow runs; attribution as on chat: a bound key, then headers, then metadata."""
    model = _model(body)
    if "input" in body and body["input"] is not None:
        check_input(body["input"])
    elif not any(body.get(key) is not None for key in _CONTEXT):
        raise missing("input")
    stream = boolean(body, "stream") or False
    _scalars(body, stream)
    check_tools(body.get("tools"))
    check_tool_choice(body.get("tool_choice"))
    check_text(body.get("text"))
    meta_agent, meta_conversation = _metadata(body)
    agent, conversation = attribute(headers, caller, meta_agent, meta_conversation)
    return ChatRequest(model, body, stream, 1, stream, agent, conversation, dialect=RESPONSES)
