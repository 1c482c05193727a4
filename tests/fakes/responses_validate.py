"""Request validation of the fake `POST /v1/responses`, as strict as the real Responses API.

The real API rejects unknown top-level parameters ("Unknown parameter"), a
`function_call_output` whose `call_id` no earlier `function_call` (in this input or
the previous response) made, and out-of-range numbers, with the Chat-style error
body (`message`, `type`, `param`, `code`). The messages below are the real ones
where they are known; where a check is ours (e.g. item shapes), they follow the
same wording pattern.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.fakes.common import (
    TOOL_NAME,
    _Invalid,
    _is_int,
    _is_num,
    _missing,
    _type_word,
)
from tests.fakes.common import _bounded as common_bounded

RESPONSES_PARAMS = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
    "max_output_tokens", "max_tool_calls", "temperature", "top_p", "top_logprobs",
    "text", "reasoning", "metadata", "store", "stream", "stream_options", "background",
    "previous_response_id", "include", "truncation", "user", "service_tier",
    "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "prompt",
    "conversation",
})
HOSTED_TOOLS = frozenset({
    "web_search", "web_search_preview", "file_search", "code_interpreter", "computer_use_preview",
    "image_generation", "mcp", "local_shell", "shell", "apply_patch", "custom",
})
MESSAGE_ROLES = ("user", "assistant", "system", "developer")
INPUT_PARTS = ("input_text", "input_image", "input_file", "input_audio")
OUTPUT_PARTS = ("output_text", "refusal")
ITEM_REQUIRED = {
    "function_call": ("call_id", "name", "arguments"),
    "function_call_output": ("call_id", "output"),
    "reasoning": ("summary",),
}


def _invalid_value(param: str, value: Any, supported: tuple[str, ...]) -> _Invalid:
    names = ", ".join(f"'{s}'" for s in supported)
    return _Invalid(f"Invalid value: '{value}'. Supported values are: {names}.",
                    param=param, code="invalid_value")


def _typed(body: dict[str, Any], name: str, kind: str, check: Callable[[Any], bool]) -> None:
    if name in body and body[name] is not None and not check(body[name]):
        raise _Invalid(
            f"Invalid type for '{name}': expected {kind}, but got {_type_word(body[name])} "
            "instead.", param=name, code="invalid_type",
        )


def _bounded(body: dict[str, Any], name: str, lo: float, hi: float | None) -> None:
    common_bounded(body, name, lo, hi, ("max_output_tokens", "top_logprobs"))


def _message_content(item: dict[str, Any], where: str) -> None:
    content = item.get("content")
    if content is None:
        raise _missing(f"{where}.content")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _Invalid(
            f"Invalid type for '{where}.content': expected one of a string or array of input "
            f"items, but got {_type_word(content)} instead.", param=f"{where}.content",
            code="invalid_type",
        )
    allowed = OUTPUT_PARTS if item["role"] == "assistant" else INPUT_PARTS
    for j, part in enumerate(content):
        p = f"{where}.content[{j}]"
        ptype = part.get("type") if isinstance(part, dict) else None
        if ptype not in allowed:
            raise _invalid_value(f"{p}.type", ptype, allowed)
        if ptype in ("input_text", "output_text") and not isinstance(part.get("text"), str):
            raise _missing(f"{p}.text")
        if ptype == "input_image" and not (part.get("image_url") or part.get("file_id")):
            raise _missing(f"{p}.image_url")


def validate_input(value: Any, known_calls: set[str]) -> None:
    """`input` as text or items; every tool output answers a call made before it."""
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _Invalid(
            f"Invalid type for 'input': expected one of a string or array of input items, but "
            f"got {_type_word(value)} instead.", param="input", code="invalid_type",
        )
    calls = set(known_calls)
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _Invalid(
                f"Invalid type for '{where}': expected an input item, but got "
                f"{_type_word(item)} instead.", param=where, code="invalid_type",
            )
        itype = item.get("type", "message" if "role" in item else None)
        if itype == "message" or itype is None:
            if "role" not in item:
                raise _missing(f"{where}.role")
            if item["role"] not in MESSAGE_ROLES:
                raise _invalid_value(f"{where}.role", item["role"], MESSAGE_ROLES)
            _message_content(item, where)
            continue
        if itype not in ITEM_REQUIRED:
            raise _invalid_value(f"{where}.type", itype, ("message", *ITEM_REQUIRED))
        for key in ITEM_REQUIRED[itype]:
            if key not in item:
                raise _missing(f"{where}.{key}")
        if itype == "function_call":
            if not isinstance(item["arguments"], str):
                raise _Invalid(
                    f"Invalid type for '{where}.arguments': expected a string, but got "
                    f"{_type_word(item['arguments'])} instead.", param=f"{where}.arguments",
                    code="invalid_type",
                )
            calls.add(item["call_id"])
        elif itype == "function_call_output" and item["call_id"] not in calls:
            raise _Invalid(
                f"No tool call found for function call output with call_id {item['call_id']}.",
                param="input",
            )


def validate_tools(body: dict[str, Any]) -> None:
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
            if tool["type"] in HOSTED_TOOLS:
                continue
            if tool["type"] != "function":
                raise _invalid_value(f"{t}.type", tool["type"], ("function", *sorted(HOSTED_TOOLS)))
            if "name" not in tool:
                raise _missing(f"{t}.name")
            if not isinstance(tool["name"], str) or not TOOL_NAME.match(tool["name"]):
                raise _Invalid(
                    f"Invalid '{t}.name': string does not match pattern. Expected a string that "
                    "matches the pattern '^[a-zA-Z0-9_-]+$'.", param=f"{t}.name",
                    code="invalid_value",
                )
    choice = body.get("tool_choice")
    if choice is None or choice in ("none", "auto", "required"):
        return
    if isinstance(choice, str):
        raise _invalid_value("tool_choice", choice, ("none", "auto", "required"))
    if not isinstance(choice, dict) or choice.get("type") != "function" or not choice.get("name"):
        raise _missing("tool_choice.name")
    names = [t.get("name") for t in tools or [] if t.get("type") == "function"]
    if choice["name"] not in names:
        raise _Invalid(
            f"Tool choice '{choice['name']}' not found in 'tools' parameter.", param="tool_choice",
        )


def validate_text_format(body: dict[str, Any]) -> None:
    _typed(body, "text", "an object", lambda v: isinstance(v, dict))
    fmt = (body.get("text") or {}).get("format")
    if fmt is None:
        return
    ftype = fmt.get("type") if isinstance(fmt, dict) else None
    if ftype not in ("text", "json_object", "json_schema"):
        raise _invalid_value("text.format.type", ftype, ("text", "json_object", "json_schema"))
    if ftype == "json_schema":
        for key in ("name", "schema"):
            if key not in fmt:
                raise _missing(f"text.format.{key}")


def validate_responses(body: dict[str, Any], known_calls: set[str]) -> None:
    """Raise _Invalid like the real Responses API would; `known_calls`: the call ids of the
    previous response (empty without `previous_response_id`)."""
    for name in body:
        if name not in RESPONSES_PARAMS:
            raise _Invalid(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
    if "model" not in body:
        raise _missing("model")
    if not isinstance(body["model"], str) or not body["model"]:
        raise _Invalid(
            f"Invalid type for 'model': expected a string, but got {_type_word(body['model'])} "
            "instead.", param="model", code="invalid_type",
        )
    if "input" not in body and "previous_response_id" not in body:
        raise _missing("input")
    validate_input(body.get("input", []), known_calls)
    _typed(body, "instructions", "a string", lambda v: isinstance(v, str))
    for name in ("stream", "store", "background", "parallel_tool_calls"):
        _typed(body, name, "a boolean", lambda v: isinstance(v, bool))
    for name in ("max_output_tokens", "max_tool_calls", "top_logprobs"):
        _typed(body, name, "an integer", _is_int)
    _bounded(body, "max_output_tokens", 16, None)
    _bounded(body, "top_logprobs", 0, 20)
    for name, lo, hi in (("temperature", 0, 2), ("top_p", 0, 1)):
        _typed(body, name, "a decimal", _is_num)
        _bounded(body, name, lo, hi)
    _typed(body, "metadata", "an object", lambda v: isinstance(v, dict))
    metadata = body.get("metadata") or {}
    if len(metadata) > 16 or not all(isinstance(v, str) for v in metadata.values()):
        raise _Invalid("Invalid 'metadata': at most 16 string values.", param="metadata",
                       code="invalid_value")
    _typed(body, "reasoning", "an object", lambda v: isinstance(v, dict))
    effort = (body.get("reasoning") or {}).get("effort")
    efforts = ("none", "minimal", "low", "medium", "high", "xhigh")
    if effort is not None and effort not in efforts:
        raise _invalid_value("reasoning.effort", effort, efforts)
    if body.get("stream_options") is not None and body.get("stream") is not True:
        raise _Invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    validate_tools(body)
    validate_text_format(body)
