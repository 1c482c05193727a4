"""The structured parts of a Responses body: `input` items, `tools`, `tool_choice`, `text`.

What a client can get wrong in the shapes the gateway and its translators rely on is
refused here with the real API's wording (a translator may index `item["call_id"]`
without a guard). Item and tool types the gateway does not know (hosted tools' calls and
outputs, new item types) only need a string `type`: a relayed upstream validates them, a
translator refuses what its target cannot carry, and whether a hosted tool may run at all
is the catalog's call (billed.py).
"""

from __future__ import annotations

import re
from typing import Any

from gateway.dialects.responses.checks import (
    boolean,
    choice,
    invalid_type,
    invalid_value,
    missing,
    obj,
    string,
)
from gateway.errors import InvalidRequest

ROLES = ("user", "assistant", "system", "developer")
INPUT_PARTS = frozenset({"input_text", "input_image", "input_file", "input_audio"})
OUTPUT_PARTS = frozenset({"output_text", "refusal"})
NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
TOOL_CHOICE_MODES = ("none", "auto", "required")
FORMATS = ("text", "json_object", "json_schema")


def check_input(value: Any) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise invalid_type("input", "one of a string or array of input items", value)
    for i, item in enumerate(value):
        _item(item, f"input[{i}]")


def _item(item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise invalid_type(where, "an object", item)
    kind = item.get("type", "message" if "role" in item else None)
    if kind is None:
        raise missing(f"{where}.type")
    if not isinstance(kind, str):
        raise invalid_type(f"{where}.type", "a string", kind)
    if kind == "message":
        _message(item, where)
    elif kind in ("function_call", "custom_tool_call"):
        for key in ("call_id", "name", "arguments" if kind == "function_call" else "input"):
            string(item, key, where, required=True)
    elif kind in ("function_call_output", "custom_tool_call_output"):
        string(item, "call_id", where, required=True)
        output = item.get("output")
        if output is None:
            raise missing(f"{where}.output")
        if isinstance(output, list):
            _parts(output, f"{where}.output", INPUT_PARTS)
        elif not isinstance(output, str):
            raise invalid_type(f"{where}.output", "a string or an array of content parts",
                               output)
    elif kind == "reasoning":
        if not isinstance(item.get("summary", []), list):
            raise invalid_type(f"{where}.summary", "an array", item.get("summary"))
    elif kind == "item_reference":
        string(item, "id", where, required=True)


def _message(item: dict[str, Any], where: str) -> None:
    role = item.get("role")
    if role is None:
        raise missing(f"{where}.role")
    if role not in ROLES:
        raise invalid_value(f"{where}.role", role, ROLES)
    content = item.get("content")
    if content is None:
        raise missing(f"{where}.content")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise invalid_type(f"{where}.content", "one of a string or array of content parts",
                           content)
    allowed = INPUT_PARTS | OUTPUT_PARTS if role == "assistant" else INPUT_PARTS
    _parts(content, f"{where}.content", allowed)


def _parts(parts: list[Any], where: str, allowed: frozenset[str]) -> None:
    for j, part in enumerate(parts):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise invalid_type(at, "an object", part)
        kind = part.get("type")
        if kind is None:
            raise missing(f"{at}.type")
        if not isinstance(kind, str):  # before the set lookup: a list or object is unhashable
            raise invalid_type(f"{at}.type", "a string", kind)
        if kind not in allowed:
            raise invalid_value(f"{at}.type", kind, sorted(allowed))
        if kind in ("input_text", "output_text"):
            string(part, "text", at, required=True)
        elif kind == "refusal":
            string(part, "refusal", at, required=True)
        elif kind == "input_image":  # a translator makes a URL of it
            for key in ("image_url", "file_id", "detail"):
                string(part, key, at)


def check_tools(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise invalid_type("tools", "an array", value)
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise invalid_type(where, "an object", tool)
        kind = string(tool, "type", where, required=True)
        if kind in ("function", "custom"):
            name = string(tool, "name", where, required=True)
            if not NAME_RE.match(name or ""):
                raise InvalidRequest(f"Invalid '{where}.name': string does not match pattern. "
                                     "Expected a string that matches the pattern "
                                     f"'{NAME_RE.pattern}'.", param=f"{where}.name")
            string(tool, "description", where)
        if kind == "function":
            obj(tool, "parameters", where)
            boolean(tool, "strict", where)


def check_tool_choice(value: Any) -> None:
    if value is None or value in TOOL_CHOICE_MODES:
        return
    if isinstance(value, str):
        raise invalid_value("tool_choice", value, TOOL_CHOICE_MODES)
    if not isinstance(value, dict):
        raise invalid_type("tool_choice", "a string or an object", value)
    kind = string(value, "type", "tool_choice", required=True)
    if kind in ("function", "custom"):
        string(value, "name", "tool_choice", required=True)
    elif kind == "allowed_tools":
        choice(value, "mode", ("auto", "required"), "tool_choice")
        if not isinstance(value.get("tools"), list):
            raise invalid_type("tool_choice.tools", "an array", value.get("tools"))


def check_text(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise invalid_type("text", "an object", value)
    choice(value, "verbosity", ("low", "medium", "high"), "text")
    fmt = obj(value, "format", "text")
    if fmt is None:
        return
    kind = fmt.get("type")
    if kind is None:
        raise missing("text.format.type")
    choice(fmt, "type", FORMATS, "text.format")
    if kind == "json_schema":
        name = string(fmt, "name", "text.format", required=True)
        if not NAME_RE.match(name or ""):
            raise InvalidRequest("Invalid 'text.format.name': string does not match pattern. "
                                 f"Expected a string that matches the pattern "
                                 f"'{NAME_RE.pattern}'.", param="text.format.name")
        if not isinstance(fmt.get("schema"), dict):
            if fmt.get("schema") is None:
                raise missing("text.format.schema")
            raise invalid_type("text.format.schema", "an object", fmt.get("schema"))
        boolean(fmt, "strict", "text.format")
