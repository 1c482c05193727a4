"""Named crash points: a TEST-ONLY way to make the gateway process die abruptly at one step.

    BOOKBAG_TEST_CRASH_AT=<point>             exit the first time <point> is reached
    BOOKBAG_TEST_CRASH_AT=<point>:<n>         exit the n-th time (an integer >= 1)
    BOOKBAG_TEST_CRASH_AT=<point>:<p>         exit each time with probability p (0 < p <= 1, e.g. 0.2)

The process calls `os._exit(137)` (what a `kill -9` reports): no `finally`,
no shutdown, no flush — the guarantees suite (tests/guarantees) uses it to
show that a crash at any step loses no charge and makes none twice. Unset (the
default, and the only sane value in production) the flow's `crash` is a
no-op function and nothing else changes.

The points, in the order a request meets them (gateway/flow/chat.py, settlement.py, books.py):

    after_claim     an Idempotency-Key was claimed
    after_reserve   the hold was taken
    after_provider  the provider answered (a stream: it finished), before settling
    after_settle    the charge (or an unmetered entry) is durable, before the reply is sent
    mid_stream      the first content of a stream reached the client
    after_void      a hold was given back after a failure
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("bookbag.crashpoints")

POINTS = ("after_claim", "after_reserve", "after_provider", "after_settle", "mid_stream",
          "after_void")
EXIT_CODE = 137  # 128 + SIGKILL: the crash looks like `kill -9` to whoever waits on the process
Crash = Callable[[str], None]


def no_crash(point: str) -> None:
    """The production crash point: does nothing."""


@dataclass(frozen=True, slots=True)
class CrashSpec:
    point: str
    nth: int | None = None  # exit the n-th time the point is reached
    probability: float | None = None  # else exit each time with this probability

    @classmethod
    def parse(cls, raw: str) -> CrashSpec:
        """`<point>[:<n or probability>]`; ValueError with the reason when malformed."""
        point, _, arg = raw.strip().partition(":")
        if point not in POINTS:
            raise ValueError(f"unknown crash point {point!r}; one of {', '.join(POINTS)}")
        if not arg:
            return cls(point, nth=1)
        try:
            if "." in arg or "e" in arg.lower():
                probability = float(arg)
                if not 0 < probability <= 1:
                    raise ValueError
                return cls(point, probability=probability)
            nth = int(arg)
            if nth < 1:
                raise ValueError
            return cls(point, nth=nth)
        except ValueError:
            raise ValueError(
                f"the crash point argument must be an integer >= 1 or a probability in (0, 1], "
                f"got {arg!r}") from None


def crasher(raw: str | None, *, exit: Callable[[int], object] = os._exit,
            rng: Callable[[], float] = random.random) -> Crash:
    """The `crash(point)` function for a setting value (None: the no-op)."""
    if not raw:
        return no_crash
    spec = CrashSpec.parse(raw)
    log.warning("BOOKBAG_TEST_CRASH_AT=%s: this process will exit abruptly at %s (test-only "
                "setting; never set it in production)", raw, spec.point)
    seen = [0]

    def crash(point: str) -> None:
        if point != spec.point:
            return
        seen[0] += 1
        if spec.nth is not None and seen[0] != spec.nth:
            return
        if spec.probability is not None and rng() >= spec.probability:
            return
        log.critical("crash point %s reached (%d): exiting with %d", point, seen[0], EXIT_CODE)
        for handler in logging.getLogger().handlers:  # the line above is all that is flushed
            handler.flush()
        exit(EXIT_CODE)

    return crash
