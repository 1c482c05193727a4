"""The relay: OpenAI-compatible upstreams (OpenAI, Ollama, vLLM, ...) reached as bytes.

The reply body is passed on unchanged; only what metering needs is read
(the number of choices, usage). Streams are split into SSE events and each
event's payload handed on as bytes. The HTTP client is `upstream/` (pooled
keep-alive connections on httptools; cheaper than aiohttp per request); its
timeouts and failures become UpstreamTimeout / UpstreamError here; the request's total
deadline passing mid-stream becomes DeadlineExceeded (a delivered stream is charged).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import orjson

from gateway.errors import (
    GatewayError,
    ProviderAuthFailed,
    ProviderRejected,
    UpstreamError,
    UpstreamTimeout,
    deadline_exceeded,
)
from gateway.providers.upstream import DeadlineReached, Response, UpstreamClient, UpstreamFailure
from gateway.types import Completion, ModelEntry, ProviderCall

OPENAI_BASE = "https://api.openai.com/v1"
_PASS_THROUGH = {400, 404, 409, 413, 415, 422, 429}


def _scrub(text: str, key: str | None) -> str:
    if key:
        text = text.replace(key, "[redacted]")
    return text


def upstream_status_error(status: int, body: bytes, call: ProviderCall) -> GatewayError:
    """A provider's non-200 answer as a gateway error (keys never echoed)."""
    message, code, param, type_ = "", None, None, None
    try:
        parsed: Any = orjson.loads(body)
        err = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or "")
            code = err.get("code") if isinstance(err.get("code"), str) else None
            param = err.get("param") if isinstance(err.get("param"), str) else None
            type_ = err.get("type") if isinstance(err.get("type"), str) else None
        elif isinstance(err, str):
            message = err
    except orjson.JSONDecodeError:
        message = body[:300].decode("utf-8", "replace")
    if status in (401, 403):
        if call.byo:
            return ProviderAuthFailed(
                f"The provider rejected the API key sent with this request (HTTP {status})."
            )
        return UpstreamError(
            f"The provider rejected the gateway's own API key for `{call.model.id}` (HTTP {status})."
        )
    message = _scrub(message, call.api_key) or f"The provider answered HTTP {status}."
    if status in _PASS_THROUGH:
        return ProviderRejected(status, message, code=code, param=param, type_=type_)
    return UpstreamError(f"The provider failed (HTTP {status}): {message}"[:1000])


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
                f"Could not reach the provider for `{call.model.id}`: {_reason(exc)}"
            ) from exc
        if resp.status != 200:
            raise upstream_status_error(resp.status, body, call)
        return body

    async def complete(self, call: ProviderCall) -> Completion:
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
        url, headers = self._request(call, "/chat/completions", stream=True)
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
            raise UpstreamError(f"The provider connection failed mid-stream: {_reason(exc)}") from exc
        finally:
            if resp is not None:  # closes the connection unless the reply was read whole
                resp.release()


class SsePayloads:
    """The payloads of one SSE stream; `ready` counts those already received after this one
    (the stream's end, `[DONE]`, counts as one).

    A provider burst (several events in one read) can so be written to the client as
    one message (`edge/sse.py`): while `ready` > 0 the next payload is in memory.
    """

    def __init__(self, events: Callable[[ProviderCall, SsePayloads], AsyncGenerator[bytes, None]],
                 call: ProviderCall) -> None:
        self.ready = 0
        self._events = events(call, self)

    def __aiter__(self) -> SsePayloads:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        return self._events.__anext__()

    async def aclose(self) -> None:
        await self._events.aclose()


def split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The `data:` payloads of the complete events in `buffer` (`\n` line ends), and the
    rest. Comments (keep-alives), event names and ids are skipped."""
    # Every newline one of an event-ending pair: each event is one line, no need to split
    # the events into lines (the usual case: a provider sends `data: {...}\n\n`).
    one_line = buffer.count(b"\n") == 2 * buffer.count(b"\n\n")
    *events, rest = buffer.split(b"\n\n")
    if one_line:
        return [event[5:].strip() for event in events if event.startswith(b"data:")], rest
    return [line[5:].strip() for event in events for line in event.split(b"\n")
            if line.startswith(b"data:")], rest


def _inband(payload: bytes, call: ProviderCall) -> GatewayError:
    try:
        err = orjson.loads(payload).get("error") or {}
        message = str(err.get("message") or "error") if isinstance(err, dict) else str(err)
    except (orjson.JSONDecodeError, AttributeError):
        message = "error"
    return UpstreamError(f"The provider reported an error mid-stream: {_scrub(message, call.api_key)}"[:1000])


def _reason(exc: OSError) -> str:
    """What failed, without addresses or anything the request carried."""
    return str(exc) if isinstance(exc, UpstreamFailure) else f"{type(exc).__name__}."
