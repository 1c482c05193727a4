"""The circuit breaker of fallback chains: a model that keeps failing is skipped for a while.

Per model, per process (each gateway learns on its own traffic; nothing is shared):

    closed     every request tries the model; `failures` consecutive failures -> open
    open       chains skip the model until `cooldown` seconds passed -> half-open
    half-open  one request tries it (the trial); the others skip it while the trial is
               out. A success closes it, a failure opens it for another cool-down. A
               trial that never reports (its client left, or a client error the model is
               not blamed for) frees the model for the next trial, at the latest after
               another `cooldown`.

Without the single trial, every request arriving in the half-open window would wait on a
provider that may still be down, up to its first-byte budget each.

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
    trial_at: float | None = None  # when a half-open trial started; None when none is out


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
        """May a chain include this model now: closed, or half-open with no trial out?"""
        state = self.state(model_id)
        return state == CLOSED or (state == HALF_OPEN and not self._trial_out(model_id))

    def trial(self, model_id: str) -> str:
        """Right before a chain calls the model: CLOSED, call it; HALF_OPEN, call it, this
        call is its trial (the others are refused until it reports: `failed`,
        `succeeded`, or `release`); OPEN, refused."""
        if not self.allows(model_id):
            return OPEN
        st = self._states.get(model_id)
        if st is None or st.opened_at is None:
            return CLOSED
        st.trial_at = self._clock.now()
        return HALF_OPEN

    def release(self, model_id: str) -> None:
        """The trial ended without a verdict on the model (the client left, or it was the
        client's error): the next request may try."""
        st = self._states.get(model_id)
        if st is not None:
            st.trial_at = None

    def failed(self, model_id: str) -> None:
        st = self._states.setdefault(model_id, _State())
        st.failures += 1
        st.trial_at = None
        if st.failures >= self._threshold or st.opened_at is not None:
            st.opened_at = self._clock.now()  # opens, or a half-open trial failed: again

    def succeeded(self, model_id: str) -> None:
        st = self._states.get(model_id)
        if st is not None:
            st.failures, st.opened_at, st.trial_at = 0, None, None

    def _trial_out(self, model_id: str) -> bool:
        st = self._states.get(model_id)
        return st is not None and st.trial_at is not None \
            and self._clock.now() - st.trial_at < self._cooldown

    def states(self) -> dict[str, str]:
        """Every model a chain has tried, and its state (the metrics' gauge)."""
        return {model_id: self.state(model_id) for model_id in self._states}
