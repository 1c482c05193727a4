"""The Responses stream dialect: framing, what counts as output, usage from the terminal
success, and how a failed stream ends (in-band `response.failed`, never charged); the
success path also runs through the edge's event writer."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import orjson
import pytest

from gateway.dialects.responses.stream import ResponsesStream, event_type, frame
from gateway.edge.sse import SseResponse
from gateway.errors import ChargeUnconfirmed, UpstreamTimeout
from gateway.flow.outcome import StreamReply
from gateway.flow.settlement import Settlement
from tests.dialects.fixtures import check_responses_event, load


def _framed(data: dict[str, Any]) -> bytes:
    """An event as the relay hands it on: framed, without the blank line."""
    return frame(str(data["type"]).encode(), orjson.dumps(data))


def _payloads(name: str) -> list[bytes]:
    return [frame(e["event"].encode(), orjson.dumps(e["data"])) for e in load(name)["events"]]


def _parse(framed: bytes) -> list[tuple[str, dict[str, Any]]]:
    """SSE frames back to (event name, data), checking the frame's shape."""
    out = []
    for block in framed.split(b"\n\n"):
        if not block:
            continue
        name, data = block.split(b"\n")
        assert name.startswith(b"event: ") and data.startswith(b"data: ")
        out.append((name[7:].decode(), orjson.loads(data[6:])))
    return out


def test_events_go_out_as_they_came() -> None:
    dialect = ResponsesStream()
    payload = _payloads("responses_stream_text")[4]
    assert payload.startswith(b"event: response.output_text.delta\ndata: {")
    assert dialect.event(payload) == payload + b"\n\n"  # not re-framed
    assert event_type(payload) == b"response.output_text.delta"
    assert dialect.done == b""


def test_output_is_any_non_empty_delta() -> None:
    dialect = ResponsesStream()
    kinds: dict[bytes, bool] = {}
    for payload in _payloads("responses_stream_text") + _payloads(
            "responses_stream_function_call"):
        kinds[event_type(payload)] = dialect.inspect(payload)[0] or kinds.get(
            event_type(payload), False)
    assert kinds[b"response.output_text.delta"] and kinds[
        b"response.function_call_arguments.delta"]
    assert not any(v for k, v in kinds.items() if not k.endswith(b".delta"))
    for kind in ("response.refusal.delta", "response.reasoning_summary_text.delta",
                 "response.reasoning_text.delta"):
        assert dialect.inspect(_framed({"type": kind, "delta": "a"}))[0]
        assert not dialect.inspect(_framed({"type": kind, "delta": ""}))[0]


def test_usage_comes_from_the_terminal_success_with_credits_added() -> None:
    dialect = ResponsesStream()
    payloads = _payloads("responses_stream_text")
    assert [dialect.may_carry_usage(p) for p in payloads].count(True) == 1
    for payload in payloads[:-1]:
        assert dialect.inspect(payload)[1] is None
        dialect.event(payload)
    content, usage = dialect.inspect(payloads[-1])
    assert not content and usage == {"prompt_tokens": 36, "completion_tokens": 5,
                                     "total_tokens": 41}
    [(name, data)] = _parse(dialect.usage_event(payloads[-1], 7))
    assert name == "response.completed" and data["response"]["usage"]["credits"] == 7
    assert check_responses_event(data).response.usage.output_tokens == 5
    assert dialect.succeeded and dialect.failure() is None


def test_incomplete_is_a_success_and_carries_usage() -> None:
    completed = load("responses_stream_text")["events"][-1]["data"]
    response = {**completed["response"], "status": "incomplete",
                "incomplete_details": {"reason": "max_output_tokens"}}
    payload = _framed({"type": "response.incomplete", "response": response,
                       "sequence_number": 12})
    dialect = ResponsesStream()
    assert dialect.may_carry_usage(payload)
    assert dialect.inspect(payload)[1] == {"prompt_tokens": 36, "completion_tokens": 5,
                                           "total_tokens": 41}
    assert dialect.succeeded and dialect.failure() is None


def _relayed(dialect: ResponsesStream, payloads: list[bytes]) -> None:
    for payload in payloads:
        if dialect.may_carry_usage(payload):
            dialect.inspect(payload)
        dialect.event(payload)


