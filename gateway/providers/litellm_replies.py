"""litellm's replies as exact OpenAI JSON: a completion's choices, a stream's chunk payloads,
tool calls and usage (litellm's objects carry more and name some fields differently)."""

from __future__ import annotations

from typing import Any


def tool_calls(calls: Any, *, streamed: bool) -> list[dict[str, Any]]:
    """OpenAI tool calls; a streamed delta names the id, type and name only when it has them."""
    out = []
    for i, tc in enumerate(calls):
        fn = tc.function
        index = getattr(tc, "index", None)
        item: dict[str, Any] = {"index": i if index is None else index} if streamed else {}
        if tc.id or not streamed:
            item.update(id=tc.id, type="function")
        function = {"name": fn.name} if fn.name or not streamed else {}
        function["arguments"] = fn.arguments or ""
        out.append({**item, "function": function})
    return out


def choice(c: Any) -> dict[str, Any]:
    """One choice of a non-streamed completion."""
    m = c.message
    message: dict[str, Any] = {"role": "assistant", "content": m.content, "refusal": None}
    if m.tool_calls:
        message["tool_calls"] = tool_calls(m.tool_calls, streamed=False)
    return {"index": c.index, "message": message, "logprobs": None,
            "finish_reason": c.finish_reason}


def chunk_payload(chunk: Any) -> dict[str, Any] | None:
    """The OpenAI chunk for litellm's chunk, or None when it carries nothing."""
    choices = []
    for c in chunk.choices or ():
        d = c.delta
        delta: dict[str, Any] = {}
        if d.role:
            delta["role"] = d.role
        if d.content:
            delta["content"] = d.content
        # Thinking (Anthropic) as the OpenAI-compatible `reasoning_content` (DeepSeek, vLLM):
        # output the provider bills, so it reaches the client and counts as delivered.
        if reasoning := getattr(d, "reasoning_content", None):
            delta["reasoning_content"] = reasoning
        if d.tool_calls:
            delta["tool_calls"] = tool_calls(d.tool_calls, streamed=True)
        if delta or c.finish_reason:
            choices.append({"index": c.index, "delta": delta, "logprobs": None,
                            "finish_reason": c.finish_reason or None})
    return {**head(chunk), "choices": choices} if choices else None


def head(chunk: Any) -> dict[str, Any]:
    return {"id": chunk.id, "object": "chat.completion.chunk", "created": chunk.created,
            "model": chunk.model}


def usage(usage: Any) -> dict[str, int] | None:
    if usage is None:
        return None
    prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion = int(getattr(usage, "completion_tokens", 0) or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}
