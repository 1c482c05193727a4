"""The circuit breaker of fallback chains: a model that keeps failing is skipped for a while.

Per model, per process (each gateway learns on its own traffic; nothing is shared):

    closed     every request tries the model; `failures` consecutive failures -> open
    open       chains skip the model until `cooldown` seconds passed -> half-open
    half-open  requests try it again: a success closes it, a failure opens it for
               another cool-down

Only models tried inside a chain (an entry with fallbacks, or a member of one) are
counted: a model without fallbacks has nowhere to go, so nothing skips it. A failure is
what a chain falls back on (5xx, 429, timeout, connection error, no first byte in time);
a client's 400 is not the model's fault. Time comes from the injected clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.clock import Clock

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"


@dataclass(slots=True)
class _State:
    failures: int = 0  # consecutive
    opened_at: float | None = None  # when it last opened; None while closed


class Breakers:
    def __init__(self, clock: Clock, *, failures: int, cooldown: float) -> None:
        self._clock = clock
        self._threshold = failures
        self._cooldown = cooldown
        self._states: dict[str, _State] = {}

    def state(self, model_id: str) -> str:
        st = self._states.get(model_id)
        if st is None or st.opened_at is None:
            return CLOSED
        return HALF_OPEN if self._clock.now() - st.opened_at >= self._cooldown else OPEN

    def allows(self, model_id: str) -> bool:
        """May a chain try this model now (closed or half-open)?"""
        return self.state(model_id) != OPEN

    def failed(self, model_id: str) -> None:
        st = self._states.setdefault(model_id, _State())
        st.failures += 1
        if st.failures >= self._threshold or st.opened_at is not None:
            st.opened_at = self._clock.now()  # opens, or a half-open trial failed: again

    def succeeded(self, model_id: str) -> None:
        st = self._states.get(model_id)
        if st is not None:
            st.failures, st.opened_at = 0, None

    def states(self) -> dict[str, str]:
        """Every model a chain has tried, and its state (the metrics' gauge)."""
        return {model_id: self.state(model_id) for model_id in self._states}
