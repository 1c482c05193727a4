"""Settlement: a reply's money, resolved exactly once, shielded from cancellation.

From the reserve on, a request's hold (metered) or zero-credit entry
(unmetered) belongs to a `Settlement`. It is resolved once, whichever comes
first of:
  - `charge(stored)`: a JSON reply is ready (settle the hold / record the entry);
  - `end(...)`: a stream ended; the charging rule below decides charge or void;
  - `abandon()`: the request failed before a reply existed (void, release the key).
Later calls do nothing, so no path can settle twice or void a settled hold.
Each resolution runs in its own task under `asyncio.shield`: a client that
leaves (or a server that cancels the request) mid-settle cannot cut it short.

The stream's charging rule: charged when it completed, or when output was
delivered and then the client left or the gateway's own deadline ended it
(the provider bills both); a provider that broke off is never charged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from gateway.errors import DeadlineExceeded, GatewayError, UpstreamError
from gateway.flow.books import Books
from gateway.idempotency.service import Claim, sse_response
from gateway.idempotency.store import StoredResponse
from gateway.types import Balance, Hold, LedgerEntry

log = logging.getLogger("bookbag.settlement")
T = TypeVar("T")


def _nothing() -> None:
    return None


def stream_charged(*, completed: bool, delivered: bool, client_gone: bool,
                   error: GatewayError | None) -> bool:
    """Is a stream that ended this way charged? (the module docstring's rule)"""
    return completed or (delivered and (client_gone or isinstance(error, DeadlineExceeded)))


class Settlement:
    def __init__(self, books: Books, entry: LedgerEntry, claim: Claim | None = None) -> None:
        self.books = books
        self.entry = entry
        self.claim = claim
        self.hold: Hold | None = None  # set once the meter reserved it
        self.credits: int | None = None  # charge less than the hold: a cheaper fallback answered
        self.resolved = False
        self.charged = False
        self.delivered = False  # a stream's output reached the client
        # Every event a stream's client received: kept only to store its replay.
        self.events: list[bytes] | None = None
        self._replay_headers: dict[str, str] = {}
        self._on_end: Callable[[], None] = _nothing
        self._started = 0.0

    # --- a stream's side -------------------------------------------------------

    def streaming(self, headers: dict[str, str], *, started: float,
                  on_end: Callable[[], None]) -> None:
        """This reply is a stream: keep its events if its key must replay them;
        `on_end` (the in-flight slot) runs when it ends; latency counts from `started`."""
        self.events = [] if self.claim is not None else None
        self._replay_headers = headers
        self._started = started
        self._on_end = on_end

    def output_delivered(self) -> None:
        """The writer flushed output to the client (called at each such flush)."""
        self.delivered = True
        self.books.crash("mid_stream")

    async def end(self, *, completed: bool, client_gone: bool, error: GatewayError | None,
                  usage: dict[str, Any] | None) -> GatewayError | None:
        """The stream ended: charge or void by the rule. Returns the error the client
        should see instead of the end marker when recording the reply failed."""
        if self.resolved:
            return None
        self.resolved = True
        charge = stream_charged(completed=completed, delivered=self.delivered,
                                client_gone=client_gone, error=error)
        try:
            await _shielded(self._end_stream(charge, completed, usage))
        except GatewayError as exc:
            return exc
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("settling a stream failed")
            return UpstreamError("The reply could not be recorded; it was not charged.")
        return None

    async def _end_stream(self, charge: bool, completed: bool,
                          usage: dict[str, Any] | None) -> None:
        self._on_end()  # the stream has ended: its in-flight slot is free
        entry = self.entry
        entry.latency_ms = int((time.perf_counter() - self._started) * 1000)
        if usage:
            entry.prompt_tokens = usage.get("prompt_tokens")
            entry.completion_tokens = usage.get("completion_tokens")
        if charge:
            self.books.crash("after_provider")
        if self.claim is None:
            balance = await self.books.resolve(self.hold, entry, charge=charge,
                                               credits=self.credits)
        else:
            # Only a stream that reached its end is replayable; one whose client left
            # after content is charged and marked done without a response.
            stored = sse_response(self.events, self._replay_headers) \
                if self.events is not None and completed else None
            balance = await self.books.resolve_claimed(self.claim, self.hold, entry,
                                                       charge=charge, response=stored,
                                                       credits=self.credits)
        self.charged = charge
        self.books.after(self.hold, charge, balance)

    # --- a JSON reply and failures ---------------------------------------------

    async def charge(self, stored: StoredResponse | None = None) -> Balance | None:
        """Charge the finished reply (durable when this returns); with a key, `stored`
        is staged first. Returns the balance if the meter read it."""
        if self.resolved:
            return None
        self.resolved = True
        if self.claim is None:
            balance = await _shielded(self.books.resolve(self.hold, self.entry, charge=True,
                                                         credits=self.credits))
        else:
            balance = await _shielded(self.books.resolve_claimed(
                self.claim, self.hold, self.entry, charge=True, response=stored,
                credits=self.credits))
        self.charged = True
        return balance

    async def abandon(self) -> None:
        """The request failed before its reply: void the hold, give the key back.
        The one place a failure voids; after a resolution it only releases the key
        (a no-op once staged: the settle may have committed)."""
        if self.resolved:
            if self.claim is not None:
                await self.claim.release()
            return
        self.resolved = True
        if self.claim is None:
            await _shielded(self.books.resolve(self.hold, self.entry, charge=False))
        else:
            await _shielded(self.books.resolve_claimed(self.claim, self.hold, self.entry,
                                                       charge=False, response=None))


async def _shielded(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to its end even if the caller is cancelled meanwhile."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_retrieve)  # it goes on; its outcome is only logged
        raise


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("a settlement finished with an error after its request was cancelled",
                    exc_info=task.exception())
