"""What an idempotency store keeps, and the protocol the SQL and Redis stores implement."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class State(enum.StrEnum):
    IN_FLIGHT = "in_flight"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A successful response as the client received it. Never holds a provider key:
    only the provider's body (or SSE events) and the credit headers of
    `idempotency.REPLAYED_HEADERS`."""

    kind: str  # "json" | "sse"
    status: int
    headers: dict[str, str]
    body: bytes  # the JSON body, or the SSE events as sent, without [DONE]


@dataclass(frozen=True, slots=True)
class Record:
    """A live record: who holds it (`request_id`, until `lease_ms` while in flight) and,
    once staged, the response to replay."""

    state: State
    body_hash: str
    request_id: str
    lease_ms: int
    response: StoredResponse | None


class IdempotencyStore(Protocol):
    """Where records live (SQL table or Redis); every write names the request id that
    holds the record, so a process that lost its claim cannot overwrite the new holder."""

    async def claim(self, workspace_id: str, key: str, body_hash: str, request_id: str, *,
                    now_ms: int, lease_ms: int, expires_ms: int) -> Record | None:
        """Create an in-flight record unless a live one exists (one past `expires_ms`
        counts as absent); None when created, else the live record."""
        ...

    async def take_over(self, workspace_id: str, key: str, old_request_id: str, request_id: str,
                        *, now_ms: int, lease_ms: int, expires_ms: int) -> bool:
        """Replace the in-flight record held by `old_request_id`; False if it changed meanwhile."""
        ...

    async def stage(self, workspace_id: str, key: str, request_id: str,
                    response: StoredResponse) -> bool:
        """Store the response on the in-flight record (before the charge is settled)."""
        ...

    async def finish(self, workspace_id: str, key: str, request_id: str, *,
                     expires_ms: int) -> bool:
        """Mark the record done, keeping its staged response (none: not replayable)."""
        ...

    async def release(self, workspace_id: str, key: str, request_id: str) -> None:
        """Delete the in-flight record so the key can be used again."""
        ...

    async def sweep(self, now_ms: int) -> int:
        """Delete expired records; how many."""
        ...

    async def close(self) -> None: ...
