"""Streams between Anthropic Messages events and chat completion chunks.

Each translator is fed the provider's events (parsed JSON) one by one and returns what the
client's dialect sends for it. Usage is what the provider reported in its own events
(Messages: `message_start` and `message_delta`; chat: the usage chunk), kept in `usage`
for the meter; nothing is re-counted from the text.
"""

from __future__ import annotations

from gateway.dialects.translate.chat_messages.reply import (
    chat_usage,
    finish_reason,
    messages_usage,
    stop_reason,
)
from gateway.dialects.translate.common import Json


class StreamFailed(Exception):
    """The provider reported an error inside the stream (Messages `event: error`)."""

    def __init__(self, error: Json) -> None:
        super().__init__(str(error.get("message", "")))
        self.error = error


class MessagesToChatStream:
    """Messages events -> chat chunks (an OpenAI client served by an Anthropic upstream)."""

    def __init__(self, *, created: int, include_usage: bool) -> None:
        self.created, self.include_usage = created, include_usage
        self.usage: Json = {}  # Anthropic usage, merged as the events report it
        self._id, self._model = "", ""
        self._tools: dict[int, int] = {}  # content block index -> tool call index

    def _chunk(self, delta: Json, finish: str | None = None) -> Json:
        chunk: Json = {"id": self._id, "object": "chat.completion.chunk",
                       "created": self.created, "model": self._model,
                       "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                    "finish_reason": finish}]}
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def feed(self, event: Json) -> list[Json]:
        kind = event.get("type")
        if kind == "message_start":
            message = event["message"]
            self._id, self._model = f"chatcmpl-{message['id']}", message["model"]
            self.usage.update(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": "", "refusal": None})]
        if kind == "content_block_start":
            block = event["content_block"]
            if block["type"] != "tool_use":
                return []
            index = self._tools[event["index"]] = len(self._tools)
            return [self._chunk({"tool_calls": [{"index": index, "id": block["id"],
                                                 "type": "function", "function": {
                                                     "name": block["name"], "arguments": ""}}]})]
        if kind == "content_block_delta":
            delta = event["delta"]
            if delta["type"] == "text_delta":
                return [self._chunk({"content": delta["text"]})]
            if delta["type"] == "thinking_delta":
                return [self._chunk({"reasoning_content": delta["thinking"]})]
            if delta["type"] == "input_json_delta" and delta["partial_json"]:
                call = {"index": self._tools[event["index"]],
                        "function": {"arguments": delta["partial_json"]}}
                return [self._chunk({"tool_calls": [call]})]
            return []
        if kind == "message_delta":
            self.usage.update({k: v for k, v in (event.get("usage") or {}).items()
                               if v is not None})
            reason = finish_reason(event["delta"].get("stop_reason")) or "stop"
            return [self._chunk({}, reason)]
        if kind == "message_stop" and self.include_usage:
            return [{"id": self._id, "object": "chat.completion.chunk", "created": self.created,
                     "model": self._model, "choices": [], "usage": chat_usage(self.usage)}]
        if kind == "error":
            raise StreamFailed(event["error"])
        return []  # ping, content_block_stop, message_stop without usage


class ChatToMessagesStream:
    """Chat chunks -> Messages events, as (event name, data) pairs (an Anthropic client
    served by an OpenAI-style upstream; the request asked for the usage chunk). The input
    count is known only at the end: `message_start` says 0 and `message_delta` carries the
    provider's counts, both input and output (its usage allows `input_tokens`)."""

    def __init__(self, *, message_id: str, model: str) -> None:
        self.message_id, self.model = message_id, model
        self.usage: Json | None = None  # the chat usage chunk's usage, when it came
        self._started = False
        self._index = -1
        self._open: str | None = None  # "text" or a tool call's chat index
        self._stop: str | None = None
        self._done = False

    def _close(self) -> list[tuple[str, Json]]:
        if self._open is None:
            return []
        self._open = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def _start(self, key: str, block: Json) -> list[tuple[str, Json]]:
        out = self._close()
        self._index += 1
        self._open = key
        out.append(("content_block_start", {"type": "content_block_start", "index": self._index,
                                            "content_block": block}))
        return out

    def feed(self, chunk: Json) -> list[tuple[str, Json]]:
        out: list[tuple[str, Json]] = []
        if not self._started:
            self._started = True
            out.append(("message_start", {"type": "message_start", "message": {
                "id": self.message_id, "type": "message", "role": "assistant",
                "model": self.model, "content": [], "stop_reason": None,
                "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}}))
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("refusal")
            if text:
                if self._open != "text":
                    out += self._start("text", {"type": "text", "text": ""})
                out.append(("content_block_delta", {"type": "content_block_delta",
                                                    "index": self._index, "delta": {
                                                        "type": "text_delta", "text": text}}))
            for call in delta.get("tool_calls") or []:
                key = f"tool{call.get('index', 0)}"
                fn = call.get("function") or {}
                if call.get("id") and self._open != key:
                    out += self._start(key, {"type": "tool_use", "id": call["id"],
                                             "name": fn.get("name", ""), "input": {}})
                if fn.get("arguments"):
                    out.append(("content_block_delta", {
                        "type": "content_block_delta", "index": self._index,
                        "delta": {"type": "input_json_delta", "partial_json": fn["arguments"]}}))
            if choice.get("finish_reason"):
                self._stop = stop_reason(choice["finish_reason"])
                out += self._close()
        if chunk.get("usage"):
            self.usage = chunk["usage"]
            out += self._end()
        return out

    def _end(self) -> list[tuple[str, Json]]:
        if self._done:
            return []
        self._done = True
        usage = messages_usage(self.usage or {})
        return [*self._close(),
                ("message_delta", {"type": "message_delta", "delta": {
                    "stop_reason": self._stop or "end_turn", "stop_sequence": None},
                    "usage": {"input_tokens": usage["input_tokens"],
                              "output_tokens": usage["output_tokens"],
                              "cache_read_input_tokens": usage["cache_read_input_tokens"]}}),
                ("message_stop", {"type": "message_stop"})]

    def finish(self) -> list[tuple[str, Json]]:
        """At the upstream's `[DONE]`: the closing events if the usage chunk did not come
        (`usage` stays None, so the flow knows the provider reported none)."""
        return self._end()
