"""Requests between Chat Completions and Anthropic Messages.

What one dialect can say and the other cannot is refused (`Untranslatable`, a 400 in the
client's dialect), never dropped: `n > 1`, logprobs, structured output, sampling knobs
that the other side lacks, Anthropic's `top_k` and thinking toward chat.
"""

from __future__ import annotations

from typing import Any

from gateway.dialects.translate.common import Json, Untranslatable, dumps, loads_object

# chat parameters Messages has no equivalent for (refused when set to anything but their
# default); `n`, `response_format` and `temperature` are checked by value below.
_CHAT_ONLY = ("logprobs", "top_logprobs", "logit_bias", "presence_penalty", "frequency_penalty",
              "seed", "audio", "modalities", "prediction", "reasoning_effort",
              "web_search_options", "functions", "function_call")
_CHAT_DEFAULTS: dict[str, Any] = {"logprobs": False, "presence_penalty": 0,
                                  "frequency_penalty": 0}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [] if p.get("type") == "text")


def _image_block(url: str) -> Json:
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media = head[5:].split(";")[0]
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _user_blocks(content: Any, where: str) -> list[Json]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks: list[Json] = []
    for j, part in enumerate(content or []):
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url":
            blocks.append(_image_block(part["image_url"]["url"]))
        else:
            raise Untranslatable(f"content part '{part.get('type')}' has no Messages form",
                                 f"{where}.content[{j}]")
    return blocks


def _append(messages: list[Json], role: str, blocks: list[Json]) -> None:
    """Consecutive turns of one role become one message (Messages alternates roles)."""
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": blocks})


def _chat_tool_choice(choice: Any, parallel: Any) -> Json | None:
    if choice is None and parallel is not False:
        return None
    if choice is None or choice == "auto":
        out: Json = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    else:
        out = {"type": "tool", "name": choice["function"]["name"]}
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


def chat_request_to_messages(body: Json, *, default_max_tokens: int) -> Json:
    """A chat request (already validated by the chat parser) as a Messages request."""
    for name in _CHAT_ONLY:
        if body.get(name) is not None and body[name] != _CHAT_DEFAULTS.get(name):
            raise Untranslatable(f"'{name}' is not supported for this model", name)
    if (body.get("n") or 1) != 1:
        raise Untranslatable("'n' above 1 is not supported for this model", "n")
    fmt = body.get("response_format")
    if fmt is not None and fmt.get("type") != "text":
        raise Untranslatable("'response_format' is not supported for this model",
                             "response_format")
    if (body.get("temperature") or 0) > 1:
        raise Untranslatable("'temperature' above 1 is not supported for this model",
                             "temperature")
    system: list[str] = []
    messages: list[Json] = []
    for i, msg in enumerate(body["messages"]):
        role, where = msg["role"], f"messages[{i}]"
        if role in ("system", "developer"):
            system.append(_text_of(msg.get("content")))
        elif role == "user":
            _append(messages, "user", _user_blocks(msg.get("content"), where))
        elif role == "assistant":
            blocks: list[Json] = []
            text = _text_of(msg.get("content"))
            if text:
                blocks.append({"type": "text", "text": text})
            for j, call in enumerate(msg.get("tool_calls") or []):
                fn = call["function"]
                blocks.append({"type": "tool_use", "id": call["id"], "name": fn["name"],
                               "input": loads_object(fn["arguments"],
                                                     f"{where}.tool_calls[{j}].function.arguments")})
            _append(messages, "assistant", blocks)
        else:  # tool
            _append(messages, "user", [{"type": "tool_result", "tool_use_id": msg["tool_call_id"],
                                        "content": _text_of(msg.get("content"))}])
    out: Json = {"model": body["model"], "messages": messages,
                 "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens")
                 or default_max_tokens}
    if system:
        out["system"] = "\n\n".join(system)
    for name in ("temperature", "top_p", "stream"):
        if body.get(name) is not None:
            out[name] = body[name]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("user"):
        out["metadata"] = {"user_id": body["user"]}
    if body.get("tools"):
        out["tools"] = [{"name": t["function"]["name"],
                         "description": t["function"].get("description", ""),
                         "input_schema": t["function"].get("parameters") or {"type": "object"}}
                        for t in body["tools"]]
    choice = _chat_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None:
        out["tool_choice"] = choice
    return out


def _chat_content(blocks: list[Json], where: str) -> tuple[list[Json], list[Json], list[Json]]:
    """One Messages turn's blocks as (chat content parts, tool calls, tool messages)."""
    parts: list[Json] = []
    calls: list[Json] = []
    results: list[Json] = []
    for j, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            src = block["source"]
            url = src["url"] if src.get("type") == "url" else \
                f"data:{src['media_type']};base64,{src['data']}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif kind == "tool_use":
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": dumps(block["input"])}})
        elif kind == "tool_result":
            content = block.get("content", "")
            text = content if isinstance(content, str) else _text_of(content)
            results.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        elif kind not in ("thinking", "redacted_thinking"):  # earlier thinking: the model's own
            raise Untranslatable(f"content block '{kind}' has no chat form", f"{where}.{j}")
    return parts, calls, results


def messages_request_to_chat(body: Json) -> Json:
    """A Messages request as a chat request (serving an Anthropic client from an OpenAI-style
    upstream). A stream asks for the usage chunk: the charge comes from it."""
    if body.get("top_k") is not None:
        raise Untranslatable("'top_k' is not supported for this model", "top_k")
    if (body.get("thinking") or {}).get("type") not in (None, "disabled"):
        raise Untranslatable("'thinking' is not supported for this model", "thinking")
    messages: list[Json] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _text_of(system)})
    for i, msg in enumerate(body["messages"]):
        content = msg["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        parts, calls, results = _chat_content(blocks, f"messages.{i}.content")
        messages.extend(results)
        if msg["role"] == "assistant":
            text = "".join(p["text"] for p in parts if p["type"] == "text")
            turn: Json = {"role": "assistant", "content": text or None}
            if calls:
                turn["tool_calls"] = calls
            messages.append(turn)
        elif parts:
            messages.append({"role": "user", "content": parts})
    out: Json = {"model": body["model"], "messages": messages,
                 "max_completion_tokens": body["max_tokens"]}
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if (body.get("metadata") or {}).get("user_id"):
        out["user"] = body["metadata"]["user_id"]
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    if body.get("tools"):
        out["tools"] = [{"type": "function", "function": {
            "name": t["name"], "description": t.get("description", ""),
            "parameters": t.get("input_schema") or {"type": "object"}}} for t in body["tools"]]
    choice = body.get("tool_choice")
    if choice:
        kind = choice["type"]
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(kind) or \
            {"type": "function", "function": {"name": choice.get("name")}}
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    return out
