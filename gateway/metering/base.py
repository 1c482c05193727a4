"""The Meter interface and what every backend shares.

reserve -> Hold (atomic: enough credits or InsufficientCredits, allotment
first, then top-ups); then exactly one of settle (the reply succeeded: the
charge and its ledger entry, atomically) or void (it failed: credits go
back to the buckets they came from; an allotment refund after its period
ended lapses). A second settle or void of the same hold is a no-op.

Beyond `Meter`, a backend may offer optional capabilities, each a named
protocol callers test with `isinstance` (never `getattr`): `Pingable`
(readiness), `Syncs` (re-read plans and grants now), `KnowsCharges` (crash
recovery asks whether a request was charged), `HasOutbox` (its ledger
writes feed the metrics), `CountsHolds` / `CountsHoldsRemotely` (holds in
flight).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol, runtime_checkable

from gateway.errors import InsufficientCredits
from gateway.types import Balance, Cap, EntryKind, Hold, LedgerEntry

# (plan, custom allotment) -> the credits a period grants: the catalog's answer, injected.
AllotmentOf = Callable[[str, int | None], int]


class Meter(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def reserve(self, workspace_id: str, credits: int, request_id: str,
                      caps: tuple[Cap, ...] = ()) -> Hold:
        """Take `credits` from the balance for one request, or raise InsufficientCredits.

        In the same atomic step, each cap's usage for the period (charged + held)
        grows by `credits`, or SpendCapReached when one would pass its cap (the
        balance is checked first: when both refuse, InsufficientCredits wins).
        A void gives the cap usage back in the step that gives the credits back.
        """
        ...

    async def settle(self, hold: Hold, entry: LedgerEntry,
                     credits: int | None = None) -> Balance | None:
        """Charge the hold and write its ledger entry; durable when this returns.

        `credits` (0 < credits <= hold.credits; None: the whole hold) trims the charge: a
        fallback that answered with a cheaper model. The charge takes the allotment first
        (`trim`); the rest goes back to its buckets and caps in the same atomic step.

        Returns the balance right after the charge when the backend read it in the same
        step (what `balance()` would return then), else None: callers then ask `balance()`.
        """
        ...

    async def void(self, hold: Hold) -> None:
        """Give the hold's credits back."""
        ...

    async def balance(self, workspace_id: str) -> Balance:
        ...

    async def cap_usage(self, workspace_id: str, caps: tuple[Cap, ...]) -> dict[str, int]:
        """Spend caps: each cap subject's credits charged or held in the current period."""
        ...

    async def grant(self, entry: LedgerEntry) -> bool:
        """Apply an allotment, top-up or adjustment entry once; False if it existed."""
        ...

    async def sweep(self) -> None:
        """Void every hold past its expiry (its request never resolved it); run by a timer."""
        ...



# --- optional capabilities --------------------------------------------------------


@runtime_checkable
class Pingable(Protocol):
    """A meter whose store metered requests need up (Redis): `/readyz` asks it."""

    async def ping(self) -> bool:
        """Whether the store answers now; at most about one timeout."""
        ...


@runtime_checkable
class Syncs(Protocol):
    """A meter that caches plans and grants: a plan change makes it re-read them at once."""

    async def sync(self) -> None: ...


@runtime_checkable
class KnowsCharges(Protocol):
    """A meter whose charges reach SQL later (an outbox): only it can say whether a request was
    charged (idempotency's crash recovery asks it instead of the ledger)."""

    async def charged(self, request_id: str, workspace_id: str | None = None) -> bool:
        """With the workspace, only its shard is asked (a shard down elsewhere does not matter)."""
        ...


@runtime_checkable
class CommitFeed(Protocol):
    """A ledger writer that reports each commit: (writes, seconds its oldest waited)."""

    on_commit: Callable[[int, float], None] | None


@runtime_checkable
class HasOutbox(Protocol):
    """A meter whose charges go to SQL through its own writer (`/metrics` counts its commits)."""

    @property
    def outbox(self) -> CommitFeed | None: ...


@runtime_checkable
class CountsHolds(Protocol):
    """A meter that holds its reservations in this process."""

    def holds_in_flight(self) -> int: ...


@runtime_checkable
class CountsHoldsRemotely(Protocol):
    """A meter whose holds live in a store it asks (Redis: every gateway's holds)."""

    async def count_holds(self) -> int: ...


def insufficient(balance: int, cost: int, renews_on: str) -> InsufficientCredits:
    return InsufficientCredits(
        f"Insufficient credits: this request costs {cost} credit{'s' if cost != 1 else ''} "
        f"and the workspace balance is {balance}. The allotment renews on {renews_on}; "
        "top up to continue before then."
    )


def plan_at(plan: str, custom: int | None, pending_plan: str | None, pending_custom: int | None,
            pending_from: str | None, period_start: str) -> tuple[str, int | None]:
    """The (plan, custom allotment) a workspace is on in the period starting `period_start`.

    A downgrade is stored as pending from the next period start; every renewal
    (each meter, the CLI's plan change) asks this one function, so the new plan
    applies from exactly that period, whoever renews it.
    """
    if pending_plan is not None and pending_from is not None and period_start >= pending_from:
        return pending_plan, pending_custom
    return plan, custom


def renewal_entry(workspace_id: str, period_start: str, allotment: int, at_ms: int) -> LedgerEntry:
    """The allotment grant opening a period; its request_id makes it happen once."""
    return LedgerEntry(
        request_id=f"allotment:{workspace_id}:{period_start}",
        workspace_id=workspace_id,
        kind=EntryKind.ALLOTMENT,
        billing_mode=None,
        credits=allotment,
        allotment_delta=allotment,
        period_start=period_start,
        ref=f"period:{period_start}",
        actor="gateway:renewal",
        created_ms=at_ms,
    )


def trim(hold: Hold, credits: int | None) -> tuple[Hold, Hold | None]:
    """(what is charged, what goes back) of a hold settled for `credits`: the charge takes
    the allotment first, as reserve did. `None` or the whole hold: nothing goes back."""
    if credits is None or credits == hold.credits:
        return hold, None
    if not 0 <= credits < hold.credits:
        raise ValueError(f"a settle may charge 0..{hold.credits} credits, not {credits}")
    from_allotment = min(credits, hold.from_allotment)
    charged = replace(hold, credits=credits, from_allotment=from_allotment,
                      from_topups=credits - from_allotment)
    rest = replace(hold, credits=hold.credits - credits,
                   from_allotment=hold.from_allotment - from_allotment,
                   from_topups=hold.from_topups - charged.from_topups)
    return charged, rest


def charge(entry: LedgerEntry, hold: Hold) -> LedgerEntry:
    """Fill a reply entry with what its hold took from each bucket."""
    entry.credits = hold.credits
    entry.allotment_delta = -hold.from_allotment
    entry.topup_delta = -hold.from_topups
    entry.period_start = hold.period_start
    return entry


def midnight_utc(day: str) -> float:
    """Epoch seconds of an ISO date's start, UTC (where `period_of` draws its lines): meters
    cache the current period's bounds as these, to skip `period_of` within it."""
    return dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp()
