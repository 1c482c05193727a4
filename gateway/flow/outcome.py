"""What the flow returns: a JSON reply, a stream to relay, or an idempotent replay.

The edge renders each on its wire: `JsonReply` as one response, `StreamReply`
through its event writer (gateway/edge/sse.py) which hands the end of the
stream back to the reply's `Settlement`, and `Replay` (the idempotency
service's stored body and headers) as the first request's reply.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.flow.settlement import Settlement
from gateway.idempotency.service import Replay


@dataclass(frozen=True, slots=True)
class JsonReply:
    """A finished reply: the provider's bytes and the headers the flow sets
    (credits charged and remaining, overhead)."""

    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class StreamReply:
    """A stream whose first payload arrived: relay `first`, then `rest`; the
    settlement resolves the hold when the writer reports how the stream ended."""

    first: bytes
    rest: AsyncIterator[bytes]
    settlement: Settlement
    headers: dict[str, str]  # x-bookbag-credits-reserved
    include_usage: bool  # pass the usage payload on (the gateway always asks for it)
    credits: int  # what the reply costs if charged: added to the usage payload


Outcome = JsonReply | StreamReply | Replay
