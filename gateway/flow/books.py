"""The books: settle or void a hold (metered), or record a zero-credit entry (unmetered).

`Settlement` decides *when* a reply is resolved and makes it happen once;
these are the steps it runs. Callers shield them (Settlement runs each in a
shielded task), so the meter calls here are not shielded one by one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from gateway.crashpoints import Crash, no_crash
from gateway.errors import ChargeUnconfirmed, GatewayError, ServiceUnavailable
from gateway.idempotency.service import Claim
from gateway.idempotency.store import StoredResponse
from gateway.ledger.recorder import Recorder
from gateway.metering.base import Meter
from gateway.types import Balance, Hold, LedgerEntry

AfterCharge = Callable[[Hold, Balance | None], None]  # schedules auto-recharge and balance events


@dataclass(slots=True)
class Books:
    meter: Meter
    recorder: Recorder
    after_charge: AfterCharge | None = None
    crash: Crash = no_crash  # test-only crash points (crashpoints.py); a no-op in production

    def after(self, hold: Hold | None, charge: bool, balance: Balance | None = None) -> None:
        """A metered reply was settled: let auto-recharge and the balance events look."""
        if charge and hold is not None and self.after_charge is not None:
            self.after_charge(hold, balance)

    async def resolve(self, hold: Hold | None, entry: LedgerEntry, *,
                      charge: bool, credits: int | None = None) -> Balance | None:
        """Settle or void the hold (metered), or record the entry (unmetered).
        Returns the balance after a settle when the meter read it on the way (else None).
        `credits`: charge less than the hold (a fallback answered with a cheaper model)."""
        if hold is None:
            if charge:
                await self.recorder.record(entry)
                self.crash("after_settle")
            return None
        try:
            if charge:
                balance = await self.meter.settle(hold, entry, credits)
                self.crash("after_settle")
                return balance
            await self.meter.void(hold)
            self.crash("after_void")
            return None
        except Exception as exc:
            if not charge:  # the hold stays until it expires: nothing is charged either way
                if isinstance(exc, GatewayError):
                    raise
                raise ServiceUnavailable("The hold could not be released; it expires.") from exc
            # A failed settle may still have been applied (its reply lost with the connection,
            # or run late by a store that was paused), so "not charged" could be false. Give
            # the credits back if the hold is still there (a void fences out a late settle),
            # and say that the charge is unconfirmed.
            with contextlib.suppress(Exception):
                await self.meter.void(hold)
            raise ChargeUnconfirmed(
                "The reply's charge could not be confirmed: it was charged once or not at all. "
                "Retry with the same Idempotency-Key to get this reply without a second charge.",
                headers={"x-should-retry": "false"},  # an SDK retry without the key could
            ) from exc                                # charge a second reply

    async def resolve_claimed(self, claim: Claim, hold: Hold | None, entry: LedgerEntry, *,
                              charge: bool, response: StoredResponse | None,
                              credits: int | None = None) -> Balance | None:
        """`resolve` for a request holding an Idempotency-Key: the response is staged
        before the charge and the key marked done after it; nothing charged releases it.
        A failed settle keeps the key (it may have committed): the idempotency service
        recovers it from the ledger."""
        if not charge:
            try:
                await self.resolve(hold, entry, charge=False)
            finally:
                await claim.release()
            return None
        if response is not None:
            try:
                await claim.stage(response)
            except BaseException as exc:
                try:
                    if hold is None and isinstance(exc, Exception):
                        # Unmetered: no charge to protect; the reply never fails for the key.
                        return await self.resolve(hold, entry, charge=True, credits=credits)
                    await self.resolve(hold, entry, charge=False)
                finally:
                    await claim.release()
                raise
        balance = await self.resolve(hold, entry, charge=True, credits=credits)
        await claim.finish()
        return balance
