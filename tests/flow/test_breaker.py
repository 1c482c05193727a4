"""The fallbacks' circuit breaker on the injected clock: closed -> open -> half-open."""

from __future__ import annotations

from gateway.clock import ManualClock
from gateway.flow.breaker import CLOSED, HALF_OPEN, OPEN, Breakers


def test_it_opens_after_k_failures_and_half_opens_after_the_cooldown() -> None:
    clock = ManualClock(1000.0)
    b = Breakers(clock, failures=3, cooldown=30.0)
    b.failed("m")
    b.failed("m")
    b.succeeded("m")  # a success in between: the count starts again
    b.failed("m")
    b.failed("m")
    assert b.state("m") == CLOSED and b.allows("m")
    b.failed("m")
    assert b.state("m") == OPEN and not b.allows("m")
    clock.advance(29.9)
    assert not b.allows("m")
    clock.advance(0.1)
    assert b.state("m") == HALF_OPEN and b.allows("m")
    b.failed("m")  # the trial failed: open for another cool-down
    assert b.state("m") == OPEN
    clock.advance(30)
    b.succeeded("m")
    assert b.state("m") == CLOSED and b.states() == {"m": CLOSED}
    assert b.state("other") == CLOSED and "other" not in b.states()


def test_half_open_lets_one_trial_through_until_it_reports() -> None:
    clock = ManualClock(1000.0)
    b = Breakers(clock, failures=1, cooldown=30.0)
    assert b.trial("m") == CLOSED  # closed: every call, no trial taken
    b.failed("m")
    assert b.trial("m") == OPEN
    clock.advance(30)
    assert b.allows("m") and b.trial("m") == HALF_OPEN  # this call is the trial
    assert not b.allows("m") and b.trial("m") == OPEN  # the others skip it meanwhile
    b.release("m")  # the trial's client left: no verdict, the next may try
    assert b.trial("m") == HALF_OPEN
    b.failed("m")  # the trial failed: open for another cool-down
    assert b.state("m") == OPEN and b.trial("m") == OPEN
    clock.advance(30)
    assert b.trial("m") == HALF_OPEN
    b.succeeded("m")
    assert b.state("m") == CLOSED and b.trial("m") == CLOSED and b.trial("m") == CLOSED


def test_a_trial_that_never_reports_frees_the_model_after_a_cooldown() -> None:
    clock = ManualClock(1000.0)
    b = Breakers(clock, failures=1, cooldown=30.0)
    b.failed("m")
    clock.advance(30)
    assert b.trial("m") == HALF_OPEN
    clock.advance(29.9)
    assert b.state("m") == HALF_OPEN and not b.allows("m")
    clock.advance(0.1)  # the trial's lease ran out
    assert b.allows("m") and b.trial("m") == HALF_OPEN
