"""The relay: OpenAI-compatible upstreams (OpenAI, Ollama, vLLM, ...) reached as bytes.

The reply body is passed on unchanged; only what metering needs is read
(the number of choices, usage). Streams are split into SSE events and each
event's payload handed on as bytes. Two dialects: chat (`/chat/completions`,
ended by `[DONE]`) and, for upstreams that speak it, Responses (`/responses`, a
Response with `usage.input_tokens`/`output_tokens`; its stream's events are passed on
as received, `event: <type>\ndata: <json>`, and it ends at the terminal event, which is
passed on: the Responses dialect tells success from failure).
The HTTP client is `upstream/` (pooled keep-alive connections on httptools; cheaper
than aiohttp per request); its timeouts and failures become UpstreamTimeout /
UpstreamError here; the request's total deadline passing mid-stream becomes
DeadlineExceeded (a delivered stream is charged).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import orjson

from gateway.dialects.responses.stream import TERMINAL_EVENTS
from gateway.errors import (
    GatewayError,
    UpstreamError,
    UpstreamTimeout,
    deadline_exceeded,
)
from gateway.providers.relay_common import (
    SsePayloads,
    reason,
    scrub,
    split_events,
    split_named_events,
    upstream_status_error,
)
from gateway.providers.upstream import DeadlineReached, Response, UpstreamClient
from gateway.types import RESPONSES, Completion, ModelEntry, ProviderCall

OPENAI_BASE = "https://api.openai.com/v1"
_FAILED = ("failed", "cancelled")


def _path(call: ProviderCall) -> str:
    return "/responses" if call.dialect == RESPONSES else "/chat/completions"


def _response_completion(body: bytes) -> Completion:
    """A Response as JSON: one reply; a Response that failed is a provider failure."""
    try:
        parsed = orjson.loads(body)
        if parsed.get("object") != "response":
            raise ValueError("not a response")
        status = parsed.get("status")
        usage = parsed.get("usage") or {}
        prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
        raise UpstreamError("The provider sent a reply that is not a Response.") from exc
    if status in _FAILED:
        error = parsed.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        raise UpstreamError(f"The provider's response {status}: {message or status}"[:1000])
    return Completion(body, 1, prompt, completion)


class RelayProvider:
    def __init__(self, *, connections: int = 1024) -> None:
        self._upstream = UpstreamClient(connections=connections)

    async def close(self) -> None:
        await self._upstream.close()

    async def check(self, model: ModelEntry, body: dict[str, Any]) -> None:
        """Nothing to refuse here: the body goes to OpenAI as sent, and OpenAI answers for
        its own parameters (a refusal comes back as its 400, uncharged)."""

    @staticmethod
    def _request(call: ProviderCall, path: str, stream: bool = False
                 ) -> tuple[str, list[tuple[str, str]]]:
        url = (call.model.api_base or OPENAI_BASE) + path
        headers = [("Content-Type", "application/json"), ("Accept-Encoding", "identity")]
        if call.api_key:
            headers.append(("Authorization", "Bearer " + call.api_key))
        if stream:
            headers.append(("Accept", "text/event-stream"))
        return url, headers

    async def _post(self, call: ProviderCall, path: str) -> bytes:
        url, headers = self._request(call, path)
        try:
            resp = await self._upstream.post(url, orjson.dumps(call.body), headers, call.timeouts)
            try:
                body = await resp.read()
            finally:
                resp.release()
        except TimeoutError as exc:
            raise UpstreamTimeout(f"The provider did not answer in time for `{call.model.id}`.") from exc
        except OSError as exc:
            raise UpstreamError(
                f"Could not reach the provider for `{call.model.id}`: {reason(exc)}"
            ) from exc
        if resp.status != 200:
            raise upstream_status_error(resp.status, body, call)
        return body

    async def complete(self, call: ProviderCall) -> Completion:
        if call.dialect == RESPONSES:
            return _response_completion(await self._post(call, "/responses"))
        body = await self._post(call, "/chat/completions")
        try:
            parsed = orjson.loads(body)
            choices = parsed["choices"]
            if not isinstance(choices, list) or not choices:
                raise ValueError("no choices")
            usage = parsed.get("usage") or {}
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UpstreamError("The provider sent a reply that is not a chat completion.") from exc
        return Completion(body, len(choices), usage.get("prompt_tokens"),
                          usage.get("completion_tokens"))

    async def embed(self, call: ProviderCall) -> bytes:
        return await self._post(call, "/embeddings")

    def stream(self, call: ProviderCall) -> SsePayloads:
        return SsePayloads(self._events, call)

    async def _events(self, call: ProviderCall, out: SsePayloads) -> AsyncGenerator[bytes, None]:
        url, headers = self._request(call, _path(call), stream=True)
        responses = call.dialect == RESPONSES
        resp: Response | None = None
        try:
            resp = await self._upstream.post(url, orjson.dumps(call.body), headers, call.timeouts)
            if resp.status != 200:
                raise upstream_status_error(resp.status, await resp.read(), call)
            buffer = b""
            async for data in resp:
                buffer += data
                if b"\r" in buffer:
                    buffer = buffer.replace(b"\r\n", b"\n")
                if b"\n\n" not in buffer:
                    continue
                if responses:  # named events, passed on as framed; the terminal one ends it
                    payloads, buffer = split_named_events(buffer)
                    for i, payload in enumerate(payloads):
                        out.ready = len(payloads) - 1 - i
                        yield payload
                        if payload.startswith(TERMINAL_EVENTS):
                            return
                    continue
                payloads, buffer = split_events(buffer)
                for i, payload in enumerate(payloads):
                    if payload == b"[DONE]":
                        return
                    if payload.startswith(b'{"error"'):
                        raise _inband(payload, call)
                    out.ready = len(payloads) - 1 - i  # payloads of this read still to come
                    yield payload
            raise UpstreamError("The provider ended the stream before it was complete.")
        except GatewayError:
            raise
        except DeadlineReached as exc:
            raise deadline_exceeded(call.model.id, call.timeouts.total) from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(f"The provider stopped sending for `{call.model.id}`.") from exc
        except OSError as exc:
            raise UpstreamError(f"The provider connection failed mid-stream: {reason(exc)}") from exc
        finally:
            if resp is not None:  # closes the connection unless the reply was read whole
                resp.release()


def _inband(payload: bytes, call: ProviderCall) -> GatewayError:
    try:
        err = orjson.loads(payload).get("error") or {}
        message = str(err.get("message") or "error") if isinstance(err, dict) else str(err)
    except (orjson.JSONDecodeError, AttributeError):
        message = "error"
    return UpstreamError(f"The provider reported an error mid-stream: {scrub(message, call.api_key)}"[:1000])
