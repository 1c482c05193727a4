"""A provider serving one dialect on an upstream that speaks another, by translation.

`TranslatingProvider(inner, client, upstream)` takes calls in the client's
dialect, hands `inner` (which speaks `upstream`) the translated request, and
translates its reply or stream back, with the translators of
gateway/dialects/translate/ (one place per pair). Usage is the provider's own
(the inner Completion's counts; in streams its usage events, carried through
by the stream translators), never re-counted. What the other dialect cannot
express is refused in `check`, before anything is reserved (400
unsupported_parameter), never dropped: each direction also has the allowlist
of request fields its translator carries.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import orjson

from gateway.dialects.messages.stream import frame
from gateway.dialects.named_events import data_of
from gateway.dialects.translate.chat_messages.reply import (
    chat_reply_to_messages,
    messages_reply_to_chat,
)
from gateway.dialects.translate.chat_messages.request import (
    chat_request_to_messages,
    messages_request_to_chat,
)
from gateway.dialects.translate.chat_messages.stream import (
    ChatToMessagesStream,
    MessagesToChatStream,
    StreamFailed,
)
from gateway.dialects.translate.common import Untranslatable
from gateway.dialects.translate.responses_chat.request import responses_request_to_chat
from gateway.errors import GatewayError, InvalidRequest, UnsupportedParameter, UpstreamError
from gateway.providers.base import Provider
from gateway.providers.responses_via_chat import (
    RESPONSES_TO_CHAT,
    chat_side,
    response_body,
    response_events,
)
from gateway.providers.translated_stream import TranslatedStream, from_chat
from gateway.types import CHAT, MESSAGES, RESPONSES, Completion, ModelEntry, ProviderCall

Json = dict[str, Any]
DEFAULT_MAX_TOKENS = 4096  # Anthropic needs max_tokens; the entry's cap when it has one

# The request fields each translator carries (or refuses by value); any other is refused.
CHAT_TO_MESSAGES = frozenset({
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "stop", "user", "tools", "tool_choice", "parallel_tool_calls",
    "n", "response_format", "logprobs", "top_logprobs", "logit_bias", "presence_penalty",
    "frequency_penalty", "seed", "audio", "modalities", "prediction", "reasoning_effort",
    "web_search_options", "functions", "function_call", "store",
})
_CHAT_NEUTRAL: dict[str, Any] = {"store": False, "metadata": {}}
MESSAGES_TO_CHAT = frozenset({
    "model", "messages", "max_tokens", "system", "stream", "temperature", "top_p", "top_k",
    "stop_sequences", "metadata", "tools", "tool_choice", "thinking",
})
_MESSAGES_NEUTRAL: dict[str, Any] = {"service_tier": "auto"}
# What the upstream's own checks call a field, as the client named it: a refusal names
# the field the client sent, not the translation's (Responses `text.format`, not chat's
# `response_format`).
_CLIENT_NAMES: dict[str, dict[str, str]] = {
    RESPONSES: {"response_format": "text.format", "reasoning_effort": "reasoning.effort",
                "max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens",
                "messages": "input"},
    MESSAGES: {"max_completion_tokens": "max_tokens", "stop": "stop_sequences",
               "user": "metadata.user_id"},
}
_CLIENT_TOOL_TYPES = (None, "custom")


def _refuse_unknown(body: Json, allowed: frozenset[str], neutral: dict[str, Any],
                    model: ModelEntry) -> None:
    for name, value in body.items():
        if value is None or name in allowed or neutral.get(name, ...) == value:
            continue
        raise UnsupportedParameter(
            f"the model '{model.id}' does not support the parameter '{name}' "
            "(its upstream speaks another API)", param=name)


def _translated(build: Callable[[], Json]) -> Json:
    try:
        return build()
    except Untranslatable as exc:
        raise UnsupportedParameter(str(exc), param=exc.param) from None
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        raise InvalidRequest(f"The request could not be translated for this model: a field "
                             f"is missing or has the wrong type ({type(exc).__name__}).") from None


def _max_tokens(model: ModelEntry, chat: Json) -> Json:
    """OpenAI-compatible servers (and litellm's providers) know the older `max_tokens`."""
    if (model.provider != "openai" or model.api_base) and "max_completion_tokens" in chat:
        chat["max_tokens"] = chat.pop("max_completion_tokens")
    return chat


class TranslatingProvider:
    def __init__(self, inner: Provider, client: str, upstream: str, *,
                 clock: Callable[[], float] = time.time) -> None:
        if (client, upstream) not in ((CHAT, MESSAGES), (MESSAGES, CHAT), (RESPONSES, CHAT)):
            raise ValueError(f"no translation from {client} to {upstream}")
        self.inner, self.client, self.upstream = inner, client, upstream
        self._clock = clock

    # --- requests ------------------------------------------------------------------

    def request(self, model: ModelEntry, body: Json) -> Json:
        """The body in the upstream's dialect (400 for what it cannot express)."""
        if self.client == RESPONSES:
            _refuse_unknown(body, RESPONSES_TO_CHAT, {}, model)
            side = chat_side(body)
            chat = _translated(lambda: responses_request_to_chat(side))
            return _max_tokens(model, chat)
        if self.client == CHAT:
            _refuse_unknown(body, CHAT_TO_MESSAGES, _CHAT_NEUTRAL, model)
            cap = model.max_output_tokens or DEFAULT_MAX_TOKENS
            return _translated(lambda: chat_request_to_messages(body, default_max_tokens=cap))
        _refuse_unknown(body, MESSAGES_TO_CHAT, _MESSAGES_NEUTRAL, model)
        for i, tool in enumerate(body.get("tools") or []):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind not in _CLIENT_TOOL_TYPES:
                raise UnsupportedParameter(
                    f"the server tool `{str(kind)[:64]}` is not available on '{model.id}'",
                    param=f"tools.{i}.type")
        return _max_tokens(model, _translated(lambda: messages_request_to_chat(body)))

    async def check(self, model: ModelEntry, body: Json) -> None:
        translated = self.request(model, body)  # its refusals use the client's names
        try:
            await self.inner.check(model, translated)
        except GatewayError as exc:
            name = _CLIENT_NAMES.get(self.client, {}).get(exc.param or "")
            if name is not None:
                exc.message = exc.message.replace(f"'{exc.param}'", f"'{name}'")
                exc.param = name
            raise

    def _call(self, call: ProviderCall) -> ProviderCall:
        return replace(call, body=self.request(call.model, call.body), dialect=self.upstream)

    # --- replies -------------------------------------------------------------------

    async def complete(self, call: ProviderCall) -> Completion:
        done = await self.inner.complete(self._call(call))
        if self.client == RESPONSES:
            return Completion(response_body(done.body, call.body), 1, done.prompt_tokens,
                              done.completion_tokens)
        try:
            reply = orjson.loads(done.body)
            out = messages_reply_to_chat(reply, created=int(self._clock())) \
                if self.client == CHAT else chat_reply_to_messages(reply)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError,
                ValueError) as exc:
            raise UpstreamError("The provider sent a reply that could not be translated.") from exc
        return Completion(orjson.dumps(out), 1, done.prompt_tokens, done.completion_tokens)

    def stream(self, call: ProviderCall) -> AsyncIterator[bytes]:
        inner_call = self._call(call)  # refusals raise here, before the first read
        if self.client == RESPONSES:
            return response_events(self.inner.stream(inner_call), call.body)
        if self.client == CHAT:
            return self._to_chat(inner_call)
        return self._to_messages(inner_call, call.model.id)

    def _to_chat(self, call: ProviderCall) -> AsyncIterator[bytes]:
        """Messages events -> chat chunks (the usage chunk always: the meter reads it)."""
        translator = MessagesToChatStream(created=int(self._clock()), include_usage=True)

        def feed(event: bytes) -> list[bytes]:
            data = data_of(event)
            if not isinstance(data, dict):
                return []
            try:
                chunks = translator.feed(data)
            except StreamFailed as exc:
                raise UpstreamError(
                    f"The provider reported an error mid-stream: {exc}"[:1000]) from None
            except (KeyError, TypeError, AttributeError) as exc:
                raise UpstreamError("The provider sent an event that could not be "
                                    "translated.") from exc
            return [orjson.dumps(chunk) for chunk in chunks]

        return TranslatedStream(self.inner.stream(call), feed)

    def _to_messages(self, call: ProviderCall, model: str) -> AsyncIterator[bytes]:
        """Chat chunks -> Messages events; the usage chunk's counts go in `message_delta`."""
        translator = ChatToMessagesStream(message_id="msg_" + os.urandom(12).hex(), model=model)
        return from_chat(self.inner.stream(call), translator, frame)

    async def embed(self, call: ProviderCall) -> bytes:
        return await self.inner.embed(call)

    async def close(self) -> None:
        return None  # the inner provider is the registry's to close
