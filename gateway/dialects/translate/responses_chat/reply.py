"""A chat reply rendered as a Response (the Responses dialect's JSON reply).

`finish_reason` "length" ends the Response `incomplete` (reason `max_output_tokens`) and
"content_filter" `incomplete` (reason `content_filter`), as the real API ends such replies;
both are charged like a clean finish (SPEC). Usage is the provider's own, renamed.
"""

from __future__ import annotations

from gateway.dialects.translate.common import Json

INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def responses_usage(usage: Json) -> Json:
    details = usage.get("completion_tokens_details") or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(
        usage.get("completion_tokens") or 0)
    return {"input_tokens": prompt, "output_tokens": completion,
            "total_tokens": int(usage.get("total_tokens") or prompt + completion),
            "input_tokens_details": {"cached_tokens": int(cached), "cache_write_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": int(details.get("reasoning_tokens")
                                                              or 0)}}


def output_items(message: Json, *, item_id: str, status: str) -> list[Json]:
    """A chat assistant message as Responses output items (a message, then function calls);
    `status` is every item's: an incomplete reply may have cut a call's arguments short."""
    items: list[Json] = []
    parts: list[Json] = []
    if message.get("content"):
        parts.append({"type": "output_text", "text": message["content"], "annotations": [],
                      "logprobs": []})
    if message.get("refusal"):
        parts.append({"type": "refusal", "refusal": message["refusal"]})
    if parts:
        items.append({"type": "message", "id": item_id, "status": status, "role": "assistant",
                      "content": parts})
    for call in message.get("tool_calls") or []:
        items.append({"type": "function_call", "id": f"fc_{call['id']}", "call_id": call["id"],
                      "name": call["function"]["name"],
                      "arguments": call["function"]["arguments"], "status": status})
    return items


def response_shell(request: Json, *, response_id: str, created: int, model: str) -> Json:
    """The fields of a Response that echo the request (shared by the JSON reply and the
    stream's `response.created` ... `response.completed`)."""
    return {
        "id": response_id, "object": "response", "created_at": created, "model": model,
        "status": "in_progress", "background": False, "error": None,
        "incomplete_details": None, "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"), "output": [],
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": (request.get("reasoning") or {}).get("effort"),
                      "summary": None},
        "store": request.get("store", False), "temperature": request.get("temperature"),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [], "top_p": request.get("top_p"),
        "truncation": "disabled", "usage": None, "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }


def chat_reply_to_response(reply: Json, request: Json, *, response_id: str) -> Json:
    choice = reply["choices"][0]
    reason = INCOMPLETE.get(choice.get("finish_reason") or "")
    status = "incomplete" if reason else "completed"
    response = response_shell(request, response_id=response_id, created=reply["created"],
                              model=reply["model"])
    response.update({
        "status": status,
        "incomplete_details": {"reason": reason} if reason else None,
        "output": output_items(choice.get("message") or {}, item_id=f"msg_{reply['id']}",
                               status=status),
        "usage": responses_usage(reply.get("usage") or {}),
    })
    return response
