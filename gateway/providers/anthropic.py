"""The native Anthropic relay: Messages requests to `{api_base}/v1/messages` as bytes.

The Messages twin of relay.py (same upstream client, same error mapping):
the body goes out as the flow built it (`x-api-key`, `anthropic-version`, and the
`anthropic-beta` values the flow allowed), the reply comes back unchanged. Only
what metering needs is read: the usage of a JSON reply, and for streams nothing
here (the Messages stream dialect reads usage from `message_start` and
`message_delta`, the provider's own counts; the reply is never rebuilt). A stream
yields each event as `event: <type>\\ndata: <json>` and ends with the provider's
`message_stop`; an in-band `event: error` or a cut is an UpstreamError.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import orjson

from gateway.dialects.translate.chat_messages.reply import chat_usage
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    UpstreamError,
    UpstreamTimeout,
    deadline_exceeded,
)
from gateway.providers.relay_common import (
    SsePayloads,
    reason,
    scrub,
    split_named_events,
    upstream_status_error,
)
from gateway.providers.upstream import DeadlineReached, Response, UpstreamClient
from gateway.types import Completion, ModelEntry, ProviderCall

ANTHROPIC_BASE = "https://api.anthropic.com"
DEFAULT_VERSION = "2023-06-01"  # the one version of the Messages API (what clients send)
NO_COUNT_ROUTE = (404, 405)  # an upstream without /v1/messages/count_tokens
_STOP = b"event: message_stop"
_ERROR = b"event: error"


def messages_url(model: ModelEntry, path: str = "") -> str:
    """`{api_base}/v1/messages` (an api_base may already end in /v1 or /v1/messages)."""
    base = model.api_base or ANTHROPIC_BASE
    if base.endswith("/v1/messages"):
        return base + path
    return base + ("/messages" if base.endswith("/v1") else "/v1/messages") + path


class AnthropicProvider:
    def __init__(self, *, connections: int = 1024) -> None:
        self._upstream = UpstreamClient(connections=connections)

    async def close(self) -> None:
        await self._upstream.close()

    async def check(self, model: ModelEntry, body: dict[str, Any]) -> None:
        """Nothing to refuse here: the body goes to Anthropic as sent, and Anthropic answers
        for its own parameters (a refusal comes back as its 400, uncharged)."""

    @staticmethod
    def _headers(call: ProviderCall, stream: bool = False) -> list[tuple[str, str]]:
        headers = [("Content-Type", "application/json"), ("Accept-Encoding", "identity"),
                   ("anthropic-version", DEFAULT_VERSION)]
        if call.api_key:
            headers.append(("x-api-key", call.api_key))
        if call.betas:
            headers.append(("anthropic-beta", ",".join(call.betas)))
        if stream:
            headers.append(("Accept", "text/event-stream"))
        return headers

    async def _send(self, call: ProviderCall, url: str, body: dict[str, Any]
                    ) -> tuple[int, bytes]:
        try:
            resp = await self._upstream.post(url, orjson.dumps(body), self._headers(call),
                                             call.timeouts)
            try:
                raw = await resp.read()
            finally:
                resp.release()
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"The provider did not answer in time for `{call.model.id}`.") from exc
        except OSError as exc:
            raise UpstreamError(
                f"Could not reach the provider for `{call.model.id}`: {reason(exc)}") from exc
        return resp.status, raw

    async def _post(self, call: ProviderCall, url: str, body: dict[str, Any]) -> bytes:
        status, raw = await self._send(call, url, body)
        if status != 200:
            raise upstream_status_error(status, raw, call)
        return raw

    async def complete(self, call: ProviderCall) -> Completion:
        body = await self._post(call, messages_url(call.model), call.body)
        try:
            parsed = orjson.loads(body)
            if parsed.get("type") != "message":
                raise ValueError("not a message")
            usage = chat_usage(parsed.get("usage") or {})
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
            raise UpstreamError("The provider sent a reply that is not a message.") from exc
        return Completion(body, 1, usage["prompt_tokens"], usage["completion_tokens"])

    async def count_tokens(self, call: ProviderCall) -> bytes | None:
        """The provider's `/v1/messages/count_tokens` reply, `{"input_tokens": N}`; None
        when the upstream has no such route (404 / 405: an Anthropic-compatible server
        serving /v1/messages only), for the caller to estimate (SPEC "Three dialects")."""
        status, raw = await self._send(call, messages_url(call.model, "/count_tokens"),
                                       call.body)
        if status in NO_COUNT_ROUTE:
            return None
        if status != 200:
            raise upstream_status_error(status, raw, call)
        return raw

    async def embed(self, call: ProviderCall) -> bytes:
        raise InvalidRequest(f"the model '{call.model.id}' does not provide embeddings",
                             param="model")

    def stream(self, call: ProviderCall) -> SsePayloads:
        return SsePayloads(self._events, call)

    async def _events(self, call: ProviderCall, out: SsePayloads) -> AsyncGenerator[bytes, None]:
        resp: Response | None = None
        try:
            resp = await self._upstream.post(messages_url(call.model), orjson.dumps(call.body),
                                             self._headers(call, stream=True), call.timeouts)
            if resp.status != 200:
                raise upstream_status_error(resp.status, await resp.read(), call)
            buffer = b""
            async for data in resp:
                buffer += data
                if b"\r" in buffer:
                    buffer = buffer.replace(b"\r\n", b"\n")
                if b"\n\n" not in buffer:
                    continue
                events, buffer = split_named_events(buffer)
                for i, event in enumerate(events):
                    if event.startswith(_ERROR):
                        raise _inband(event, call)
                    out.ready = len(events) - 1 - i
                    yield event
                    if event.startswith(_STOP):
                        return
            raise UpstreamError("The provider ended the stream before it was complete.")
        except GatewayError:
            raise
        except DeadlineReached as exc:
            raise deadline_exceeded(call.model.id, call.timeouts.total) from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(f"The provider stopped sending for `{call.model.id}`.") from exc
        except OSError as exc:
            raise UpstreamError(
                f"The provider connection failed mid-stream: {reason(exc)}") from exc
        finally:
            if resp is not None:
                resp.release()


def _inband(event: bytes, call: ProviderCall) -> GatewayError:
    message = "error"
    try:
        err = orjson.loads(event[event.index(b"data:") + 5:]).get("error") or {}
        if isinstance(err, dict):
            message = str(err.get("message") or err.get("type") or "error")
    except (ValueError, AttributeError):
        pass
    return UpstreamError(
        f"The provider reported an error mid-stream: {scrub(message, call.api_key)}"[:1000])
