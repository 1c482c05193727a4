"""A Responses request as a chat request, for a model whose upstream speaks only chat.

What chat cannot carry is refused (`Untranslatable`), never dropped: hosted tools,
`previous_response_id` / `conversation` / `prompt` (server-side state), `background`,
`include`, reasoning summaries. A stream asks the upstream for its usage chunk: the charge
comes from it.
"""

from __future__ import annotations

from typing import Any

from gateway.dialects.translate.common import Json, Untranslatable

_REFUSED = ("previous_response_id", "conversation", "prompt", "background", "include",
            "max_tool_calls", "truncation", "top_logprobs")


def _parts(content: Any, where: str) -> str | list[Json]:
    if isinstance(content, str):
        return content
    out: list[Json] = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            out.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and part.get("image_url"):
            out.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        elif kind == "refusal":
            out.append({"type": "text", "text": part["refusal"]})
        else:
            raise Untranslatable(f"input part '{kind}' is not supported for this model",
                                 f"{where}.content[{j}]")
    return out


def _messages(body: Json) -> list[Json]:
    messages: list[Json] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    raw = body.get("input", [])
    items = [{"role": "user", "content": raw}] if isinstance(raw, str) else raw
    for i, item in enumerate(items):
        kind, where = item.get("type", "message"), f"input[{i}]"
        if kind == "message":
            content = _parts(item["content"], where)
            if item["role"] == "assistant" and not isinstance(content, str):
                content = "".join(p["text"] for p in content)
            messages.append({"role": item["role"], "content": content})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item["output"]
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": output if isinstance(output, str)
                             else _parts(output, where)})
        elif kind != "reasoning":  # the model's own earlier reasoning: chat has no slot
            raise Untranslatable(f"input item '{kind}' is not supported for this model", where)
    return messages


def responses_request_to_chat(body: Json) -> Json:
    for name in _REFUSED:
        if body.get(name) is not None and body[name] is not False:
            raise Untranslatable(f"'{name}' is not supported for this model", name)
    if (body.get("reasoning") or {}).get("summary"):
        raise Untranslatable("'reasoning.summary' is not supported for this model",
                             "reasoning.summary")
    out: Json = {"model": body["model"], "messages": _messages(body)}
    for name in ("temperature", "top_p", "parallel_tool_calls", "user", "service_tier",
                 "metadata", "safety_identifier", "prompt_cache_key"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("max_output_tokens") is not None:
        out["max_completion_tokens"] = body["max_output_tokens"]
    effort = (body.get("reasoning") or {}).get("effort")
    if effort is not None:
        out["reasoning_effort"] = effort
    if body.get("store") is not None:
        out["store"] = body["store"]
    tools: list[Json] = []
    for i, tool in enumerate(body.get("tools") or []):
        if tool.get("type") != "function":
            raise Untranslatable(f"tool type '{tool.get('type')}' is not supported for this model",
                                 f"tools[{i}].type")
        fn = {"name": tool["name"], "parameters": tool.get("parameters") or {"type": "object"}}
        for key in ("description", "strict"):
            if tool.get(key) is not None:
                fn[key] = tool[key]
        tools.append({"type": "function", "function": fn})
    if tools:
        out["tools"] = tools
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif choice is not None:
        out["tool_choice"] = choice
    fmt = (body.get("text") or {}).get("format")
    if fmt and fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif fmt and fmt.get("type") == "json_object":
        out["response_format"] = {"type": "json_object"}
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out
