"""Stream settlement, exactly once, through the edge's event writer with no server.

The rule (gateway/flow/settlement.py): charged when the stream completed, or
when output was delivered and then the client left or the gateway's own
deadline ended it; voided otherwise (nothing delivered, or the provider broke).
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.errors import DeadlineExceeded, UpstreamError
from gateway.flow.books import Books
from gateway.flow.outcome import StreamReply
from gateway.flow.settlement import Settlement, stream_charged
from tests.doubles import chunk, usage_chunk
from tests.flow.conftest import ALLOTMENT, CREDITS, Flow, relay


async def _stream(flow: Flow, *payloads: bytes, include_usage: bool = False,
                  key: str | None = None, **script: object) -> tuple[StreamReply, str]:
    flow.provider.reply_stream(*payloads, **script)  # type: ignore[arg-type]
    call = flow.call(stream=True, include_usage=include_usage, key=key)
    reply = await flow.pipeline.chat(flow.caller, call)
    assert isinstance(reply, StreamReply)
    return reply, call.request_id


def _once(flow: Flow, request_id: str, *, charged: bool) -> None:
    assert flow.meter.reserved[request_id] == 1
    assert flow.meter.settled[request_id] == (1 if charged else 0)
    assert flow.meter.voided[request_id] == (0 if charged else 1)
    assert flow.pipeline.inflight.count(flow.caller.workspace_id) == 0


async def test_a_completed_stream_is_charged_once_then_done(flow: Flow) -> None:
    reply, rid = await _stream(flow, chunk(role="assistant"), chunk("hel"), chunk("lo"),
                               chunk(finish="stop"), usage_chunk(), include_usage=True)
    out = await relay(reply)
    _once(flow, rid, charged=True)
    assert await flow.available() == ALLOTMENT - CREDITS
    assert out.events[-1] == b"data: [DONE]\n\n"
    usage = orjson.loads(out.events[-2].removeprefix(b"data: "))["usage"]
    assert usage["credits"] == CREDITS and usage["prompt_tokens"] == 3
    assert reply.settlement.entry.completion_tokens == 2
    assert flow.provider.finished == 1


async def test_the_usage_payload_is_withheld_unless_asked(flow: Flow) -> None:
    reply, _ = await _stream(flow, chunk("hi"), usage_chunk())
    out = await relay(reply)
    assert b'"usage":{' not in out.body and b'"credits"' not in out.body
    assert reply.settlement.entry.prompt_tokens == 3  # still read for the ledger


async def test_a_client_gone_before_content_is_not_charged(flow: Flow) -> None:
    reply, rid = await _stream(flow, chunk(role="assistant"), chunk("late"), stall_at=1)
    out = await relay(reply, leave_after=1)
    _once(flow, rid, charged=False)
    assert await flow.available() == ALLOTMENT
    assert out.events == [b"data: " + chunk(role="assistant") + b"\n\n"]  # no tail to a gone client
    assert flow.provider.closed == 1  # the upstream was cancelled


async def test_a_client_gone_after_content_is_charged(flow: Flow) -> None:
    reply, rid = await _stream(flow, chunk("delivered"), chunk("never"), stall_at=1)
    await relay(reply, leave_after=1)
    _once(flow, rid, charged=True)
    assert await flow.available() == ALLOTMENT - CREDITS
    assert flow.provider.closed == 1


async def test_a_provider_break_mid_stream_is_voided_with_an_in_band_error(flow: Flow) -> None:
    reply, rid = await _stream(flow, chunk("some"), chunk("more"),
                               error=UpstreamError("the provider broke off"), error_at=2)
    out = await relay(reply)
    _once(flow, rid, charged=False)
    assert await flow.available() == ALLOTMENT
    assert b"[DONE]" not in out.body
    assert orjson.loads(out.events[-1].removeprefix(b"data: "))["error"]["message"] == \
        "the provider broke off"


async def test_the_gateway_deadline_after_delivery_is_charged(flow: Flow) -> None:
    reply, rid = await _stream(flow, chunk("some"), error=DeadlineExceeded("deadline"),
                               error_at=1)
    out = await relay(reply)
    _once(flow, rid, charged=True)
    assert await flow.available() == ALLOTMENT - CREDITS
    assert b"[DONE]" not in out.body and b'"error"' in out.events[-1]


async def test_the_gateway_deadline_before_any_output_is_voided(flow: Flow) -> None:
    reply, rid = await _stream(flow, chunk(role="assistant"), error=DeadlineExceeded("deadline"),
                               error_at=1)
    await relay(reply)
    _once(flow, rid, charged=False)


async def test_a_cancelled_writer_still_settles_once_shielded(flow: Flow) -> None:
    """The server cancels the response task while its settle runs: the settle
    completes, exactly once, and nothing voids it afterwards."""
    entered, go_on = asyncio.Event(), asyncio.Event()
    real_settle = flow.meter.settle

    async def slow_settle(hold, entry, credits=None):  # type: ignore[no-untyped-def]
        entered.set()
        await go_on.wait()
        return await real_settle(hold, entry, credits)

    flow.meter.settle = slow_settle  # type: ignore[method-assign]
    reply, rid = await _stream(flow, chunk("all"), chunk(finish="stop"))
    task = asyncio.ensure_future(relay(reply))
    await entered.wait()
    task.cancel()
    await asyncio.sleep(0.01)
    go_on.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if flow.meter.settled[rid]:
            break
        await asyncio.sleep(0.01)
    await reply.settlement.abandon()  # a late failure path: must not void a settled hold
    await reply.settlement.end(completed=False, client_gone=True, error=None, usage=None)
    _once(flow, rid, charged=True)
    assert await flow.available() == ALLOTMENT - CREDITS


async def test_a_completed_stream_with_a_key_replays_its_events(flow: Flow) -> None:
    reply, rid = await _stream(flow, chunk("a"), chunk("b"), key="stream-key")
    out = await relay(reply)
    replay = await flow.pipeline.chat(flow.caller, flow.call(stream=True, key="stream-key"))
    from gateway.idempotency.service import Replay

    assert isinstance(replay, Replay)
    assert replay.response.kind == "sse"
    assert replay.response.body + b"data: [DONE]\n\n" == out.body
    assert len(flow.provider.calls) == 1
    _once(flow, rid, charged=True)


def test_the_charging_rule() -> None:
    deadline, broke = DeadlineExceeded("d"), UpstreamError("u")
    assert stream_charged(completed=True, delivered=False, client_gone=False, error=None)
    assert stream_charged(completed=False, delivered=True, client_gone=True, error=None)
    assert stream_charged(completed=False, delivered=True, client_gone=False, error=deadline)
    assert not stream_charged(completed=False, delivered=True, client_gone=False, error=broke)
    assert not stream_charged(completed=False, delivered=False, client_gone=True, error=None)
    assert not stream_charged(completed=False, delivered=False, client_gone=False,
                              error=deadline)


async def test_a_settlement_resolves_only_once(flow: Flow) -> None:
    """Whatever calls come after the first resolution do nothing."""
    hold = await flow.meter.reserve(flow.caller.workspace_id, CREDITS, "req_once")
    entry = flow.pipeline.decider.entry(
        "req_once", flow.caller, flow.call().request,
        flow.pipeline.catalog.resolve("m1"),
        await flow.pipeline.decider.decide(flow.pipeline.catalog.resolve("m1"), flow.caller, None))
    settlement = Settlement(Books(flow.meter, flow.pipeline.recorder), entry)  # type: ignore[arg-type]
    settlement.hold = hold
    await settlement.charge()
    await settlement.charge()
    await settlement.abandon()
    assert await settlement.end(completed=True, client_gone=False, error=None, usage=None) is None
    assert flow.meter.settled["req_once"] == 1 and flow.meter.voided["req_once"] == 0
