"""The flow's outcomes on the wire: a JSON response, an event stream, or a replay.

`headers` are the edge's own (X-Request-Id, X-Client-Request-Id); the
outcome adds the flow's (credits, overhead). A replay carries the first
reply's stored body and its credit headers, marked `Idempotent-Replayed`
with the first request's id (gateway/idempotency/service.py); a stored
stream is sent event by event as the client first received it, then the
dialect's end marker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.responses import Response, StreamingResponse

from gateway.edge.sse import STREAM_HEADERS, SseResponse, StreamDialect
from gateway.flow.outcome import JsonReply, Outcome, StreamReply
from gateway.idempotency.service import ORIGINAL_ID_HEADER, REPLAYED_HEADER, Replay


def render(outcome: Outcome, headers: dict[str, str], dialect: StreamDialect) -> Response:
    if isinstance(outcome, JsonReply):
        headers.update(outcome.headers)
        return Response(outcome.body, 200, headers=headers, media_type="application/json")
    if isinstance(outcome, StreamReply):
        return SseResponse(outcome, dialect, headers)
    return render_replay(outcome, headers, dialect)


def render_replay(replay: Replay, headers: dict[str, str], dialect: StreamDialect) -> Response:
    stored = replay.response
    out = {**headers, **stored.headers, REPLAYED_HEADER: "true",
           ORIGINAL_ID_HEADER: replay.original_request_id}
    if stored.kind == "json":
        return Response(stored.body, stored.status, headers=out, media_type="application/json")
    out.update(STREAM_HEADERS)
    return StreamingResponse(_events(stored.body, dialect.done), stored.status, headers=out,
                             media_type="text/event-stream")


async def _events(body: bytes, done: bytes) -> AsyncIterator[bytes]:
    """Send the stored events one by one (as the client got them), then the end marker."""
    for event in body.split(b"\n\n"):
        if event:
            yield event + b"\n\n"
    yield done
