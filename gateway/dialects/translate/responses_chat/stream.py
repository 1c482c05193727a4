"""Chat chunks -> the typed Responses events (a Responses client served by a chat upstream).

Fed the upstream's chunks one by one (parsed JSON), `feed` returns the Responses events
that each one means, numbered by `sequence_number`:

    response.created, response.in_progress            at the first chunk
    response.output_item.added (+ content_part.added)  when a text, refusal, reasoning or
                                                       tool call starts
    *.delta                                            for each piece of it
    *.done, content_part.done, output_item.done        at `finish_reason`
    response.completed | response.incomplete           at the usage chunk (or `finish`)

Items stay open until the choice finishes (a chat upstream may send a delta to any of
them); they are then closed in output order. `finish_reason` "length" / "content_filter"
end the Response `incomplete`, as the JSON reply does (reply.py). Usage is the upstream's
own usage chunk, renamed (`usage` keeps the chat shape for the meter); nothing is counted
from the text. A provider error mid-stream becomes `response.failed` (`fail`).
"""

from __future__ import annotations

from typing import Any

from gateway.dialects.responses.failed import failed_response
from gateway.dialects.translate.common import Json
from gateway.dialects.translate.responses_chat.reply import (
    INCOMPLETE,
    response_shell,
    responses_usage,
)

Event = tuple[str, Json]  # (event name, data); the name is the data's `type`

# A chat delta field -> (item type, content part type, the delta/done event prefix).
_PARTS = {
    "content": ("message", "output_text", "response.output_text"),
    "refusal": ("message", "refusal", "response.refusal"),
    "reasoning_content": ("reasoning", "reasoning_text", "response.reasoning_text"),
    "reasoning": ("reasoning", "reasoning_text", "response.reasoning_text"),
}


class _Item:
    """One output item being streamed: a message (text or refusal part), a reasoning
    item, or a function call."""

    def __init__(self, kind: str, item_id: str, index: int) -> None:
        self.kind, self.id, self.index = kind, item_id, index
        self.part = ""  # the content part type (message, reasoning)
        self.text: list[str] = []
        self.call_id = self.name = ""

    def value(self) -> str:
        return "".join(self.text)

    def content(self) -> list[Json]:
        if self.part == "output_text":
            return [{"type": "output_text", "text": self.value(), "annotations": [],
                     "logprobs": []}]
        if self.part == "refusal":
            return [{"type": "refusal", "refusal": self.value()}]
        return [{"type": "reasoning_text", "text": self.value()}]

    def snapshot(self, status: str) -> Json:
        """The item as `output_item.added` (status in_progress, empty) or `.done` shows it."""
        opened = status == "in_progress"
        if self.kind == "function_call":
            return {"type": "function_call", "id": self.id, "call_id": self.call_id,
                    "name": self.name, "arguments": "" if opened else self.value(),
                    "status": status}
        if self.kind == "reasoning":
            return {"type": "reasoning", "id": self.id, "summary": [],
                    "content": [] if opened else self.content(), "status": status}
        return {"type": "message", "id": self.id, "status": status, "role": "assistant",
                "content": [] if opened else self.content()}


