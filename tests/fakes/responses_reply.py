"""The fake `POST /v1/responses` reply: the Response object and its typed SSE events.

Deterministic like the chat route: text "Hello from fake <model>: <last user text>",
or a call to the first function tool (or the one `tool_choice` names) unless
`tool_choice` is "none" or, with auto/unset, the input ends with a tool output.
A text longer (in words) than `max_output_tokens` is cut there and the reply is
`incomplete` (reason `max_output_tokens`), as the real API ends such a reply.
Usage is reported once, in the final Response (`response.completed` /
`response.incomplete`), as the real stream does.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.common import _pieces, _sse, _words


def _part_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    return " ".join(p.get("text", "") for p in parts
                    if p.get("type") in ("input_text", "output_text"))


def _items(body: dict[str, Any]) -> list[dict[str, Any]]:
    raw = body.get("input", [])
    return [{"role": "user", "content": raw}] if isinstance(raw, str) else list(raw)


def input_tokens(body: dict[str, Any]) -> int:
    """The fake's token count of a request: words of instructions, messages, tool traffic."""
    total = _words(body.get("instructions") or "")
    for item in _items(body):
        kind = item.get("type", "message")
        if kind == "message":
            total += _words(_part_text(item.get("content")))
        elif kind == "function_call":
            total += _words(item["arguments"]) + 1
        elif kind == "function_call_output":
            output = item["output"]
            total += _words(output if isinstance(output, str) else _part_text(output))
    return total


def _tool(body: dict[str, Any]) -> str | None:
    functions = [t["name"] for t in body.get("tools") or [] if t.get("type") == "function"]
    choice = body.get("tool_choice")
    if not functions or choice == "none":
        return None
    items = _items(body)
    answering = bool(items) and items[-1].get("type") == "function_call_output"
    if choice in (None, "auto") and answering:
        return None
    if isinstance(choice, dict):
        name: str = choice["name"]
        return name
    return functions[0]


def _tool_echo(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        return tool
    return {"type": "function", "name": tool["name"], "description": tool.get("description"),
            "parameters": tool.get("parameters"), "strict": tool.get("strict", True)}


@dataclass
class ResponsesReply:
    """One reply, as JSON (`response`) and as SSE (`events`, each flagged when it is an
    output delta, which is what the fake's cut / inband_error / stall count)."""

    response: dict[str, Any]
    events: list[tuple[bytes, bool]] = field(default_factory=list)
    call_ids: set[str] = field(default_factory=set)

    def failed_event(self, sequence_number: int, message: str) -> bytes:
        """`response.failed`: how the real stream reports a failure after it started."""
        failed = {**self.response, "status": "failed", "output": [], "usage": None,
                  "error": {"code": "server_error", "message": message}}
        return _sse({"type": "response.failed", "sequence_number": sequence_number,
                     "response": failed}, "response.failed")


def build_reply(body: dict[str, Any], seq: int) -> ResponsesReply:
    model: str = body["model"]
    user = next((_part_text(i.get("content")) for i in reversed(_items(body))
                 if i.get("type", "message") == "message" and i.get("role") == "user"), "")
    resp_id, item_id = f"resp_fake{seq:06d}", f"msg_fake{seq:06d}"
    tool_name = _tool(body)
    arguments = json.dumps({"input": user[:50]})
    text = f"Hello from fake {model}: {user[:200]}"
    pieces = _pieces(text)
    limit = body.get("max_output_tokens")
    incomplete = not tool_name and limit is not None and len(pieces) > limit
    if incomplete:
        pieces = pieces[:limit]
        text = "".join(pieces)
    status = "incomplete" if incomplete else "completed"
    out_tokens = _words(arguments) + 1 if tool_name else _words(text)
    in_tokens = input_tokens(body)
    usage = {
        "input_tokens": in_tokens, "output_tokens": out_tokens,
        "total_tokens": in_tokens + out_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }
    call_id, fc_id = f"call_fake{seq:06d}", f"fc_fake{seq:06d}"
    if tool_name:
        item: dict[str, Any] = {"type": "function_call", "id": fc_id, "call_id": call_id,
                                "name": tool_name, "arguments": arguments, "status": "completed"}
    else:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        item = {"type": "message", "id": item_id, "status": status, "role": "assistant",
                "content": [part]}
    response: dict[str, Any] = {
        "id": resp_id, "object": "response", "created_at": int(time.time()), "status": status,
        "background": False, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"), "max_output_tokens": limit,
        "max_tool_calls": body.get("max_tool_calls"), "model": model, "output": [item],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
        "service_tier": "default", "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": (body.get("text") or {}).get("format") or {"type": "text"},
                 "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": [_tool_echo(t) for t in body.get("tools") or []],
        "top_logprobs": body.get("top_logprobs", 0), "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"), "usage": usage,
        "user": body.get("user"), "metadata": body.get("metadata") or {},
    }
    reply = ResponsesReply(response, call_ids={call_id} if tool_name else set())
    _add_events(reply, tool_name, pieces, arguments)
    return reply


def _add_events(reply: ResponsesReply, tool_name: str | None, pieces: list[str],
                arguments: str) -> None:
    """The typed event sequence of the real stream, each with its `sequence_number`."""
    final = reply.response
    item = final["output"][0]
    pending = {**final, "status": "in_progress", "output": [], "usage": None,
               "incomplete_details": None}

    def emit(kind: str, payload: dict[str, Any], delta: bool = False) -> None:
        data = {"type": kind, "sequence_number": len(reply.events), **payload}
        reply.events.append((_sse(data, kind), delta))

    emit("response.created", {"response": pending})
    emit("response.in_progress", {"response": pending})
    at = {"output_index": 0, "item_id": item["id"]}
    if tool_name:
        emit("response.output_item.added", {"output_index": 0, "item": {
            **item, "arguments": "", "status": "in_progress"}})
        for k in range(0, len(arguments), 8):
            emit("response.function_call_arguments.delta",
                 {**at, "delta": arguments[k:k + 8]}, delta=True)
        emit("response.function_call_arguments.done", {**at, "arguments": arguments})
    else:
        part = item["content"][0]
        emit("response.output_item.added", {"output_index": 0, "item": {
            **item, "status": "in_progress", "content": []}})
        empty = {**part, "text": ""}
        emit("response.content_part.added", {**at, "content_index": 0, "part": empty})
        for piece in pieces:
            emit("response.output_text.delta",
                 {**at, "content_index": 0, "delta": piece, "logprobs": []}, delta=True)
        emit("response.output_text.done",
             {**at, "content_index": 0, "text": part["text"], "logprobs": []})
        emit("response.content_part.done", {**at, "content_index": 0, "part": part})
    emit("response.output_item.done", {"output_index": 0, "item": item})
    emit(f"response.{final['status']}", {"response": final})
