"""Replies and stop reasons between Chat Completions and Anthropic Messages.

Usage is carried over from the provider's own counts, never re-counted: Anthropic's
`input_tokens` excludes cached input, so the chat `prompt_tokens` is the sum of the three
input counts with the cache reads as `cached_tokens`, and back again.
"""

from __future__ import annotations

from typing import Any

from gateway.dialects.translate.common import Json, dumps, loads_object

# Anthropic stop_reason -> chat finish_reason (docs: "Handling stop reasons")
FINISH_REASON = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
    "max_tokens": "length", "model_context_window_exceeded": "length",
    "tool_use": "tool_calls", "refusal": "content_filter",
}
# chat finish_reason -> Anthropic stop_reason
STOP_REASON = {
    "stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
    "function_call": "tool_use", "content_filter": "refusal",
}


def finish_reason(stop_reason: str | None) -> str | None:
    return None if stop_reason is None else FINISH_REASON.get(stop_reason, "stop")


def stop_reason(finish: str | None) -> str | None:
    return None if finish is None else STOP_REASON.get(finish, "end_turn")


def chat_usage(usage: Json) -> Json:
    """Anthropic usage (message or message_delta) as chat usage."""
    cached = int(usage.get("cache_read_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + cached + int(
        usage.get("cache_creation_input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def messages_usage(usage: Json) -> Json:
    """Chat usage as Anthropic usage."""
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {"input_tokens": int(usage.get("prompt_tokens") or 0) - cached,
            "output_tokens": int(usage.get("completion_tokens") or 0),
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}


def messages_reply_to_chat(message: Json, *, created: int) -> Json:
    """An Anthropic Message as a chat.completion (one choice). Thinking goes to
    `reasoning_content`, the field OpenAI-compatible reasoning models use."""
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[Json] = []
    for block in message.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block["text"])
        elif kind == "thinking":
            thinking.append(block["thinking"])
        elif kind == "tool_use":
            calls.append({"id": block["id"], "type": "function", "function": {
                "name": block["name"], "arguments": dumps(block.get("input") or {})}})
    reply_message: Json = {"role": "assistant", "content": "".join(texts) if texts else None,
                           "refusal": None, "annotations": []}
    if calls:
        reply_message["tool_calls"] = calls
    if thinking:
        reply_message["reasoning_content"] = "".join(thinking)
    return {
        "id": f"chatcmpl-{message['id']}", "object": "chat.completion", "created": created,
        "model": message["model"],
        "choices": [{"index": 0, "message": reply_message, "logprobs": None,
                     "finish_reason": finish_reason(message.get("stop_reason")) or "stop"}],
        "usage": chat_usage(message.get("usage") or {}),
    }


def chat_reply_to_messages(reply: Json) -> Json:
    """A chat.completion (its first choice; the request translation refuses n > 1) as an
    Anthropic Message."""
    choice: Json = reply["choices"][0]
    message: Json = choice.get("message") or {}
    blocks: list[Json] = []
    content: Any = message.get("content")
    if isinstance(content, str) and content:
        blocks.append({"type": "text", "text": content})
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        blocks.append({"type": "text", "text": refusal})
    for i, call in enumerate(message.get("tool_calls") or []):
        fn = call["function"]
        blocks.append({"type": "tool_use", "id": call["id"], "name": fn["name"],
                       "input": loads_object(fn.get("arguments") or "",
                                             f"choices[0].message.tool_calls[{i}].arguments")})
    reason = "refusal" if refusal else stop_reason(choice.get("finish_reason"))
    return {
        "id": f"msg_{reply['id']}", "type": "message", "role": "assistant",
        "model": reply["model"], "content": blocks, "stop_reason": reason or "end_turn",
        "stop_sequence": None, "usage": messages_usage(reply.get("usage") or {}),
    }