class ChatToResponsesStream:
    """Chat chunks -> Responses events, for one stream. `request` is the Responses body
    (its echoed fields fill the Response objects); the upstream was asked for usage."""

    def __init__(self, request: Json, *, response_id: str) -> None:
        self.request, self.response_id = request, response_id
        self.usage: Json | None = None  # the chat usage chunk's usage, when it came
        self._sequence = 0
        self._shell: Json | None = None
        self._items: list[_Item] = []
        self._open: dict[str, _Item] = {}  # "message", "reasoning", "tool<index>" -> item
        self._reason: str | None = None  # incomplete_details.reason, from finish_reason
        self._done = False

    # --- what the stream looks like so far ---------------------------------------

    def _event(self, kind: str, **fields: Any) -> Event:
        data = {"type": kind, **fields, "sequence_number": self._sequence}
        self._sequence += 1
        return kind, data

    def _response(self, status: str) -> Json:
        assert self._shell is not None
        return {**self._shell, "status": status}

    def _start(self, chunk: Json) -> list[Event]:
        self._shell = response_shell(self.request, response_id=self.response_id,
                                     created=int(chunk.get("created") or 0),
                                     model=str(chunk.get("model") or self.request.get("model")))
        return [self._event("response.created", response=self._response("in_progress")),
                self._event("response.in_progress", response=self._response("in_progress"))]

    def _item(self, key: str, kind: str, item_id: str, *, call_id: str = "",
              name: str = "") -> tuple[_Item, list[Event]]:
        item = self._open.get(key)
        if item is not None:
            return item, []
        item = _Item(kind, item_id, len(self._items))
        item.call_id, item.name = call_id, name
        self._items.append(item)
        self._open[key] = item
        return item, [self._event("response.output_item.added", output_index=item.index,
                                  item=item.snapshot("in_progress"))]

    # --- feeding -----------------------------------------------------------------

    def feed(self, chunk: Json) -> list[Event]:
        out = self._start(chunk) if self._shell is None else []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            for field, (kind, part, prefix) in _PARTS.items():
                text = delta.get(field)
                if isinstance(text, str) and text:
                    out += self._text(kind, part, prefix, text, chunk)
            for call in delta.get("tool_calls") or []:
                out += self._tool_call(call)
            if choice.get("finish_reason"):
                self._reason = INCOMPLETE.get(choice["finish_reason"])
                out += self._close_items()
        if chunk.get("usage"):
            self.usage = chunk["usage"]
            out += self._end()
        return out

    def _text(self, kind: str, part: str, prefix: str, text: str, chunk: Json) -> list[Event]:
        base = "msg" if kind == "message" else "rs"
        item, out = self._item(kind, kind, f"{base}_{chunk.get('id', self.response_id)}")
        if item.part and item.part != part:  # a refusal after text (or back): a new item
            out += self._close(item)
            item, more = self._item(kind, kind, f"{base}_{len(self._items)}_{chunk.get('id')}")
            out += more
        if not item.part:
            item.part = part  # the part, still empty, as `content_part.added` shows it
            out.append(self._event("response.content_part.added", item_id=item.id,
                                   output_index=item.index, content_index=0,
                                   part=item.content()[0]))
        item.text.append(text)
        extra: Json = {"logprobs": []} if part == "output_text" else {}
        out.append(self._event(f"{prefix}.delta", item_id=item.id, output_index=item.index,
                               content_index=0, delta=text, **extra))
        return out

    def _tool_call(self, call: Json) -> list[Event]:
        fn = call.get("function") or {}
        key = f"tool{call.get('index', 0)}"
        call_id = str(call.get("id") or f"call_{self.response_id}_{key}")
        item, out = self._item(key, "function_call", f"fc_{call_id}", call_id=call_id,
                               name=str(fn.get("name") or ""))
        arguments = fn.get("arguments")
        if isinstance(arguments, str) and arguments:
            item.text.append(arguments)
            out.append(self._event("response.function_call_arguments.delta", item_id=item.id,
                                   output_index=item.index, delta=arguments))
        return out

    # --- closing -----------------------------------------------------------------

    def _status(self) -> str:
        """A finish cut short (length, content filter) leaves every item incomplete: a tool
        call's arguments may be cut mid-JSON."""
        return "incomplete" if self._reason else "completed"

    def _close(self, item: _Item) -> list[Event]:
        self._open = {k: v for k, v in self._open.items() if v is not item}
        out: list[Event] = []
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "function_call":
            out.append(self._event("response.function_call_arguments.done", **where,
                                   name=item.name, arguments=item.value()))
        else:
            prefix = _PARTS["refusal" if item.part == "refusal" else
                            "content" if item.kind == "message" else "reasoning"][2]
            done: Json = {"refusal": item.value()} if item.part == "refusal" else \
                {"text": item.value()}
            if item.part == "output_text":
                done["logprobs"] = []
            out.append(self._event(f"{prefix}.done", **where, content_index=0, **done))
            out.append(self._event("response.content_part.done", **where, content_index=0,
                                   part=item.content()[0]))
        out.append(self._event("response.output_item.done", output_index=item.index,
                               item=item.snapshot(self._status())))
        return out

    def _close_items(self) -> list[Event]:
        out: list[Event] = []
        for item in sorted(self._open.values(), key=lambda i: i.index):
            out += self._close(item)
        return out

    def _end(self) -> list[Event]:
        if self._done or self._shell is None:
            return []
        self._done = True
        out = self._close_items()  # an upstream that sent usage without a finish_reason
        status = self._status()
        response = self._response(status)
        response["incomplete_details"] = {"reason": self._reason} if self._reason else None
        response["output"] = [item.snapshot(status) for item in self._items]
        response["usage"] = responses_usage(self.usage) if self.usage else None
        out.append(self._event(f"response.{status}", response=response))
        return out

    def finish(self) -> list[Event]:
        """At the upstream's `[DONE]`: the closing events if the usage chunk did not come
        (`usage` stays None, so the flow knows the provider reported none)."""
        return self._end()

    def fail(self, code: str, message: str, *, status: int = 502) -> list[Event]:
        """A provider error mid-stream: `response.failed` ends the stream (nothing after)."""
        if self._done:
            return []
        self._done = True
        shell = self._shell or response_shell(self.request, response_id=self.response_id,
                                              created=0, model=str(self.request.get("model")))
        response = failed_response(shell, code=code, message=message, status=status)
        response["output"] = [item.snapshot("incomplete") for item in self._items]
        return [self._event("response.failed", response=response)]
