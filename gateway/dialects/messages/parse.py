"""Parsing a Messages request (`POST /v1/messages`, `/v1/messages/count_tokens`) into a
`ChatRequest` of the `messages` dialect, with Bookbag's attribution taken out.

Only what the gateway relies on is checked here (model, the turns' shape and their
text blocks' text, `max_tokens`, `stream`, `system` as text blocks, `metadata`); the rest
goes to the route, which honours it or refuses it with 400 (billed_features, the
provider's check).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.dialects.attribution import attribute, take_metadata
from gateway.errors import InvalidRequest
from gateway.types import MESSAGES, Caller, ChatRequest

ROLES = ("user", "assistant")
BETA_HEADER = "anthropic-beta"
VERSION_HEADER = "anthropic-version"


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("model: Field required (a non-empty string)", param="model")
    return model


def _blocks(value: Any, where: str, *, text_only: bool = False) -> None:
    """Content blocks: each an object with a string `type`; a `text` block's text a string
    (a translator carries it as is). `system` takes text blocks only (as the API says):
    a translator would otherwise drop the others silently."""
    if not isinstance(value, list):
        raise InvalidRequest(f"{where}: Input should be a valid string or list", param=where)
    for j, block in enumerate(value):
        at = f"{where}.{j}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise InvalidRequest(f"{at}: each content block needs a string `type`", param=at)
        kind = block["type"]
        if text_only and kind != "text":
            raise InvalidRequest(f"{at}: Input tag '{kind[:64]}' found using 'type' does not "
                                 "match any of the expected tags: 'text'", param=at)
        if kind == "text" and not isinstance(block.get("text"), str):
            raise InvalidRequest(f"{at}.text: Input should be a valid string",
                                 param=f"{at}.text")


TOOL_CHOICE_TYPES = ("auto", "any", "tool", "none")


def _tool_choice(value: Any) -> None:
    """`tool_choice` as the API takes it (every route reads it: a translator maps its type,
    so a string or an unknown type would otherwise be a vague refusal, or a 500)."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise InvalidRequest("tool_choice: Input should be an object", param="tool_choice")
    kind = value.get("type")
    if not isinstance(kind, str) or kind not in TOOL_CHOICE_TYPES:
        raise InvalidRequest("tool_choice.type: Input should be "
                             + ", ".join(f"'{t}'" for t in TOOL_CHOICE_TYPES),
                             param="tool_choice.type")
    if kind == "tool" and not isinstance(value.get("name"), str):
        raise InvalidRequest("tool_choice.name: Input should be a valid string",
                             param="tool_choice.name")


def _messages(value: Any) -> None:
    if not isinstance(value, list) or not value:
        raise InvalidRequest("messages: Field required (a non-empty list)", param="messages")
    for i, message in enumerate(value):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where}: Input should be an object", param=where)
        if message.get("role") not in ROLES:
            raise InvalidRequest(f"{where}.role: Input should be 'user' or 'assistant'",
                                 param=f"{where}.role")
        content = message.get("content")
        if not isinstance(content, str):
            _blocks(content, f"{where}.content")


def _whole(body: Mapping[str, Any], name: str, *, required: bool) -> None:
    value = body.get(name)
    if value is None and not required:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"{name}: Field required (a whole number >= 1)", param=name)


def _attribution(body: dict[str, Any], headers: Mapping[str, str],
                 caller: Caller) -> tuple[str | None, str | None]:
    """Agent and conversation from the X-Bookbag-* headers or `metadata` (taken out of
    it: Anthropic's metadata knows only `user_id`)."""
    metadata = body.get("metadata")
    meta_agent = meta_conversation = None
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise InvalidRequest("metadata: Input should be an object", param="metadata")
        meta_agent, meta_conversation = take_metadata(body, metadata)
    return attribute(headers, caller, meta_agent, meta_conversation)


def betas_of(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The `anthropic-beta` values (comma-separated in one header)."""
    raw = headers.get(BETA_HEADER)
    if not raw:
        return ()
    return tuple(dict.fromkeys(b.strip() for b in raw.split(",") if b.strip()))


def messages_request(body: dict[str, Any], headers: Mapping[str, str], caller: Caller, *,
                     count_tokens: bool = False) -> ChatRequest:
    """Validate a Messages body (count_tokens: no `max_tokens`, no `stream`)."""
    model = _model(body)
    _messages(body.get("messages"))
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        _blocks(system, "system", text_only=True)
    stream = False
    if not count_tokens:
        _whole(body, "max_tokens", required=True)
        given = body.get("stream")
        if given is not None and not isinstance(given, bool):
            raise InvalidRequest("stream: Input should be a valid boolean", param="stream")
        stream = bool(given)
    for name in ("tools", "stop_sequences"):
        if body.get(name) is not None and not isinstance(body[name], list):
            raise InvalidRequest(f"{name}: Input should be a valid list", param=name)
    for i, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, dict):  # every route reads its fields
            raise InvalidRequest(f"tools.{i}: Input should be an object", param=f"tools.{i}")
    _tool_choice(body.get("tool_choice"))
    thinking = body.get("thinking")
    if thinking is not None and not isinstance(thinking, dict):
        raise InvalidRequest("thinking: Input should be an object", param="thinking")
    agent, conversation = _attribution(body, headers, caller)
    # The usage events are part of the dialect: always relayed (include_usage).
    return ChatRequest(model, body, stream, 1, True, agent, conversation, dialect=MESSAGES,
                       betas=betas_of(headers))
