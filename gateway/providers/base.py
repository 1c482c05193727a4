"""The Provider interface: a check before any credit moves, one chat call (JSON or
streamed), and embeddings.

A stream yields the JSON payload of each OpenAI `chat.completion.chunk` as
bytes (what follows `data: ` on an SSE line, without framing), and ends after
the provider's `[DONE]` (which is not yielded). A stream that ends any other
way raises: `UpstreamError` for a cut or an in-band error, `UpstreamTimeout`
when the provider stops sending. Errors are `gateway.errors` types only.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

from gateway.errors import UpstreamError
from gateway.types import Completion, ModelEntry, ProviderCall


class Provider(Protocol):
    async def check(self, model: ModelEntry, body: dict[str, Any]) -> None:
        """Refuse (400, before anything is reserved) a parameter this provider cannot honour
        for `model`; return when there is nothing to refuse."""
        ...

    async def complete(self, call: ProviderCall) -> Completion:
        """One non-streamed chat completion in OpenAI shape."""
        ...

    def stream(self, call: ProviderCall) -> AsyncIterator[bytes]:
        """Chunk payloads of a streamed chat completion, in OpenAI shape."""
        ...

    async def embed(self, call: ProviderCall) -> bytes:
        """An OpenAI-shaped embeddings response body."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


async def open_stream(provider: Provider, call: ProviderCall) -> tuple[bytes, AsyncIterator[bytes]]:
    """A provider's stream and its first payload: whatever fails before that payload (an
    upstream error, a timeout, a cancellation) closes the stream and is raised here."""
    chunks = provider.stream(call)
    try:
        return await anext(chunks), chunks
    except StopAsyncIteration:
        raise UpstreamError("The provider ended the stream without sending anything.") from None
    except BaseException:
        with contextlib.suppress(Exception):
            await chunks.aclose()  # type: ignore[attr-defined]  # async generators
        raise
