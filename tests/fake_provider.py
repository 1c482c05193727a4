"""A fake model provider: a real HTTP server on loopback for tests and benchmarks.

It speaks the OpenAI Chat Completions / Responses / Embeddings / Models and the
Anthropic Messages (and count_tokens) wire protocols, validates requests as strictly as the real APIs, can be
told to fail the way providers fail, and records every request it receives
(rejected ones included) before answering.

    provider = FakeProvider().start()        # its own loop in a daemon thread
    provider.openai_base                     # http://127.0.0.1:PORT/v1
    provider.anthropic_base                  # http://127.0.0.1:PORT
    provider.fail("status", status=429)      # the next request gets a 429
    provider.fail("cut", after=2, path="/v1/chat/completions", times=None)
    provider.count("/v1/chat/completions")
    provider.stop()

Replies are deterministic: "Hello from fake <model>: <last user text[:200]>", or a
call to the first tool (or the one tool_choice names) when tools are given,
unless tool_choice is "none" or, with tool_choice auto/unset, the last message
is a tool result (then it answers with text, so agent loops terminate).
`/v1/responses` answers the same way in its own shape (tests/fakes/responses_reply.py),
remembers the ids of stored responses for `previous_response_id`, and ends a text
longer than `max_output_tokens` as `incomplete`; `/v1/messages/count_tokens` answers
the input tokens that `/v1/messages` would report for the same prompt.
SSE streams are written in pieces of 1..40 bytes cut at arbitrary byte
boundaries, so a client that assumes one event per read breaks.

Failure modes, `fail(mode, times=1, path=None, **opts)`; the first registered
failure matching a request's path is used (and counted down):
  status        status=<int>, optional message=, type=, code=, param=, headers={},
                retry_after= (429 only, default 1): the provider's error body.
  hang          never answers; released (connection dropped) by reset() or stop().
  drop          closes the connection without a response.
  cut           after=N: a stream sends its opening chunk(s) and N content chunks
                (OpenAI content/tool-argument deltas, Responses output_text /
                function_call_arguments deltas, Anthropic content_block_delta events),
                then closes the connection mid-body. Non-stream: drop.
  inband_error  after=N: as cut, then an in-band error event and a clean end
                (no [DONE] / message_stop; Responses: a `response.failed` event).
                Non-stream: a 500 error reply.
                Optional message=, and type= for Anthropic (default overloaded_error).
  slow_stream   interval=<seconds> between stream events; non-stream: one wait.
  stall         after=N: a stream sends its opening chunk(s) and N output chunks, then
                nothing more (the connection stays open) until reset() or stop().
                Non-stream: hang.
  cut, inband_error and stall also take interval= (paced like slow_stream).
  delay         seconds=<s>: wait that long before the first byte, then answer normally
                (a model slow to start: fallbacks' first-byte budget).
Any failure may be limited to one model with model=<the body's "model">;
count_model(name) counts the requests that named it.
`delay` (seconds) is waited before handling every request.
`output` (streams, text replies) emulates a kind of model: "content" (the default),
"refusal" (refusal deltas instead of content), "reasoning" (a reasoning model of the
OpenAI-compatible kind, DeepSeek / vLLM: `reasoning_content` deltas, then the content) or
"audio" (`audio` deltas: id and transcript pieces, then data, then expires_at).
Output chunks are what cut / inband_error / stall count with after=N.

Standalone (benchmarks): `python tests/fake_provider.py --port 9100 [--fast]`
prints `READY <port>` once listening; `--fast` skips byte splitting and counting.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import random
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

if not __package__:  # run as a script (benchmarks): import the fakes as `tests.fakes`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.common import (
    TOOL_NAME,
    _bounded,
    _Invalid,
    _is_int,
    _is_num,
    _missing,
    _pieces,
    _sse,
    _type_word,
    _words,
)
from tests.fakes.responses_reply import ResponsesReply, build_reply
from tests.fakes.responses_validate import validate_responses

OPENAI_KEY = "sk-test-openai-0000"
ANTHROPIC_KEY = "sk-ant-test-0000"

OPENAI_CHAT_PARAMS = frozenset({
    "model", "messages", "stream", "stream_options", "n", "temperature", "top_p",
    "max_tokens", "max_completion_tokens", "stop", "presence_penalty",
    "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "user", "seed",
    "tools", "tool_choice", "parallel_tool_calls", "response_format", "metadata",
    "store", "service_tier", "modalities", "audio", "prediction", "reasoning_effort",
    "web_search_options", "functions", "function_call", "verbosity",
    "prompt_cache_key", "safety_identifier",
})
OPENAI_EMBEDDING_PARAMS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
OPENAI_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
OPENAI_PART_TYPES = {
    "text": "text", "image_url": "image_url", "input_audio": "input_audio",
    "file": "file", "refusal": "refusal",
}  # part type -> the field it requires
ANTHROPIC_PARAMS = frozenset({
    "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
    "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking",
    # also accepted by the real API (and sent by some clients, e.g. litellm)
    "service_tier", "container", "mcp_servers", "context_management",
    "output_config", "output_format",
})
# /v1/messages/count_tokens: what shapes the prompt, nothing that shapes the output
ANTHROPIC_COUNT_PARAMS = frozenset({
    "model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers",
    "context_management", "output_config", "output_format",
})
ANTHROPIC_BLOCK_TYPES = (
    "text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking",
)
FAILURE_MODES = frozenset({"status", "hang", "drop", "cut", "inband_error", "slow_stream",
                           "stall", "delay"})
OUTPUTS = ("content", "refusal", "reasoning", "audio")
OPENAI_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1", "text-embedding-3-small")

# status -> (type, code, default message)
_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("request_forbidden", "unsupported_country_region_territory",
          "Country, region, or territory not supported"),
    404: ("invalid_request_error", "model_not_found",
          "The model does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded",
          "Rate limit reached for requests. Please try again in 1s."),
    500: ("server_error", None,
          "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
    529: ("server_error", "overloaded", "The server is overloaded."),
}
# status -> (type, default message)
_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Bad request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    503: ("api_error", "Service unavailable"),
    529: ("overloaded_error", "Overloaded"),
}


@dataclass
class Received:
    """One request the fake received."""

    path: str
    headers: dict[str, str]
    body: Any
    api_key: str | None
    method: str = "POST"


@dataclass
class _Failure:
    mode: str
    times: int | None
    path: str | None
    opts: dict[str, Any]
    model: str | None = None  # only requests whose body names this model


@dataclass
class _Ctx:
    request: web.Request
    body: Any
    api_key: str | None
    failure: _Failure | None
    seq: int
    is_json: bool


# ---------------------------------------------------------------- OpenAI validation


def _oa_type(body: dict[str, Any], name: str, kind: str, check: Callable[[Any], bool]) -> None:
    if name in body and body[name] is not None and not check(body[name]):
        raise _Invalid(
            f"Invalid type for '{name}': expected {kind}, but got "
            f"{_type_word(body[name])} instead.", param=name, code="invalid_type",
        )


def _oa_range(body: dict[str, Any], name: str, lo: float, hi: float | None) -> None:
    _bounded(body, name, lo, hi, ("n", "top_logprobs"))


def _oa_content(msg: dict[str, Any], where: str) -> None:
    role, content = msg["role"], msg.get("content")
    if content is None:
        if role == "assistant" and (msg.get("tool_calls") or msg.get("function_call")):
            return
        if role == "assistant" and "content" not in msg:
            raise _missing(f"{where}.content")
        raise _Invalid(
            f"Invalid value for '{where}.content': expected a string, got null.",
            param=f"{where}.content", code="invalid_value",
        )
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _Invalid(
            f"Invalid type for '{where}.content': expected one of a string or array of "
            f"objects, but got {_type_word(content)} instead.",
            param=f"{where}.content", code="invalid_type",
        )
    for j, part in enumerate(content):
        p = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise _Invalid(
                f"Invalid type for '{p}': expected an object, but got {_type_word(part)} instead.",
                param=p, code="invalid_type",
            )
        ptype = part.get("type")
        if ptype not in OPENAI_PART_TYPES or (ptype == "refusal" and role != "assistant"):
            raise _Invalid(
                f"Invalid value: '{ptype}'. Supported values are: 'text', 'image_url', "
                "'input_audio', 'refusal', and 'file'.", param=f"{p}.type", code="invalid_value",
            )
        if OPENAI_PART_TYPES[ptype] not in part:
            raise _missing(f"{p}.{OPENAI_PART_TYPES[ptype]}")
        if ptype == "image_url" and not (
            isinstance(part["image_url"], dict) and isinstance(part["image_url"].get("url"), str)
        ):
            raise _missing(f"{p}.image_url.url")


def _oa_messages(messages: Any) -> None:
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list):
        raise _Invalid(
            f"Invalid type for 'messages': expected an array, but got {_type_word(messages)} "
            "instead.", param="messages", code="invalid_type",
        )
    if not messages:
        raise _Invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but "
            "got an empty array instead.", param="messages", code="empty_array",
        )
    pending: set[str] = set()  # tool_call ids still waiting for their tool message
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise _Invalid(
                f"Invalid type for '{where}': expected an object, but got "
                f"{_type_word(msg)} instead.", param=where, code="invalid_type",
            )
        if "role" not in msg:
            raise _missing(f"{where}.role")
        role = msg["role"]
        if role not in OPENAI_ROLES:
            raise _Invalid(
                f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', "
                "'user', 'function', 'tool', and 'developer'.",
                param=f"{where}.role", code="invalid_value",
            )
        if role != "tool" and pending:
            raise _Invalid(
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(sorted(pending))}", param="messages",
            )
        _oa_content(msg, where)
        if role == "tool":
            if "tool_call_id" not in msg:
                raise _missing(f"{where}.tool_call_id")
            if msg["tool_call_id"] not in pending:
                raise _Invalid(
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.", param=f"{where}.role",
                )
            pending.discard(msg["tool_call_id"])
        if role == "function" and "name" not in msg:
            raise _missing(f"{where}.name")
        if role == "assistant" and msg.get("tool_calls") is not None:
            calls = msg["tool_calls"]
            if not isinstance(calls, list):
                raise _Invalid(
                    f"Invalid type for '{where}.tool_calls': expected an array.",
                    param=f"{where}.tool_calls", code="invalid_type",
                )
            for j, call in enumerate(calls):
                c = f"{where}.tool_calls[{j}]"
                for key in ("id", "type", "function"):
                    if not isinstance(call, dict) or key not in call:
                        raise _missing(f"{c}.{key}")
                fn = call["function"]
                if not isinstance(fn, dict) or "name" not in fn or "arguments" not in fn:
                    raise _missing(f"{c}.function.arguments")
                pending.add(call["id"])
    if pending:
        raise _Invalid(
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {', '.join(sorted(pending))}", param="messages",
        )


def _oa_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _Invalid(
                f"Invalid type for 'tools': expected an array, but got {_type_word(tools)} "
                "instead.", param="tools", code="invalid_type",
            )
        for i, tool in enumerate(tools):
            t = f"tools[{i}]"
            if not isinstance(tool, dict) or "type" not in tool:
                raise _missing(f"{t}.type")
            if tool["type"] != "function":
                raise _Invalid(
                    f"Invalid value: '{tool['type']}'. Supported values are: 'function'.",
                    param=f"{t}.type", code="invalid_value",
                )
            fn = tool.get("function")
            if not isinstance(fn, dict):
                raise _missing(f"{t}.function")
            if "name" not in fn:
                raise _missing(f"{t}.function.name")
            if not isinstance(fn["name"], str) or not TOOL_NAME.match(fn["name"]):
                raise _Invalid(
                    f"Invalid '{t}.function.name': string does not match pattern. Expected a "
                    "string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                    param=f"{t}.function.name", code="invalid_value",
                )
    choice = body.get("tool_choice")
    if choice is None:
        return
    if not tools:
        raise _Invalid(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified.", param="tool_choice",
        )
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise _Invalid(
                f"Invalid value: '{choice}'. Supported values are: 'none', 'auto', and "
                "'required'.", param="tool_choice", code="invalid_value",
            )
        return
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not name:
        raise _missing("tool_choice.function.name")
    if name not in [t["function"]["name"] for t in tools]:
        raise _Invalid(
            f"Invalid value for 'tool_choice': function '{name}' not found in 'tools'.",
            param="tool_choice",
        )


def validate_openai_chat(body: dict[str, Any]) -> None:
    """Raise _Invalid like the real Chat Completions API would."""
    for name in body:
        if name not in OPENAI_CHAT_PARAMS:
            raise _Invalid(f"Unrecognized request argument supplied: {name}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _Invalid("you must provide a model parameter")
    _oa_messages(body.get("messages"))
    _oa_type(body, "stream", "a boolean", lambda v: isinstance(v, bool))
    _oa_type(body, "n", "an integer", _is_int)
    _oa_range(body, "n", 1, 128)
    for name, lo, hi in (
        ("temperature", 0, 2), ("top_p", 0, 1), ("presence_penalty", -2, 2),
        ("frequency_penalty", -2, 2),
    ):
        _oa_type(body, name, "a decimal", _is_num)
        _oa_range(body, name, lo, hi)
    for name in ("max_tokens", "max_completion_tokens", "top_logprobs", "seed"):
        _oa_type(body, name, "an integer", _is_int)
    _oa_range(body, "max_tokens", 1, None)
    _oa_range(body, "max_completion_tokens", 1, None)
    _oa_range(body, "top_logprobs", 0, 20)
    _oa_type(body, "logprobs", "a boolean", lambda v: isinstance(v, bool))
    if body.get("top_logprobs") is not None and not body.get("logprobs"):
        raise _Invalid(
            "Invalid value for 'logprobs': must be true when 'top_logprobs' is specified.",
            param="logprobs",
        )
    _oa_type(body, "user", "a string", lambda v: isinstance(v, str))
    _oa_type(body, "stream_options", "an object", lambda v: isinstance(v, dict))
    _oa_type(body, "metadata", "an object", lambda v: isinstance(v, dict))
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str)
        or (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop))
    ):
        raise _Invalid(
            "Invalid 'stop': expected a string or an array of at most 4 strings.",
            param="stop", code="invalid_value",
        )
    if body.get("stream_options") is not None and body.get("stream") is not True:
        raise _Invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    _oa_tools(body)
    fmt = body.get("response_format")
    if fmt is not None:
        ftype = fmt.get("type") if isinstance(fmt, dict) else None
        if ftype not in ("text", "json_object", "json_schema"):
            raise _Invalid(
                f"Invalid value: '{ftype}'. Supported values are: 'text', 'json_object', and "
                "'json_schema'.", param="response_format.type", code="invalid_value",
            )
        if ftype == "json_schema" and not isinstance(fmt.get("json_schema"), dict):
            raise _missing("response_format.json_schema")
        if ftype == "json_object" and "json" not in json.dumps(body["messages"]).lower():
            raise _Invalid(
                "'messages' must contain the word 'json' in some form, to use "
                "'response_format' of type 'json_object'.", param="messages",
            )


def _oa_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return " ".join(p["text"] for p in parts)
    return ""


# ------------------------------------------------------------- Anthropic validation


def _an(message: str, status: int = 400, etype: str = "invalid_request_error") -> _Invalid:
    return _Invalid(message, status=status, etype=etype)


def _an_blocks(content: Any, where: str, allowed: tuple[str, ...]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _an(f"{where}: Input should be a valid list")
    for j, block in enumerate(content):
        b = f"{where}.{j}"
        btype = block.get("type") if isinstance(block, dict) else None
        if btype not in allowed:
            raise _an(
                f"{b}: Input tag '{btype}' found using 'type' does not match any of the "
                f"expected tags: {', '.join(repr(a) for a in allowed)}"
            )
        required = {"text": ("text",), "image": ("source",), "document": ("source",),
                    "tool_use": ("id", "name", "input"), "tool_result": ("tool_use_id",),
                    "thinking": ("thinking", "signature"), "redacted_thinking": ("data",)}
        for key in required[btype]:
            if key not in block:
                raise _an(f"{b}.{btype}.{key}: Field required")
        if btype == "text" and not isinstance(block["text"], str):
            raise _an(f"{b}.text.text: Input should be a valid string")
        for key in {"tool_use": ("id", "name"), "tool_result": ("tool_use_id",)}.get(btype, ()):
            if not isinstance(block[key], str):
                raise _an(f"{b}.{btype}.{key}: Input should be a valid string")
        if btype == "tool_use" and not isinstance(block["input"], dict):
            raise _an(f"{b}.tool_use.input: Input should be a valid dictionary")
    return content


def _an_messages(messages: Any) -> None:
    if not isinstance(messages, list):
        raise _an("messages: Input should be a valid list")
    if not messages:
        raise _an("messages: at least one message is required")
    previous_tool_uses: set[str] = set()
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _an(f"messages.{i}: Input should be a valid dictionary")
        role = msg.get("role")
        if role == "system":
            raise _an(
                'messages: Unexpected role "system". The Messages API accepts a top-level '
                '`system` parameter, not "system" as an input message role.'
            )
        if role not in ("user", "assistant"):
            raise _an(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if "content" not in msg:
            raise _an(f"messages.{i}.content: Field required")
        blocks = _an_blocks(msg["content"], f"messages.{i}.content", ANTHROPIC_BLOCK_TYPES)
        empty = not blocks or all(b["type"] == "text" and not b["text"] for b in blocks)
        if empty and not (i == len(messages) - 1 and role == "assistant"):
            raise _an(
                f"messages.{i}: all messages must have non-empty content except for the "
                "optional final assistant message"
            )
        results = {b["tool_use_id"] for b in blocks if b["type"] == "tool_result"}
        if results - previous_tool_uses:
            raise _an(
                f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` "
                f"blocks: {', '.join(sorted(results - previous_tool_uses))}. Each "
                "`tool_result` block must have a corresponding `tool_use` block in the "
                "previous message."
            )
        if previous_tool_uses - results:
            raise _an(
                f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(sorted(previous_tool_uses - results))}. Each "
                "`tool_use` block must have a corresponding `tool_result` block in the next "
                "message."
            )
        previous_tool_uses = {
            b["id"] for b in blocks if b["type"] == "tool_use" and role == "assistant"
        }
    # A trailing assistant tool_use without a result is allowed only as the final turn;
    # the real API then answers as a prefill, we don't special-case it.


def _an_number(
    body: dict[str, Any], name: str, lo: float, hi: float | None, *, integer: bool
) -> None:
    value = body.get(name)
    if value is None:
        return
    if not (_is_int(value) if integer else _is_num(value)):
        raise _an(f"{name}: Input should be a valid {'integer' if integer else 'number'}")
    if value < lo:
        raise _an(f"{name}: Input should be greater than or equal to {lo:g}")
    if hi is not None and value > hi:
        raise _an(f"{name}: Input should be less than or equal to {hi:g}")


def validate_anthropic_messages(body: dict[str, Any], *, count_tokens: bool = False) -> None:
    """Raise _Invalid like the real Messages API would (or its token counter, which takes
    the same prompt without the output parameters: no `max_tokens`, `stream`, sampling)."""
    for name in ("model", "messages") if count_tokens else ("model", "max_tokens", "messages"):
        if name not in body:
            raise _an(f"{name}: Field required")
    for name in body:
        if name not in (ANTHROPIC_COUNT_PARAMS if count_tokens else ANTHROPIC_PARAMS):
            raise _an(f"{name}: Extra inputs are not permitted")
    if not isinstance(body["model"], str) or not body["model"]:
        raise _an("model: Input should be a valid string")
    _an_number(body, "max_tokens", 1, None, integer=True)
    _an_messages(body["messages"])
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        _an_blocks(system, "system", ("text",))
    _an_number(body, "temperature", 0, 1, integer=False)
    _an_number(body, "top_p", 0, 1, integer=False)
    _an_number(body, "top_k", 0, None, integer=True)
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _an("stream: Input should be a valid boolean")
    stops = body.get("stop_sequences")
    if stops is not None and not (
        isinstance(stops, list) and all(isinstance(s, str) for s in stops)
    ):
        raise _an("stop_sequences: Input should be a valid list of strings")
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _an("metadata: Input should be a valid dictionary")
        for key in metadata:
            if key != "user_id":
                raise _an(f"metadata.{key}: Extra inputs are not permitted")
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise _an("tools: Input should be a valid list")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or "name" not in tool:
            raise _an(f"tools.{i}.name: Field required")
        if tool.get("type") in (None, "custom"):
            if not isinstance(tool["name"], str) or not TOOL_NAME.match(tool["name"]):
                raise _an(
                    f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                )
            if not isinstance(tool.get("input_schema"), dict):
                raise _an(f"tools.{i}.custom.input_schema: Field required")
    choice = body.get("tool_choice")
    if choice is not None:
        ctype = choice.get("type") if isinstance(choice, dict) else None
        if ctype not in ("auto", "any", "tool", "none"):
            raise _an(
                f"tool_choice: Input tag '{ctype}' found using 'type' does not match any of "
                "the expected tags: 'auto', 'any', 'tool', 'none'"
            )
        if ctype == "tool" and not isinstance(choice.get("name"), str):
            raise _an("tool_choice.tool.name: Field required")
    thinking = body.get("thinking")
    if thinking is not None:
        ttype = thinking.get("type") if isinstance(thinking, dict) else None
        if ttype not in ("enabled", "disabled", "adaptive"):
            raise _an(
                f"thinking: Input tag '{ttype}' found using 'type' does not match any of the "
                "expected tags: 'enabled', 'disabled', 'adaptive'"
            )
        if ttype == "enabled":
            budget = thinking.get("budget_tokens")
            if not _is_int(budget):
                raise _an("thinking.enabled.budget_tokens: Field required")
            if budget < 1024:
                raise _an(
                    "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
                )
            if not count_tokens and body["max_tokens"] <= budget:
                raise _an("`max_tokens` must be greater than `thinking.budget_tokens`.")
        if ttype in ("enabled", "adaptive"):
            if body.get("temperature", 1) != 1:
                raise _an("`temperature` may only be set to 1 when thinking is enabled.")
            if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
                raise _an("Thinking may not be enabled when tool_choice forces tool use.")


def anthropic_input_tokens(body: dict[str, Any]) -> int:
    """The fake's token count of a Messages prompt: words of the system and the messages.
    `/v1/messages/count_tokens` answers this, and `/v1/messages` reports it as usage."""
    return _words(_an_text(body.get("system") or "")) + sum(
        _words(_an_text(m["content"])) for m in body["messages"]
    )


def _an_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content if isinstance(content, list) else []:
        if block.get("type") == "text":
            parts.append(block["text"])
        elif block.get("type") == "tool_result":
            parts.append(_an_text(block.get("content", "")))
    return " ".join(parts)


# ---------------------------------------------------------------------- the server


class FakeProvider:
    """An OpenAI + Anthropic compatible HTTP server on 127.0.0.1 in its own thread."""

    def __init__(
        self, *, openai_keys: set[str] | None = None, anthropic_keys: set[str] | None = None,
        port: int = 0, fast: bool = False,
    ) -> None:
        self.openai_keys = set(openai_keys) if openai_keys is not None else {OPENAI_KEY}
        self.anthropic_keys = (
            set(anthropic_keys) if anthropic_keys is not None else {ANTHROPIC_KEY}
        )
        self.fast = fast
        self.delay: float = 0.0
        self.output: str = "content"
        self.received: list[Received] = []
        self.port: int = port
        self._lock = threading.Lock()
        self._failures: list[_Failure] = []
        self._hung: set[asyncio.Future[None]] = set()
        self._seq = itertools.count(1)
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stored: dict[str, set[str]] = {}  # stored response id -> the calls it made

    # ---- lifecycle

    @property
    def openai_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeProvider:
        if self._thread is not None:
            raise RuntimeError("FakeProvider already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        loop = asyncio.new_event_loop()
        self._loop, self._closing = loop, False
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve(sock))
            except BaseException as exc:  # reported to start()'s caller
                sock.close()
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=f"fake-provider-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    async def _serve(self, sock: socket.socket) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._closing = True
        self._release_hung()
        if self._runner is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = self._runner = None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- configuration and inspection (thread-safe)

    def add_key(self, key: str, provider: str = "openai") -> None:
        if provider not in ("openai", "anthropic"):
            raise ValueError(f"provider must be 'openai' or 'anthropic', not {provider!r}")
        (self.openai_keys if provider == "openai" else self.anthropic_keys).add(key)

    def count(self, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.received if path is None or r.path == path)

    def reset(self) -> None:
        """Forget received requests, failures and delay; release hung requests (dropped)."""
        with self._lock:
            self.received.clear()
            self._failures.clear()
            self._stored.clear()
        self.delay = 0.0
        self.output = "content"
        self._release_hung()

    def count_model(self, model: str) -> int:
        """Requests whose body named `model` (its upstream name)."""
        with self._lock:
            return sum(1 for r in self.received
                       if isinstance(r.body, dict) and r.body.get("model") == model)

    def fail(
        self, mode: str, *, times: int | None = 1, path: str | None = None,
        model: str | None = None, **opts: Any
    ) -> None:
        """Fail the next `times` requests to `path` (None: any); see the module docstring."""
        if mode not in FAILURE_MODES:
            raise ValueError(f"unknown failure mode {mode!r}; one of {sorted(FAILURE_MODES)}")
        if mode == "status" and not isinstance(opts.get("status"), int):
            raise ValueError("fail('status') needs status=<int>")
        if mode == "slow_stream" and not _is_num(opts.get("interval")):
            raise ValueError("fail('slow_stream') needs interval=<seconds>")
        if mode == "delay" and not _is_num(opts.get("seconds")):
            raise ValueError("fail('delay') needs seconds=<seconds>")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        with self._lock:
            self._failures.append(_Failure(mode, times, path, dict(opts), model))

    def _take_failure(self, path: str, model: object = None) -> _Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.model is not None and failure.model != model:
                    continue
                if failure.path is None or failure.path == path:
                    if failure.times is not None:
                        failure.times -= 1
                        if failure.times == 0:
                            self._failures.remove(failure)
                    return failure
        return None

    def _release_hung(self) -> None:
        loop = self._loop
        with self._lock:
            hung, self._hung = self._hung, set()
        if loop is not None and not loop.is_closed():
            for fut in hung:
                loop.call_soon_threadsafe(_resolve, fut)

    # ---- request handling

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body: Any = None
        with contextlib.suppress(ValueError):
            body = json.loads(raw) if raw else None
        headers = {k.lower(): v for k, v in request.headers.items()}
        auth = headers.get("authorization", "")
        bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        api_key = bearer if bearer is not None else headers.get("x-api-key")
        if not self.fast:
            with self._lock:
                self.received.append(Received(request.path, headers, body, api_key, request.method))
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        ctx = _Ctx(request, body, api_key, None, next(self._seq), ctype == "application/json")
        anthropic = request.path.startswith("/v1/messages")  # which error shape to use
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        ctx.failure = failure = self._take_failure(
            request.path, body.get("model") if isinstance(body, dict) else None)
        if failure is not None and failure.mode == "delay":
            await asyncio.sleep(float(failure.opts["seconds"]))
            ctx.failure = failure = None  # then an ordinary answer
        if failure is not None:
            if failure.mode == "status":
                return self._status_failure(failure, anthropic, ctx.seq)
            stalled = failure.mode == "stall" and not (
                isinstance(body, dict) and body.get("stream"))
            if failure.mode in ("hang", "drop") or stalled:
                if failure.mode != "drop":
                    await self._hang()
                return self._drop(request)
        try:
            return await self._route(ctx, anthropic)
        except _Invalid as exc:
            return self._error(exc, anthropic, ctx.seq)

    async def _route(self, ctx: _Ctx, anthropic: bool) -> web.StreamResponse:
        method, path = ctx.request.method, ctx.request.path
        routes: dict[str, tuple[str, Any]] = {
            "/v1/chat/completions": ("POST", self._chat),
            "/v1/embeddings": ("POST", self._embeddings),
            "/v1/messages": ("POST", self._messages),
            "/v1/messages/count_tokens": ("POST", self._count_tokens),
            "/v1/responses": ("POST", self._responses),
            "/v1/models": ("GET", self._models),
        }
        key = "/v1/models" if path.startswith("/v1/models/") else path
        if key not in routes:
            status = 404
            message = "Not Found" if anthropic else f"Invalid URL ({method} {path})"
            raise _Invalid(message, status=status, etype="not_found_error" if anthropic else None)
        if routes[key][0] != method:
            raise _Invalid(f"Invalid method for URL ({method} {path})", status=405)
        result: web.StreamResponse = await routes[key][1](ctx)
        return result

    async def _hang(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._hung.add(fut)
        if self._closing:
            return
        await fut

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        """Close the connection; the returned response is never sent."""
        if request.transport is not None:
            request.transport.close()  # flushes what was already written, then FIN
        return web.Response()

    # ---- error rendering

    def _error(self, exc: _Invalid, anthropic: bool, seq: int,
               headers: dict[str, str] | None = None) -> web.Response:
        hdrs = dict(headers or {})
        if anthropic:
            fallback = "invalid_request_error" if exc.status < 500 else "api_error"
            etype = exc.etype or _ANTHROPIC_ERRORS.get(exc.status, (fallback, ""))[0]
            body: dict[str, Any] = {
                "type": "error", "error": {"type": etype, "message": exc.message},
            }
            hdrs.setdefault("request-id", f"req_fake{seq:06d}")
        else:
            fallback = "invalid_request_error" if exc.status < 500 else "server_error"
            etype = exc.etype or _OPENAI_ERRORS.get(exc.status, (fallback, None, ""))[0]
            body = {"error": {
                "message": exc.message, "type": etype, "param": exc.param, "code": exc.code,
            }}
            hdrs.setdefault("x-request-id", f"req_fake{seq:06d}")
        return web.json_response(body, status=exc.status, headers=hdrs)

    def _status_failure(self, failure: _Failure, anthropic: bool, seq: int) -> web.Response:
        """The provider's own error reply for fail("status", status=..., message=..., ...)."""
        opts = failure.opts
        status: int = opts["status"]
        headers = {str(k): str(v) for k, v in (opts.get("headers") or {}).items()}
        if status == 429:
            headers.setdefault("retry-after", str(opts.get("retry_after", 1)))
        if anthropic:
            message, code = _ANTHROPIC_ERRORS.get(status, ("", "Error"))[1], None
        else:
            _, code, message = _OPENAI_ERRORS.get(status, ("", None, "Error"))
        exc = _Invalid(
            opts.get("message", message), status=status, etype=opts.get("type"),
            code=opts.get("code", code), param=opts.get("param"),
        )
        return self._error(exc, anthropic, seq, headers)

    def _require_json(self, ctx: _Ctx, anthropic: bool) -> dict[str, Any]:
        if not ctx.is_json or not isinstance(ctx.body, dict):
            if anthropic:
                raise _an("Request body must be a JSON object with content-type application/json")
            raise _Invalid(
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                "payload, but what was sent was not valid JSON.)"
            )
        return ctx.body

    def _openai_auth(self, ctx: _Ctx) -> None:
        auth = ctx.request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if not key:
            raise _Invalid(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                status=401, code="invalid_api_key",
            )
        if key not in self.openai_keys:
            masked = key[:8] + "*" * max(0, len(key) - 12) + key[-4:] if len(key) > 12 else "***"
            raise _Invalid(
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.", status=401, code="invalid_api_key",
            )

    def _anthropic_auth(self, ctx: _Ctx) -> None:
        key = ctx.request.headers.get("x-api-key")
        if key is None:
            raise _an("x-api-key header is required", 401, "authentication_error")
        if key not in self.anthropic_keys:
            raise _an("invalid x-api-key", 401, "authentication_error")
        if "anthropic-version" not in ctx.request.headers:
            raise _an("anthropic-version: header is required")

    # ---- OpenAI endpoints

    async def _chat(self, ctx: _Ctx) -> web.StreamResponse:
        self._openai_auth(ctx)
        body = self._require_json(ctx, anthropic=False)
        validate_openai_chat(body)
        model: str = body["model"]
        messages: list[dict[str, Any]] = body["messages"]
        n: int = body.get("n") or 1
        last_user = next((_oa_text(m.get("content")) for m in reversed(messages)
                          if m["role"] == "user"), "")
        text = f"Hello from fake {model}: {last_user[:200]}"
        tool_name = self._pick_openai_tool(body)
        arguments = json.dumps({"input": last_user[:50]})
        prompt_tokens = sum(_words(_oa_text(m.get("content"))) for m in messages)
        per_choice = _words(arguments) + 1 if tool_name else _words(text)
        usage = {
            "prompt_tokens": prompt_tokens, "completion_tokens": per_choice * n,
            "total_tokens": prompt_tokens + per_choice * n,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
            },
        }
        base = {
            "id": f"chatcmpl-{ctx.seq}", "created": int(time.time()), "model": model,
            "service_tier": "default", "system_fingerprint": "fp_fake0001",
        }
        finish = "tool_calls" if tool_name else "stop"
        call_ids = [f"call_fake{ctx.seq}x{i}" for i in range(n)]
        headers = {"x-request-id": f"req_fake{ctx.seq:06d}", "openai-processing-ms": "1"}
        logprobs = bool(body.get("logprobs"))
        top = body.get("top_logprobs") or 0

        def lp(piece: str) -> dict[str, Any]:
            entry = {"token": piece, "logprob": 0.0, "bytes": list(piece.encode())}
            return {**entry, "top_logprobs": [entry] if top else []}

        if not body.get("stream"):
            if ctx.failure is not None and ctx.failure.mode in ("cut", "inband_error"):
                return await self._non_stream_failure(ctx, anthropic=False)
            choices = []
            for i in range(n):
                message: dict[str, Any] = {
                    "role": "assistant", "content": None if tool_name else text,
                    "refusal": None, "annotations": [],
                }
                if tool_name:
                    message["tool_calls"] = [{
                        "id": call_ids[i], "type": "function",
                        "function": {"name": tool_name, "arguments": arguments},
                    }]
                choices.append({
                    "index": i, "message": message, "finish_reason": finish,
                    "logprobs": {"content": [lp(p) for p in _pieces(text)], "refusal": None}
                    if logprobs and not tool_name else None,
                })
            await self._slow_json(ctx)
            reply = {**base, "object": "chat.completion", "choices": choices, "usage": usage}
            return web.json_response(reply, headers=headers)

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunk_base = {**base, "object": "chat.completion.chunk"}

        def chunk(choices: list[dict[str, Any]]) -> bytes:
            data: dict[str, Any] = {**chunk_base, "choices": choices}
            if include_usage:
                data["usage"] = None
            return _sse(data)

        def choice(i: int, delta: dict[str, Any], reason: str | None = None,
                   piece: str | None = None) -> dict[str, Any]:
            logp = {"content": [lp(piece)], "refusal": None} if logprobs and piece else None
            return {"index": i, "delta": delta, "logprobs": logp, "finish_reason": reason}

        events: list[tuple[bytes, bool]] = []  # (SSE bytes, is a content chunk)
        if tool_name:
            frags = [arguments[k:k + 8] for k in range(0, len(arguments), 8)]
            for i in range(n):
                events.append((chunk([choice(i, {
                    "role": "assistant", "content": None, "refusal": None,
                    "tool_calls": [{"index": 0, "id": call_ids[i], "type": "function",
                                    "function": {"name": tool_name, "arguments": ""}}],
                })]), False))
            for frag in frags:
                for i in range(n):
                    call: dict[str, Any] = {"index": 0, "function": {"arguments": frag}}
                    delta: dict[str, Any] = {"tool_calls": [call]}
                    events.append((chunk([choice(i, delta)]), True))
        else:
            for i in range(n):
                delta = {"role": "assistant", "content": "", "refusal": None}
                events.append((chunk([choice(i, delta)]), False))
            events += [(chunk([c]), True) for c in self._output_deltas(text, n, ctx.seq, choice)]
        for i in range(n):
            events.append((chunk([choice(i, {}, finish)]), False))
        if include_usage:
            events.append((_sse({**chunk_base, "choices": [], "usage": usage}), False))
        events.append((b"data: [DONE]\n\n", False))
        error = _sse({"error": {
            "message": (ctx.failure.opts.get("message") if ctx.failure else None)
            or "The server had an error while processing your request. Sorry about that!",
            "type": "server_error", "param": None, "code": None,
        }})
        return await self._stream(ctx, events, error, headers)

    def _output_deltas(self, text: str, n: int, seq: int,
                       choice: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
        """The output choices of a text reply for `self.output`, in order."""
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, not {self.output!r}")
        pieces = _pieces(text)
        out: list[dict[str, Any]] = []
        if self.output == "reasoning":
            for piece in _pieces("Let me think about what to answer."):
                out += [choice(i, {"content": None, "reasoning_content": piece}) for i in range(n)]
        if self.output == "refusal":
            for piece in _pieces("I'm sorry, I cannot help with that."):
                out += [choice(i, {"refusal": piece}) for i in range(n)]
        elif self.output == "audio":
            for k, piece in enumerate(pieces):
                for i in range(n):
                    audio = {"transcript": piece} if k else \
                        {"id": f"audio_fake{seq}x{i}", "transcript": piece}
                    out.append(choice(i, {"audio": audio}))
            data = base64.b64encode(b"\0\0" * 240).decode()
            out += [choice(i, {"audio": {"data": data}}) for i in range(n)]
            out += [choice(i, {"audio": {"expires_at": int(time.time()) + 3600}})
                    for i in range(n)]
        else:
            for piece in pieces:
                out += [choice(i, {"content": piece}, piece=piece) for i in range(n)]
        return out

    @staticmethod
    def _pick_openai_tool(body: dict[str, Any]) -> str | None:
        """The tool to call, or None: no tools, "none", or answering a tool result ("auto")."""
        tools, choice = body.get("tools"), body.get("tool_choice")
        if not tools or choice == "none":
            return None
        if choice in (None, "auto") and body["messages"][-1]["role"] in ("tool", "function"):
            return None
        if isinstance(choice, dict):
            name: str = choice["function"]["name"]
            return name
        first: str = tools[0]["function"]["name"]
        return first

    async def _embeddings(self, ctx: _Ctx) -> web.StreamResponse:
        self._openai_auth(ctx)
        body = self._require_json(ctx, anthropic=False)
        for name in body:
            if name not in OPENAI_EMBEDDING_PARAMS:
                raise _Invalid(f"Unrecognized request argument supplied: {name}")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _Invalid("you must provide a model parameter")
        if "input" not in body:
            raise _missing("input")
        raw_input = body["input"]
        inputs: list[Any] = raw_input if isinstance(raw_input, list) else [raw_input]
        if raw_input and isinstance(raw_input, list) and all(_is_int(t) for t in raw_input):
            inputs = [raw_input]  # one token array
        valid = bool(inputs) and len(inputs) <= 2048 and all(
            (isinstance(x, str) and x)
            or (isinstance(x, list) and x and all(_is_int(t) for t in x))
            for x in inputs
        )
        if not valid:
            raise _Invalid(
                "'$.input' is invalid. Please check the API reference: "
                "https://platform.openai.com/docs/api-reference.", param="input",
            )
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise _Invalid(
                f"Invalid value: '{fmt}'. Supported values are: 'float' and 'base64'.",
                param="encoding_format", code="invalid_value",
            )
        dims = body.get("dimensions", 8)
        if not _is_int(dims) or dims < 1:
            raise _Invalid("Invalid 'dimensions': expected an integer >= 1.", param="dimensions")
        if ctx.failure is not None and ctx.failure.mode in ("cut", "inband_error"):
            return await self._non_stream_failure(ctx, anthropic=False)
        data = []
        tokens = 0
        for i, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            tokens += _words(text) if isinstance(item, str) else len(item)
            vector = embedding_vector(text, dims)
            value: Any = vector
            if fmt == "base64":
                value = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        await self._slow_json(ctx)
        return web.json_response({
            "object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }, headers={"x-request-id": f"req_fake{ctx.seq:06d}"})

    async def _models(self, ctx: _Ctx) -> web.StreamResponse:
        self._openai_auth(ctx)
        models = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "openai"}
                  for m in OPENAI_MODELS]
        wanted = ctx.request.path.removeprefix("/v1/models").strip("/")
        if not wanted:
            return web.json_response({"object": "list", "data": models})
        for model in models:
            if model["id"] == wanted:
                return web.json_response(model)
        raise _Invalid(f"The model '{wanted}' does not exist", param="model",
                       code="model_not_found", status=404)

    # ---- OpenAI Responses endpoint

    async def _responses(self, ctx: _Ctx) -> web.StreamResponse:
        self._openai_auth(ctx)
        body = self._require_json(ctx, anthropic=False)
        previous = body.get("previous_response_id")
        with self._lock:
            known = self._stored.get(previous) if isinstance(previous, str) else set()
        if known is None:
            raise _Invalid(f"Previous response with id '{previous}' not found.",
                           param="previous_response_id", code="previous_response_not_found")
        validate_responses(body, known)
        reply: ResponsesReply = build_reply(body, ctx.seq)
        if body.get("store", True):
            with self._lock:
                self._stored[reply.response["id"]] = reply.call_ids
        headers = {"x-request-id": f"req_fake{ctx.seq:06d}", "openai-processing-ms": "1"}
        if not body.get("stream"):
            if ctx.failure is not None and ctx.failure.mode in ("cut", "inband_error"):
                return await self._non_stream_failure(ctx, anthropic=False)
            await self._slow_json(ctx)
            return web.json_response(reply.response, headers=headers)
        message = (ctx.failure.opts.get("message") if ctx.failure else None) or (
            "The server had an error while processing your request. Sorry about that!")
        return await self._stream(
            ctx, reply.events, lambda sent: reply.failed_event(sent, message), headers)

    # ---- Anthropic endpoints

    async def _count_tokens(self, ctx: _Ctx) -> web.StreamResponse:
        self._anthropic_auth(ctx)
        body = self._require_json(ctx, anthropic=True)
        validate_anthropic_messages(body, count_tokens=True)
        if ctx.failure is not None and ctx.failure.mode in ("cut", "inband_error"):
            return await self._non_stream_failure(ctx, anthropic=True)
        await self._slow_json(ctx)
        return web.json_response({"input_tokens": anthropic_input_tokens(body)},
                                 headers={"request-id": f"req_fake{ctx.seq:06d}"})

    async def _messages(self, ctx: _Ctx) -> web.StreamResponse:
        self._anthropic_auth(ctx)
        body = self._require_json(ctx, anthropic=True)
        validate_anthropic_messages(body)
        model: str = body["model"]
        messages: list[dict[str, Any]] = body["messages"]
        last_user = next((_an_text(m["content"]) for m in reversed(messages)
                          if m["role"] == "user"), "")
        text = f"Hello from fake {model}: {last_user[:200]}"
        tools = body.get("tools") or []
        choice = body.get("tool_choice") or {}
        tool_name: str | None = None
        last = messages[-1]["content"]
        answering = isinstance(last, list) and any(b["type"] == "tool_result" for b in last)
        forced = choice.get("type") in ("any", "tool")  # else: answer a tool result with text
        if tools and choice.get("type") != "none" and (forced or not answering):
            tool_name = choice["name"] if choice.get("type") == "tool" else tools[0]["name"]
        tool_input = {"input": last_user[:50]}
        thinking_on = (body.get("thinking") or {}).get("type") in ("enabled", "adaptive")
        thought = f"Thinking about: {last_user[:50]}"
        input_tokens = anthropic_input_tokens(body)
        output_tokens = (_words(json.dumps(tool_input)) + 1 if tool_name else _words(text)) + (
            _words(thought) if thinking_on else 0
        )
        msg_id, tool_id = f"msg_fake{ctx.seq:06d}", f"toolu_fake{ctx.seq:06d}"
        stop_reason = "tool_use" if tool_name else "end_turn"
        signature = base64.b64encode(hashlib.sha256(thought.encode()).digest()).decode()
        headers = {"request-id": f"req_fake{ctx.seq:06d}"}
        usage = {
            "input_tokens": input_tokens, "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "service_tier": "standard",
        }
        blocks: list[dict[str, Any]] = []
        if thinking_on:
            blocks.append({"type": "thinking", "thinking": thought, "signature": signature})
        if tool_name:
            blocks.append({"type": "tool_use", "id": tool_id, "name": tool_name,
                           "input": tool_input})
        else:
            blocks.append({"type": "text", "text": text})
        message = {
            "id": msg_id, "type": "message", "role": "assistant", "model": model,
            "content": blocks, "stop_reason": stop_reason, "stop_sequence": None, "usage": usage,
        }

        if not body.get("stream"):
            if ctx.failure is not None and ctx.failure.mode in ("cut", "inband_error"):
                return await self._non_stream_failure(ctx, anthropic=True)
            await self._slow_json(ctx)
            return web.json_response(message, headers=headers)

        start = {**message, "content": [], "stop_reason": None,
                 "usage": {**usage, "output_tokens": 1}}
        events: list[tuple[bytes, bool]] = [
            (_sse({"type": "message_start", "message": start}, "message_start"), False),
        ]
        for index, block in enumerate(blocks):
            btype = block["type"]
            if btype == "thinking":
                opening: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
                deltas = [{"type": "thinking_delta", "thinking": p} for p in _pieces(thought)]
                deltas.append({"type": "signature_delta", "signature": signature})
            elif btype == "tool_use":
                opening = {**block, "input": {}}
                args = json.dumps(tool_input)
                deltas = [{"type": "input_json_delta", "partial_json": args[k:k + 8]}
                          for k in range(0, len(args), 8)]
            else:
                opening = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": p} for p in _pieces(text)]
            events.append((_sse({"type": "content_block_start", "index": index,
                                 "content_block": opening}, "content_block_start"), False))
            if index == 0:
                events.append((_sse({"type": "ping"}, "ping"), False))
            for delta in deltas:
                events.append((_sse({"type": "content_block_delta", "index": index,
                                     "delta": delta}, "content_block_delta"), True))
            events.append((_sse({"type": "content_block_stop", "index": index},
                                "content_block_stop"), False))
        events.append((_sse({
            "type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        }, "message_delta"), False))
        events.append((_sse({"type": "message_stop"}, "message_stop"), False))
        opts = ctx.failure.opts if ctx.failure else {}
        etype = opts.get("type", "overloaded_error")
        message_text = opts.get("message", "Overloaded")
        error = _sse({"type": "error", "error": {"type": etype, "message": message_text}}, "error")
        return await self._stream(ctx, events, error, headers)

    # ---- writing

    async def _slow_json(self, ctx: _Ctx) -> None:
        if ctx.failure is not None and ctx.failure.mode == "slow_stream":
            await asyncio.sleep(float(ctx.failure.opts["interval"]))

    async def _non_stream_failure(self, ctx: _Ctx, anthropic: bool) -> web.StreamResponse:
        assert ctx.failure is not None
        if ctx.failure.mode == "cut":
            return self._drop(ctx.request)
        as_status = _Failure("status", 1, None, {**ctx.failure.opts, "status": 500})
        return self._status_failure(as_status, anthropic, ctx.seq)

    async def _stream(self, ctx: _Ctx, events: list[tuple[bytes, bool]],
                      error: bytes | Callable[[int], bytes],
                      headers: dict[str, str]) -> web.StreamResponse:
        """Write `events`, failing as told; `error` is the in-band error event, or makes it
        from the number of events sent before it (a Responses `sequence_number`)."""
        resp = web.StreamResponse(headers={
            **headers, "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
        })
        mode = ctx.failure.mode if ctx.failure else None
        opts = ctx.failure.opts if ctx.failure else {}
        if mode in ("cut", "inband_error", "stall"):
            after, seen, kept = int(opts.get("after", 0)), 0, []
            for data, is_content in events:
                if is_content:
                    if seen >= after:
                        break
                    seen += 1
                kept.append((data, is_content))
            if mode == "inband_error":
                kept.append((error if isinstance(error, bytes) else error(len(kept)), False))
            events = kept
        rng = random.Random(ctx.seq)
        try:
            await resp.prepare(ctx.request)
            if opts.get("interval") is not None:
                for k, (data, _) in enumerate(events):
                    if k:
                        await asyncio.sleep(float(opts["interval"]))
                    if self._closing:
                        self._drop(ctx.request)
                        return resp
                    await self._write(resp, data, rng)
            else:
                await self._write(resp, b"".join(data for data, _ in events), rng)
            if mode == "stall":
                await self._hang()  # silent, the connection open, until reset() or stop()
            if mode in ("cut", "stall"):
                self._drop(ctx.request)  # no terminating chunk: the client sees a broken body
                return resp
            await resp.write_eof()
        except ConnectionError:
            pass  # the client went away
        return resp

    async def _write(self, resp: web.StreamResponse, data: bytes, rng: random.Random) -> None:
        if self.fast:
            await resp.write(data)
            return
        pos = 0
        while pos < len(data):
            size = rng.randint(1, 40)
            await resp.write(data[pos:pos + size])
            pos += size


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def embedding_vector(text: str, dims: int = 8) -> list[float]:
    """The fake's deterministic embedding of `text`: `dims` float32 values in [-1, 1]."""
    raw = b""
    counter = 0
    while len(raw) < 2 * dims:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [int.from_bytes(raw[2 * i:2 * i + 2], "big") / 32767.5 - 1 for i in range(dims)]
    return list(struct.unpack(f"<{dims}f", struct.pack(f"<{dims}f", *values)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI/Anthropic provider")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--fast", action="store_true", help="no byte splitting, no counting")
    parser.add_argument("--openai-key", action="append", default=[], help="extra accepted key")
    parser.add_argument("--anthropic-key", action="append", default=[], help="extra accepted key")
    args = parser.parse_args(argv)
    provider = FakeProvider(
        openai_keys={OPENAI_KEY, *args.openai_key},
        anthropic_keys={ANTHROPIC_KEY, *args.anthropic_key},
        port=args.port, fast=args.fast,
    ).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"READY {provider.port}", flush=True)
    while not done.wait(0.5):
        pass
    provider.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
