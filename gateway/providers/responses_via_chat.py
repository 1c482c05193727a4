"""A Responses call served by a chat upstream: what `TranslatingProvider` does for the pair
(Responses client, chat upstream), with the translators of
gateway/dialects/translate/responses_chat/.

- The request: every top-level field must be one the translator carries (or refuses by
  value); any other is refused (400 unsupported_parameter), never dropped. Values that ask
  for nothing chat lacks are taken out first (`truncation: "disabled"`, an empty
  `include`, `background: false`, `store: false` -- chat's own default): they would
  otherwise be refused for nothing. `stream_options` (only `include_obfuscation`, which
  pads deltas with noise against length side channels) has no meaning without a network
  hop to OpenAI and is not sent on.
- The Response gets an id of the gateway's making (`resp_` + 48 hex): the ledger records
  it, and only that workspace may name it as `previous_response_id` -- which translated
  routes refuse anyway (chat keeps no state).
- The stream: chat chunks -> typed Responses events; usage is the upstream's usage chunk,
  renamed. An upstream failure mid-stream raises (the edge ends the stream with
  `response.failed`, uncharged).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.dialects.responses.stream import frame
from gateway.dialects.translate.responses_chat.reply import chat_reply_to_response
from gateway.dialects.translate.responses_chat.stream import ChatToResponsesStream
from gateway.errors import UnsupportedParameter, UpstreamError
from gateway.providers.translated_stream import from_chat

Json = dict[str, Any]

# The Responses fields the translator carries, or refuses by value (request.py `_REFUSED`).
RESPONSES_TO_CHAT = frozenset({
    "model", "input", "instructions", "stream", "stream_options", "temperature", "top_p",
    "parallel_tool_calls", "user", "service_tier", "metadata", "safety_identifier",
    "prompt_cache_key", "max_output_tokens", "reasoning", "store", "tools", "tool_choice",
    "text", "previous_response_id", "conversation", "prompt", "background", "include",
    "max_tool_calls", "truncation", "top_logprobs",
})
# Values meaning what chat does anyway: removed before translating.
_NEUTRAL: dict[str, Any] = {"truncation": "disabled", "include": [], "background": False,
                            "store": False, "stream_options": ...}
_TOOL_CHOICES = ("function",)


def new_response_id() -> str:
    return "resp_" + os.urandom(24).hex()


def chat_side(body: Json) -> Json:
    """The body without the neutral values; refusals of what chat cannot carry that the
    translator would otherwise meet as a KeyError (a forced hosted tool, text verbosity)."""
    out = {k: v for k, v in body.items()
           if not (k in _NEUTRAL and (_NEUTRAL[k] is ... or _NEUTRAL[k] == v))}
    choice = out.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") not in _TOOL_CHOICES:
        raise UnsupportedParameter(
            f"tool_choice of type '{str(choice.get('type'))[:64]}' is not supported for this "
            "model", param="tool_choice.type")
    text = out.get("text")
    if isinstance(text, dict) and text.get("verbosity") is not None:
        raise UnsupportedParameter("'text.verbosity' is not supported for this model",
                                   param="text.verbosity")
    return out


def response_body(chat_reply: bytes, request: Json) -> bytes:
    """The upstream's chat reply rendered as the Response the client receives."""
    try:
        reply = orjson.loads(chat_reply)
        out = chat_reply_to_response(reply, request, response_id=new_response_id())
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError,
            IndexError) as exc:
        raise UpstreamError("The provider sent a reply that could not be translated.") from exc
    return orjson.dumps(out)


def response_events(chunks: AsyncIterator[bytes], request: Json) -> AsyncIterator[bytes]:
    """Chat chunk payloads -> Responses event payloads (`event: <type>\ndata: <json>`)."""
    translator = ChatToResponsesStream(request, response_id=new_response_id())
    return from_chat(chunks, translator,
                     lambda name, data: frame(name.encode(), orjson.dumps(data)))
