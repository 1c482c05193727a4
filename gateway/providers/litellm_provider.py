"""The one module that imports litellm: chat and embeddings for non-OpenAI providers.

It owns litellm's lazy import and the few switches it needs, the parameter
check made before credits are reserved, and the call itself (exactly one
upstream HTTP request: no retries, nothing dropped) with its timeouts. Its
replies become exact OpenAI JSON in `litellm_replies.py`, its exceptions
`gateway.errors` types in `litellm_errors.py`; neither imports litellm (the
error map is handed the module).

litellm 1.106 quirks handled here:
- its import takes ~3 s and fetches a cost map from GitHub, and its first
  Anthropic call fetches a beta-header table, unless the two LITELLM_LOCAL_*
  variables are set: `_import_litellm` sets them, then imports in a thread;
- a call with `tools` imports its proxy's MCP gateway, which needs the `mcp`
  package: the private per-call `_skip_mcp_handler=True` avoids it;
- a stream the provider cuts off still gets a made-up `finish_reason: "stop"`
  from litellm: the wrapper's `received_finish_reason` says whether the
  provider really sent one;
- it silently ignores `response_format: {"type": "json_object"}` for
  Anthropic: `check` refuses it (json_schema is translated);
- Anthropic needs `max_tokens`; when the client gives none, litellm sends the
  model's maximum output (64000 for claude-haiku-4-5, 4096 for unknown ids).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from gateway.errors import (
    GatewayError,
    UnsupportedParameter,
    UpstreamError,
    deadline_exceeded,
)
from gateway.providers import litellm_replies as replies
from gateway.providers.litellm_errors import translate_error
from gateway.types import Completion, ModelEntry, ProviderCall

# The OpenAI chat parameters litellm may translate; litellm's own extensions
# (extra_headers, thinking, cache_control, ...) are not part of our API.
OPENAI_CHAT_PARAMS = frozenset({
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "metadata", "modalities", "n",
    "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key",
    "reasoning_effort", "response_format", "safety_identifier", "seed", "service_tier",
    "stop", "store", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user",
    "verbosity", "web_search_options",
})
_ALWAYS = frozenset({"model", "messages", "stream", "stream_options"})
_EMBED_ALWAYS = frozenset({"model", "input"})
# Values that ask for nothing beyond the default: accepted, and not forwarded.
_NEUTRAL: dict[str, Any] = {"n": 1, "logprobs": False, "store": False, "metadata": {}}
# Values litellm accepts but silently ignores for a provider (checked in 1.106).
_DROPPED_VALUES: dict[tuple[str, str], Callable[[Any], bool]] = {
    ("anthropic", "response_format"): lambda v: isinstance(v, dict) and v.get("type") == "json_object",
}


def _import_litellm() -> Any:
    # litellm would fetch its model cost map (at import) and Anthropic's
    # beta-header table (at the first call) from GitHub; the gateway never
    # reaches the internet behind the operator's back. These switches are
    # litellm's documented ones and exist only as environment variables.
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ["LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS"] = "True"
    import litellm

    # Otherwise it prints "Give Feedback / Get Help" banners to stdout on every
    # provider error; there is no per-call switch (litellm's Router sets it too).
    litellm.suppress_debug_info = True
    return litellm


class LitellmProvider:
    """Provider for litellm routes (Anthropic first). `warm()` imports litellm."""

    def __init__(self) -> None:
        self._litellm: Any = None
        self._loading: asyncio.Future[Any] | None = None
        self._supported: dict[tuple[str, str, str], frozenset[str]] = {}

    async def warm(self) -> None:
        """Import litellm in a thread, once; every call awaits it first."""
        if self._litellm is None:
            if self._loading is None:
                self._loading = asyncio.ensure_future(asyncio.to_thread(_import_litellm))
            try:
                self._litellm = await asyncio.shield(self._loading)
            except Exception as exc:  # a broken install: no litellm route can serve
                raise UpstreamError("the litellm provider library failed to load") from exc

    async def check(self, model: ModelEntry, body: dict[str, Any]) -> None:
        """Refuse (UnsupportedParameter) any body key this route cannot honour.

        Async because it needs litellm's parameter tables: it awaits `warm()`.
        """
        await self.warm()
        chat = model.kind != "embedding"
        key = (model.provider, model.upstream_model, model.kind)
        if key not in self._supported:
            names = self._litellm.get_supported_openai_params(
                model=model.upstream_model, custom_llm_provider=model.provider,
                request_type="chat_completion" if chat else "embeddings",
            )
            self._supported[key] = frozenset(names or ()) & (
                OPENAI_CHAT_PARAMS if chat else {"encoding_format", "dimensions", "user"}
            )
        allowed = self._supported[key] | (_ALWAYS if chat else _EMBED_ALWAYS)
        for name, value in body.items():
            if value is None or (chat and _NEUTRAL.get(name, ...) == value):
                continue
            dropped = _DROPPED_VALUES.get((model.provider, name))
            if name in allowed and not (dropped and dropped(value)):
                continue
            raise UnsupportedParameter(
                f"the model '{model.id}' does not support the parameter '{name}'"
                + (" with this value" if name in allowed else ""), param=name,
            )

    async def complete(self, call: ProviderCall) -> Completion:
        litellm = await self._ready()
        try:
            async with asyncio.timeout(call.timeouts.total):
                reply = await litellm.acompletion(**_arguments(call, stream=False))
        except Exception as exc:
            raise translate_error(litellm, exc, call) from exc
        choices = [replies.choice(c) for c in reply.choices]
        usage = replies.usage(getattr(reply, "usage", None))
        body = {
            "id": reply.id, "object": "chat.completion", "created": reply.created,
            "model": reply.model, "choices": choices, "usage": usage,
        }
        return Completion(
            orjson.dumps(body), len(choices),
            usage["prompt_tokens"] if usage else None,
            usage["completion_tokens"] if usage else None,
        )

    async def stream(self, call: ProviderCall) -> AsyncIterator[bytes]:
        litellm = await self._ready()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + call.timeouts.total
        wrapper: Any = None
        usage: bytes | None = None
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    wrapper = await litellm.acompletion(**_arguments(call, stream=True))
                chunks = wrapper.__aiter__()
                while True:
                    try:
                        async with asyncio.timeout_at(
                            min(loop.time() + call.timeouts.idle, deadline)
                        ):
                            chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        if loop.time() >= deadline:  # the gateway's own deadline, not silence
                            raise deadline_exceeded(call.model.id, call.timeouts.total) from None
                        raise
                    payload = replies.chunk_payload(chunk)
                    if payload is not None:
                        finishes = any(c["finish_reason"] for c in payload["choices"])
                        if finishes and not wrapper.received_finish_reason:
                            break  # litellm made this finish_reason up: the provider stopped
                        yield orjson.dumps(payload)
                    if getattr(chunk, "usage", None) is not None:
                        usage = orjson.dumps({**replies.head(chunk), "choices": [],
                                              "usage": replies.usage(chunk.usage)})
            except GatewayError:
                raise
            except Exception as exc:
                raise translate_error(litellm, exc, call) from exc
            if not getattr(wrapper, "received_finish_reason", None):
                raise UpstreamError("the provider ended the stream before finishing the reply")
            if usage is not None:
                yield usage
        finally:
            if wrapper is not None:
                await wrapper.aclose()

    async def embed(self, call: ProviderCall) -> bytes:
        litellm = await self._ready()
        extra = {k: v for k, v in call.body.items() if k != "model" and v is not None}
        try:
            async with asyncio.timeout(call.timeouts.total):
                reply = await litellm.aembedding(**{**extra, **_common(call)})
        except Exception as exc:
            raise translate_error(litellm, exc, call) from exc
        data = [item if isinstance(item, dict) else item.model_dump() for item in reply.data]
        usage = getattr(reply, "usage", None)
        prompt = getattr(usage, "prompt_tokens", 0) or 0
        return orjson.dumps({
            "object": "list",
            "data": [{"object": "embedding", "index": d["index"], "embedding": d["embedding"]}
                     for d in data],
            "model": reply.model or call.model.upstream_model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        })

    async def close(self) -> None:
        if self._litellm is not None:
            await self._litellm.close_litellm_async_clients()

    async def _ready(self) -> Any:
        await self.warm()
        return self._litellm


def _common(call: ProviderCall) -> dict[str, Any]:
    if not call.api_key:
        # Without one, litellm would read the provider's key from the environment itself.
        raise UpstreamError(f"no provider key is configured for the model '{call.model.id}'")
    return {
        "model": f"{call.model.provider}/{call.model.upstream_model}",
        "api_key": call.api_key,
        "api_base": call.model.api_base,
        "timeout": call.timeouts.total,
        # Exactly one upstream request per call: 0 disables both retry layers.
        "num_retries": 0,
        "max_retries": 0,
        "drop_params": False,
    }


def _arguments(call: ProviderCall, *, stream: bool) -> dict[str, Any]:
    args = {
        k: v for k, v in call.body.items()
        if k not in _ALWAYS and v is not None and _NEUTRAL.get(k, ...) != v
    }
    args.update(_common(call), messages=call.body["messages"], stream=stream)
    # Private litellm switch: with `tools`, it would import its proxy's MCP
    # gateway, which needs the optional `mcp` package and routes nothing here.
    args["_skip_mcp_handler"] = True
    if stream:
        args["stream_options"] = {"include_usage": True}
    return args
