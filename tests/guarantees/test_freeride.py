"""No free replies from streams (issue 12): the free-ride matrix, asserted against the ledger.

Every client behaviour x every kind of output x every provider ending, each with the
charge the SPEC gives it ("Billing rules": delivered is any delta beyond the role; a
delivered stream is charged when the client leaves and when the gateway's own deadline
ends it; a provider break is never charged). Each case runs on a workspace of its own
and checks the ledger entries, their credits and the balance. A fast subset runs in the
default suite; the whole matrix is `slow` (`make guarantees`), and both emit their
figures (`free_rides`: delivered replies not charged; `overcharged`: charged ones that
should not be) to test-artifacts/guarantees.jsonl like the rest of the suite.

    BOOKBAG_TEST_REQUIRE_SERVICES=1 .venv/bin/pytest -m "slow or not slow" \\
        -p no:cacheprovider tests/guarantees/test_freeride.py
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest

from gateway.dialects.chat.stream import inspect
from gateway.providers.litellm_replies import chunk_payload
from gateway.settings import SettingsError
from tests import harness
from tests.fake_provider import FakeProvider
from tests.guarantees.history import Figures
from tests.harness import RunningGateway, running, sqlite_settings
from tests.relay_pricing import relay_only_pricing

CHAT = "/v1/chat/completions"
ALLOTMENT = 100
TIMEOUTS = "1,1.5,1.5"  # connect, idle, total: idle = total, so a stall meets the deadline
FAIL_AFTER = 3  # output chunks the provider sends before it breaks off or stalls
PROMPT = "please tell me a short story about the sea and the wind"

# Client behaviours. Those that leave do so once they have read the named point; one
# whose point never comes (a broken stream has no finish chunk) reads to the end.
BEHAVIOURS = ("before_first_byte", "after_role", "mid_output", "after_finish",
              "before_done", "slow_read", "large_max_tokens", "n2")
OUTPUTS = ("content", "tool_calls", "refusal", "reasoning", "audio")
ENDINGS = ("clean", "cut", "inband_error", "deadline")
USAGE = (False, True)

# The default suite's subset: one case for each rule the matrix holds (fast: < 1 s each).
FAST = {
    ("before_first_byte", "content", "clean", False),
    ("after_role", "content", "clean", True),
    ("after_role", "tool_calls", "clean", False),
    ("mid_output", "reasoning", "clean", False),
    ("mid_output", "audio", "clean", True),
    ("mid_output", "refusal", "cut", False),
    ("before_done", "content", "clean", True),
    ("n2", "content", "deadline", True),
    ("slow_read", "reasoning", "inband_error", False),
}


@dataclass(frozen=True)
class Case:
    behaviour: str
    output: str
    ending: str
    include_usage: bool

    @property
    def id(self) -> str:
        return f"{self.behaviour}-{self.output}-{self.ending}-{'usage' if self.include_usage else 'nousage'}"

    @property
    def replies(self) -> int:
        return 2 if self.behaviour == "n2" else 1

    def expected(self) -> int:
        """The credits the SPEC charges for this case (gpt-4o-mini: 1 per reply)."""
        cost = self.replies
        if self.behaviour == "before_first_byte":
            return 0
        if self.behaviour == "after_role":  # a tool call's name comes with the role
            return cost if self.output == "tool_calls" else 0
        if self.behaviour == "mid_output":  # left after output reached it
            return cost
        # Read to the end (or to a finish that a broken stream never sends): the ending
        # decides. The deadline ends a stream that had delivered output: charged.
        return cost if self.ending in ("clean", "deadline") else 0


def cases() -> Iterator[Any]:
    for b, o, e, u in itertools.product(BEHAVIOURS, OUTPUTS, ENDINGS, USAGE):
        case = Case(b, o, e, u)
        marks = () if (b, o, e, u) in FAST else (pytest.mark.slow,)
        yield pytest.param(case, id=case.id, marks=marks)


@dataclass
class Tally:
    """The figures of one run of the matrix (fast subset or all)."""

    cases: int = 0
    expected: int = 0
    charged: int = 0
    entries: int = 0
    free_rides: int = 0
    overcharged: int = 0
    violations: list[str] | None = None


@pytest.fixture(scope="module")
def tally() -> Iterator[Tally]:
    found = Tally(violations=[])
    started = time.monotonic()
    yield found
    if not found.cases:
        return
    name = "freeride_matrix" if found.cases > len(FAST) else "freeride_fast"
    figures = Figures(name, ops=found.cases, ok=found.cases - len(found.violations or []),
                      entries=found.entries, charged=found.charged,
                      violations=list(found.violations or []),
                      extra={"expected_credits": found.expected, "free_rides": found.free_rides,
                             "overcharged": found.overcharged,
                             "duration_s": round(time.monotonic() - started, 1)})
    figures.emit()


@pytest.fixture(scope="module")
def freeride_gateway(tmp_path_factory: pytest.TempPathFactory,
                     fake: FakeProvider) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("freeride")
    pricing = tmp / "pricing.toml"
    pricing.write_text(relay_only_pricing(fake))
    with running(sqlite_settings(tmp, pricing, BOOKBAG_PROVIDER_TIMEOUT=TIMEOUTS)) as gw:
        yield gw


def _body(case: Case) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "stream": True,
                            "messages": [{"role": "user", "content": PROMPT}]}
    if case.include_usage:
        body["stream_options"] = {"include_usage": True}
    if case.output == "tool_calls":
        body["tools"] = [{"type": "function", "function": {
            "name": "lookup", "parameters": {"type": "object", "properties": {
                "input": {"type": "string"}}}}}]
    if case.behaviour == "large_max_tokens":
        body["max_tokens"] = 16000
    if case.behaviour == "n2":
        body["n"] = 2
    return body


def _prepare(provider: FakeProvider, case: Case) -> None:
    provider.output = "content" if case.output == "tool_calls" else case.output
    # Wide gaps where the client leaves between two events (the gateway must see it gone
    # before the next one), narrow ones elsewhere.
    interval = 0.15 if case.behaviour in ("after_role", "mid_output") else 0.02
    mode = {"clean": "slow_stream", "cut": "cut", "inband_error": "inband_error",
            "deadline": "stall"}[case.ending]
    provider.fail(mode, interval=interval, after=FAIL_AFTER)
    if case.behaviour == "before_first_byte":
        provider.delay = 0.4


def _kind(payload: dict[str, Any]) -> set[str]:
    kinds = set()
    if "error" in payload:
        kinds.add("error")
    if payload.get("usage"):
        kinds.add("usage")
    for choice in payload.get("choices") or []:
        delta = choice.get("delta") or {}
        if delta.get("role"):
            kinds.add("role")
        # The SPEC's rule, written here on its own (not the gateway's `inspect`).
        if any(k != "role" and v not in (None, "", [], {}) for k, v in delta.items()):
            kinds.add("output")
        if choice.get("finish_reason"):
            kinds.add("finish")
    return kinds


def _leaves(case: Case, kinds: set[str], finishes: int) -> bool:
    b = case.behaviour
    if b == "after_role":
        return "role" in kinds
    if b == "mid_output":
        return "output" in kinds
    if b == "after_finish":
        return "finish" in kinds
    if b == "before_done":  # the last event before [DONE]: usage, or the last finish
        return "usage" in kinds if case.include_usage else finishes == case.replies
    return False


def run_client(gw: RunningGateway, key: str, case: Case) -> tuple[list[str], bool]:
    """Send the case's request and behave as it says: the data lines it read, and whether
    it left before the end."""
    lines: list[str] = []
    with gw.client(key) as c:
        if case.behaviour == "before_first_byte":
            with pytest.raises(httpx.ReadTimeout):
                c.post(CHAT, json=_body(case), timeout=httpx.Timeout(10, read=0.15))
            return lines, True
        finishes = 0
        with c.stream("POST", CHAT, json=_body(case)) as r:
            assert r.status_code == 200, r.read()
            for line in r.iter_lines():  # leaving this loop closes the connection
                if not line.startswith("data: "):
                    continue
                lines.append(line)
                if line == "data: [DONE]":
                    continue
                kinds = _kind(orjson.loads(line.removeprefix("data: ")))
                finishes += "finish" in kinds
                if _leaves(case, kinds, finishes):
                    return lines, True
                if case.behaviour == "slow_read":
                    time.sleep(0.05)
    return lines, False


def _wait(condition: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("case", list(cases()))
def test_freeride_matrix(freeride_gateway: RunningGateway, provider: FakeProvider,
                         tally: Tally, case: Case) -> None:
    gw = freeride_gateway
    ws, key = gw.workspace("enterprise", custom_allotment=ALLOTMENT)
    _prepare(provider, case)
    lines, left = run_client(gw, key, case)
    assert _wait(lambda: provider.count() == 1, 5)
    assert _wait(lambda: gw.balance(key)["reserved"] == 0, 5), "the hold was not resolved"
    expected = case.expected()
    rows = gw.wait_ledger(ws, 1 if expected else 0, timeout=2.0)
    charged = sum(r["credits"] for r in rows)
    balance = gw.balance(key)["balance"]

    tally.cases += 1
    tally.expected += expected
    tally.charged += charged
    tally.entries += len(rows)
    tally.free_rides += charged < expected
    tally.overcharged += charged > expected
    problems = []
    if charged != expected or len(rows) != (1 if expected else 0):
        problems.append(f"charged {charged} in {len(rows)} entries, expected {expected}")
    if balance != ALLOTMENT - expected:
        problems.append(f"balance {balance}, expected {ALLOTMENT - expected}")
    if not left:  # what a client that stayed saw at the end
        last = lines[-1]
        if case.ending == "clean":
            if last != "data: [DONE]":
                problems.append(f"a clean stream ended with {last[:80]}")
        elif last.startswith("data: {\"error\""):
            code = orjson.loads(last[6:])["error"]["code"]
            want = "upstream_timeout" if case.ending == "deadline" else "upstream_error"
            if code != want:
                problems.append(f"ended with error {code}, expected {want}")
        else:
            problems.append(f"a broken stream ended with {last[:80]}")
    if problems:
        tally.violations = [*(tally.violations or []), f"{case.id}: {'; '.join(problems)}"]
    assert not problems, problems


# ---- the rules underneath, one by one

@pytest.mark.parametrize(("delta", "output"), [
    ({"role": "assistant"}, False),
    ({"role": "assistant", "content": "", "refusal": None}, False),
    ({}, False),
    ({"content": "Hi"}, True),
    ({"tool_calls": [{"index": 0, "function": {"name": "f"}}]}, True),
    ({"refusal": "No"}, True),
    ({"content": None, "reasoning_content": "Hmm"}, True),  # DeepSeek, vLLM
    ({"reasoning": "Hmm"}, True),  # OpenRouter, newer vLLM
    ({"audio": {"id": "audio_1", "transcript": "Hi"}}, True),
    ({"audio": {"data": "AAAA"}}, True),
    ({"function_call": {"name": "f"}}, True),
])
def test_any_delta_beyond_the_role_is_output(delta: dict[str, Any], output: bool) -> None:
    payload = orjson.dumps({"id": "c", "choices": [{"index": 0, "delta": delta,
                                                    "finish_reason": None}]})
    assert inspect(payload) == (output, None)


def test_litellm_passes_reasoning_on() -> None:
    """Anthropic thinking reaches the client as `reasoning_content`, so it counts as output."""
    delta = SimpleNamespace(role=None, content=None, tool_calls=None,
                            reasoning_content="Let me think")
    chunk = SimpleNamespace(id="c1", created=1, model="claude-haiku-4-5",
                            choices=[SimpleNamespace(index=0, delta=delta, finish_reason=None)])
    out = chunk_payload(chunk)
    assert out is not None
    assert out["choices"][0]["delta"] == {"reasoning_content": "Let me think"}
    assert inspect(orjson.dumps(out))[0]


@pytest.mark.parametrize("ttl", ["5", "4"])
def test_hold_ttl_must_outlive_the_deadline(tmp_path: Path, fake: FakeProvider,
                                            ttl: str) -> None:
    pricing = tmp_path / "pricing.toml"
    pricing.write_text(harness.test_pricing(fake))
    with pytest.raises(SettingsError, match="BOOKBAG_HOLD_TTL"):
        sqlite_settings(tmp_path, pricing, BOOKBAG_PROVIDER_TIMEOUT="2,2,5", BOOKBAG_HOLD_TTL=ttl)


def test_idempotency_lease_outlives_the_deadline(freeride_gateway: RunningGateway) -> None:
    gw = freeride_gateway.gw
    assert gw.idempotency is not None
    assert gw.idempotency.lease == freeride_gateway.settings.hold_ttl
    assert gw.idempotency.lease > freeride_gateway.settings.provider_timeouts.total


def test_the_deadline_is_its_own_error() -> None:
    """The deadline is told apart from the provider falling silent (which is not charged)."""
    from gateway.errors import DeadlineExceeded, UpstreamTimeout, deadline_exceeded

    err = deadline_exceeded("gpt-4o-mini", 1.5)
    assert isinstance(err, DeadlineExceeded) and isinstance(err, UpstreamTimeout)
    assert err.code == "upstream_timeout" and "1.5 s" in str(err.body())


@pytest.mark.slow  # imports litellm (seconds)
@pytest.mark.parametrize(("ending", "charged"), [("deadline", 2), ("cut", 0)])
def test_litellm_stream_deadline_after_delivery_is_charged(
    tmp_path: Path, fake: FakeProvider, provider: FakeProvider, ending: str, charged: int,
) -> None:
    """The Anthropic route (litellm): the gateway's deadline after delivered output charges,
    a provider break does not."""
    pricing = tmp_path / "pricing.toml"
    pricing.write_text(harness.test_pricing(fake))
    with running(sqlite_settings(tmp_path, pricing, BOOKBAG_PROVIDER_TIMEOUT="3,4,4")) as gw:
        ws, key = gw.workspace("enterprise", custom_allotment=ALLOTMENT)
        provider.fail("stall" if ending == "deadline" else "cut", after=FAIL_AFTER,
                      interval=0.02, path="/v1/messages")
        body = {"model": "claude-haiku-4-5", "max_tokens": 100, "stream": True,
                "messages": [{"role": "user", "content": PROMPT}]}
        with gw.client(key) as c, c.stream("POST", CHAT, json=body) as r:
            assert r.status_code == 200
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        last = orjson.loads(lines[-1].removeprefix("data: "))
        assert last["error"]["code"] == ("upstream_timeout" if ending == "deadline"
                                         else "upstream_error")
        assert _wait(lambda: gw.balance(key)["reserved"] == 0, 5)
        rows = gw.wait_ledger(ws, 1 if charged else 0, timeout=2.0)
        assert sum(r["credits"] for r in rows) == charged
        assert gw.balance(key)["balance"] == ALLOTMENT - charged