def test_a_stream_that_stops_early_ends_with_response_failed() -> None:
    dialect = ResponsesStream()
    payloads = _payloads("responses_stream_text")[:6]
    dialect.inspect(payloads[0])  # response.created: the Response the failure echoes
    _relayed(dialect, payloads)
    failure = dialect.failure()
    assert failure is not None and failure.status == 502 and not dialect.succeeded
    [(name, data)] = _parse(dialect.error_event(UpstreamTimeout("The provider fell silent.")))
    assert name == "response.failed" and data["sequence_number"] == 6
    response = check_responses_event(data).response
    assert response.id == "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b"
    assert response.status == "failed" and response.error is not None
    assert response.error.code == "server_error"
    assert response.error.message == "The provider fell silent."


@pytest.mark.parametrize("terminal", [
    {"type": "response.failed", "response": {"status": "failed", "error": {
        "code": "server_error", "message": "The model crashed."}}},
    {"type": "error", "code": "server_error", "message": "The model crashed.", "param": None},
    {"type": "response.completed", "response": {"status": "cancelled", "error": None}},
])
def test_a_provider_failure_event_is_a_failure_not_a_reply(terminal: dict[str, Any]) -> None:
    created = load("responses_stream_text")["events"][0]["data"]
    if "response" in terminal:
        terminal = {**terminal, "response": {**created["response"], **terminal["response"]}}
    payload = _framed({**terminal, "sequence_number": 1})
    dialect = ResponsesStream()
    assert dialect.may_carry_usage(payload)
    assert dialect.inspect(_framed(created)) == (False, None)
    assert dialect.inspect(payload) == (False, None)  # usage of a failure: never charged
    dialect.event(payload)
    failure = dialect.failure()
    assert failure is not None and not dialect.succeeded
    tail = dialect.error_event(failure)
    if terminal["type"] == "response.failed":
        assert "The model crashed." in failure.message
        assert tail == b""  # the provider's own response.failed already ended the stream
    else:
        [(name, data)] = _parse(tail)
        assert name == "response.failed" and data["sequence_number"] == 2
        check_responses_event(data)


def test_a_reply_the_gateway_could_not_record_ends_with_an_error_event() -> None:
    dialect = ResponsesStream()
    payloads = _payloads("responses_stream_text")
    _relayed(dialect, payloads)
    [(name, data)] = _parse(dialect.error_event(ChargeUnconfirmed("Not recorded.")))
    assert name == "error" and data["code"] == "charge_unconfirmed"
    assert data["sequence_number"] == 13
    check_responses_event(data)


def test_a_failure_before_response_created_still_has_a_valid_response() -> None:
    dialect = ResponsesStream(response_id="resp_req1", model="gpt-4.1")
    [(_, data)] = _parse(dialect.error_event(UpstreamTimeout("late")))
    assert data["sequence_number"] == 0
    assert check_responses_event(data).response.id == "resp_req1"


class _Settlement:
    """What the writer asks of a settlement, recorded."""

    def __init__(self) -> None:
        self.events: list[bytes] | None = None
        self.delivered = False
        self.ended: dict[str, Any] = {}

    def output_delivered(self) -> None:
        self.delivered = True

    async def end(self, **outcome: Any) -> None:
        self.ended = outcome


async def test_the_event_writer_relays_a_responses_stream() -> None:
    payloads = _payloads("responses_stream_function_call")

    async def rest() -> Any:
        for payload in payloads[1:]:
            yield payload

    settlement = _Settlement()
    reply = StreamReply(payloads[0], rest(), cast(Settlement, settlement), {},
                        include_usage=True, credits=3)
    sent: list[bytes] = []

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            sent.append(message["body"])

    dialect = ResponsesStream()
    response = SseResponse(reply, dialect, {})
    await response({"type": "http"}, receive, send)  # type: ignore[arg-type]
    events = _parse(b"".join(sent))
    assert [name for name, _ in events] == [e["event"] for e in load(
        "responses_stream_function_call")["events"]]
    assert [data["sequence_number"] for _, data in events] == list(range(len(payloads)))
    assert events[-1][1]["response"]["usage"]["credits"] == 3
    for _, data in events:
        check_responses_event(data)
    assert sent[-1] == b""  # no end marker after the provider's own terminal event
    assert settlement.delivered and settlement.ended["completed"]
    assert settlement.ended["usage"] == {"prompt_tokens": 291, "completion_tokens": 23,
                                         "total_tokens": 314}
    assert dialect.failure() is None
