"""The chat flow without a server: charge on success, void on failure, replay without a charge."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.errors import InvalidRequest, ServiceUnavailable, UpstreamError
from gateway.flow.outcome import JsonReply, StreamReply
from gateway.idempotency.service import Replay
from tests.doubles import completion_body
from tests.flow.conftest import ALLOTMENT, CREDITS, Flow


async def test_a_reply_is_charged_once_and_says_what_it_cost(flow: Flow) -> None:
    flow.provider.reply_json(completion_body("hi there"))
    call = flow.call()
    outcome = await flow.pipeline.chat(flow.caller, call)
    assert isinstance(outcome, JsonReply)
    assert orjson.loads(outcome.body)["choices"][0]["message"]["content"] == "hi there"
    assert outcome.headers["x-bookbag-credits-charged"] == str(CREDITS)
    assert outcome.headers["x-bookbag-credits-remaining"] == str(ALLOTMENT - CREDITS)
    assert float(outcome.headers["x-bookbag-overhead-ms"]) >= 0
    assert flow.meter.settled[call.request_id] == 1
    assert flow.meter.voided[call.request_id] == 0
    assert await flow.available() == ALLOTMENT - CREDITS
    # The flow reports to the edge; it never writes the edge's log record.
    assert call.report.model == "m1"
    assert call.report.entry is not None and call.report.entry.request_id == call.request_id
    assert call.report.entry.prompt_tokens == 3
    assert len(flow.provider.calls) == 1
    assert flow.provider.calls[0].body["model"] == "m1"


async def test_a_provider_failure_voids_the_hold(flow: Flow) -> None:
    flow.provider.reply_json(error=UpstreamError("the provider broke"))
    call = flow.call()
    with pytest.raises(UpstreamError):
        await flow.pipeline.chat(flow.caller, call)
    assert flow.meter.reserved[call.request_id] == 1
    assert flow.meter.voided[call.request_id] == 1
    assert flow.meter.settled[call.request_id] == 0
    assert await flow.available() == ALLOTMENT
    assert flow.pipeline.inflight.count(flow.caller.workspace_id) == 0


async def test_a_stream_that_fails_before_its_first_payload_is_an_error_and_voided(
        flow: Flow) -> None:
    flow.provider.reply_stream(error=UpstreamError("refused"), error_at=0)
    call = flow.call(stream=True)
    with pytest.raises(UpstreamError):
        await flow.pipeline.chat(flow.caller, call)
    assert flow.meter.voided[call.request_id] == 1
    assert flow.meter.settled[call.request_id] == 0
    assert await flow.available() == ALLOTMENT


async def test_an_empty_stream_is_an_upstream_error_and_voided(flow: Flow) -> None:
    flow.provider.reply_stream()
    call = flow.call(stream=True)
    with pytest.raises(UpstreamError, match="without sending anything"):
        await flow.pipeline.chat(flow.caller, call)
    assert flow.meter.voided[call.request_id] == 1
    assert await flow.available() == ALLOTMENT


async def test_refused_before_anything_is_reserved(flow: Flow) -> None:
    call = flow.call(model="no-such-model")
    with pytest.raises(InvalidRequest):
        await flow.pipeline.chat(flow.caller, call)
    assert not flow.meter.reserved
    assert not flow.provider.calls


async def test_an_unchecked_rate_limit_fails_metered_requests_closed(flow: Flow) -> None:
    from dataclasses import replace

    call = flow.call()
    with pytest.raises(ServiceUnavailable, match="rate-limit store"):
        await flow.pipeline.chat(replace(flow.caller, rate_unchecked=True), call)
    assert not flow.meter.reserved
    assert not flow.provider.calls


async def test_an_idempotent_retry_replays_the_stored_reply_without_a_second_charge(
        flow: Flow) -> None:
    flow.provider.reply_json(completion_body("only once"))
    first = flow.call(key="retry-me")
    outcome = await flow.pipeline.chat(flow.caller, first)
    assert isinstance(outcome, JsonReply)
    again = flow.call(key="retry-me")
    replay = await flow.pipeline.chat(flow.caller, again)
    assert isinstance(replay, Replay)
    assert replay.response.body == outcome.body
    assert replay.response.headers == {"x-bookbag-credits-charged": str(CREDITS)}
    assert replay.original_request_id == first.request_id
    assert len(flow.provider.calls) == 1
    assert flow.meter.settled[first.request_id] == 1
    assert again.request_id not in flow.meter.reserved
    assert await flow.available() == ALLOTMENT - CREDITS


async def test_a_key_is_hashed_over_the_body_as_sent(flow: Flow) -> None:
    """Bookbag's metadata is taken out of the forwarded body, but the key covers it:
    the same key with other metadata is a different request (422)."""
    from gateway.errors import IdempotencyKeyReused

    flow.provider.reply_json()
    await flow.pipeline.chat(flow.caller, flow.call(key="k", metadata={"agent_id": "a1"}))
    with pytest.raises(IdempotencyKeyReused):
        await flow.pipeline.chat(flow.caller, flow.call(key="k", metadata={"agent_id": "a2"}))
    with pytest.raises(InvalidRequest, match="Idempotency-Key"):
        await flow.pipeline.chat(flow.caller, flow.call(key=" "))


async def test_a_failed_reply_gives_its_key_back(flow: Flow) -> None:
    flow.provider.reply_json(error=UpstreamError("broke"))
    with pytest.raises(UpstreamError):
        await flow.pipeline.chat(flow.caller, flow.call(key="again"))
    flow.provider.reply_json()
    outcome = await flow.pipeline.chat(flow.caller, flow.call(key="again"))
    assert isinstance(outcome, JsonReply)
    assert len(flow.provider.calls) == 2
    assert await flow.available() == ALLOTMENT - CREDITS


async def test_a_settle_cancelled_midway_still_completes_once(flow: Flow) -> None:
    """The request is cancelled while its settle runs: the settle finishes (shielded),
    and the failure path that follows does not void what was settled."""
    entered, go_on = asyncio.Event(), asyncio.Event()
    real_settle = flow.meter.settle

    async def slow_settle(hold, entry, credits=None):  # type: ignore[no-untyped-def]
        entered.set()
        await go_on.wait()
        return await real_settle(hold, entry, credits)

    flow.meter.settle = slow_settle  # type: ignore[method-assign]
    flow.provider.reply_json()
    call = flow.call()
    task = asyncio.ensure_future(flow.pipeline.chat(flow.caller, call))
    await entered.wait()
    task.cancel()
    await asyncio.sleep(0.01)
    assert not task.done() or task.cancelled()
    go_on.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if flow.meter.settled[call.request_id]:
            break
        await asyncio.sleep(0.01)
    assert flow.meter.settled[call.request_id] == 1
    assert flow.meter.voided[call.request_id] == 0
    assert await flow.available() == ALLOTMENT - CREDITS


async def test_a_stream_reply_carries_its_settlement_unresolved(flow: Flow) -> None:
    flow.provider.reply_stream(b'{"choices": []}')
    outcome = await flow.pipeline.chat(flow.caller, flow.call(stream=True))
    assert isinstance(outcome, StreamReply)
    assert outcome.headers == {"x-bookbag-credits-reserved": str(CREDITS), "x-bookbag-model": "m1"}
    assert not outcome.settlement.resolved
    assert outcome.settlement.hold is not None
    await outcome.settlement.abandon()
    assert await flow.available() == ALLOTMENT
