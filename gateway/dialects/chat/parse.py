"""Parsing and validating request bodies into ChatRequest; attribution of agent and conversation.

Only what the gateway itself relies on is checked here (model, messages'
shape, stream, n, stream_options, metadata); every other parameter is passed
to the route, which honours it or refuses it with 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.dialects.attribution import (  # noqa: F401  (re-exported)
    AGENT_HEADER,
    CONVERSATION_HEADER,
    ID_RE,
    attribute,
    bound_agent,
    take_metadata,
)
from gateway.errors import InvalidRequest
from gateway.types import Caller, ChatRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# orjson parses up to 1024 levels but serialises only 254: a body between the two could be
# read, then not forwarded (or hashed for its Idempotency-Key).
MAX_DEPTH = 254


def parse_json(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request: it must be valid UTF-8 JSON."
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:  # cheap: only then can it be too deep
        try:
            orjson.dumps(body)  # what forwarding and the idempotency hash will do
        except orjson.JSONEncodeError:
            raise InvalidRequest(
                f"The JSON body is nested too deeply (at most {MAX_DEPTH} levels)."
            ) from None
    return body


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise InvalidRequest("you must provide a model parameter", param="model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("`model` must be a non-empty string.", param="model")
    return model


def _messages(value: Any) -> None:
    if value is None:
        raise InvalidRequest("Missing required parameter: 'messages'.", param="messages")
    if not isinstance(value, list) or not value:
        raise InvalidRequest("`messages` must be a non-empty array.", param="messages")
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"`{where}` must be an object.", param=where)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:  # a list or object is unhashable
            raise InvalidRequest(
                f"`{where}.role` must be one of {', '.join(sorted(ROLES))}.", param=f"{where}.role"
            )
        content = message.get("content")
        if content is None:
            if role != "assistant":
                raise InvalidRequest(f"`{where}.content` is required.", param=f"{where}.content")
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise InvalidRequest(
                        f"`{where}.content[{j}]` must be an object with a `type`.",
                        param=f"{where}.content[{j}]",
                    )
        elif not isinstance(content, str):
            raise InvalidRequest(
                f"`{where}.content` must be a string or an array of content parts.",
                param=f"{where}.content",
            )


def chat_request(body: dict[str, Any], headers: Mapping[str, str], caller: Caller) -> ChatRequest:
    """Validate a chat completion body and take Bookbag's attribution out of it."""
    model = _model(body)
    _messages(body.get("messages"))

    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("`stream` must be a boolean.", param="stream")
    n = body.get("n")
    if n is None:
        n = 1
    elif isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 128:
        raise InvalidRequest("`n` must be an integer from 1 to 128.", param="n")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise InvalidRequest(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
            )
        if not isinstance(options, dict):
            raise InvalidRequest("`stream_options` must be an object.", param="stream_options")
        usage_flag = options.get("include_usage")
        if usage_flag is not None and not isinstance(usage_flag, bool):
            raise InvalidRequest("`stream_options.include_usage` must be a boolean.",
                                 param="stream_options.include_usage")
        include_usage = bool(usage_flag)

    metadata = body.get("metadata")
    meta_agent = meta_conversation = None
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise InvalidRequest("`metadata` must be an object.", param="metadata")
        meta_agent, meta_conversation = take_metadata(body, metadata)
    agent, conversation = attribute(headers, caller, meta_agent, meta_conversation)
    return ChatRequest(model, body, bool(stream), n, include_usage, agent, conversation)
