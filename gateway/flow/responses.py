"""The Responses route's own steps in the flow, once the billing decision is known.

- Tenancy (gateway/dialects/responses/tenancy.py): on the house's keys `store` is forced
  off unless the workspace opted in (its `responses_store`), or the operator for every
  workspace (BOOKBAG_RESPONSES_STORE, `stores` below), `prompt` / `conversation` /
  item references are refused, and a `previous_response_id` is accepted only when the
  gateway returned that id to the same workspace. That last rule needs a look-up of
  what the gateway recorded (`ResponseOwners`), made before anything is reserved.
- The billed features of a Responses body (gateway/flow/billed_responses.py).
- The id of the Response the client receives, for the ledger entry (`response_id`) and
  for the owners' memory of what was issued.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol

from gateway.dialects.responses.ids import event_response_id, reply_response_id
from gateway.dialects.responses.tenancy import apply_tenancy, refuse_shared_state
from gateway.flow import billed_responses
from gateway.types import Caller, LedgerEntry, ModelEntry


class ResponseOwners(Protocol):
    """Which workspace the gateway gave a Response id to."""

    async def owns(self, workspace_id: str, response_id: str) -> bool:
        """The gateway returned `response_id` to `workspace_id` (off the event loop)."""
        ...

    def issued(self, workspace_id: str, response_id: str) -> None:
        """The gateway is returning `response_id` to `workspace_id` now."""
        ...


class RecentResponses:
    """The ids this process issued lately, per workspace: a follow-up request may come
    before the ledger entry naming its id is written (an unmetered entry is queued, the
    Redis meter's outbox drains later). Bounded: the oldest are forgotten first, the
    ledger remembers them."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._ids: OrderedDict[tuple[str, str], None] = OrderedDict()

    def issued(self, workspace_id: str, response_id: str) -> None:
        self._ids[(workspace_id, response_id)] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)

    def recent(self, workspace_id: str, response_id: str) -> bool:
        return (workspace_id, response_id) in self._ids

    async def owns(self, workspace_id: str, response_id: str) -> bool:
        return self.recent(workspace_id, response_id)


async def prepare(owners: ResponseOwners, model: ModelEntry, caller: Caller,
                  body: dict[str, Any], *, house_pays: bool, stores: bool) -> None:
    """Tenancy, then the billed features: 400s before anything is reserved. `stores`: the
    operator passes `store` on for every workspace (else the caller's workspace decides)."""
    refuse_shared_state(body, house_pays=house_pays)  # before any look-up
    previous = body.get("previous_response_id")
    owned = False
    if house_pays and isinstance(previous, str):
        owned = await owners.owns(caller.workspace_id, previous)
    apply_tenancy(body, workspace_id=caller.workspace_id, house_pays=house_pays,
                  workspace_stores=stores or caller.responses_store,
                  owns=lambda _ws, _id: owned)
    billed_responses.check(model, body, house_pays=house_pays)


def record_reply(owners: ResponseOwners, entry: LedgerEntry, body: bytes) -> None:
    """A JSON Response: its id on the ledger entry, and remembered as issued."""
    _record(owners, entry, reply_response_id(body))


def record_stream(owners: ResponseOwners, entry: LedgerEntry, first: bytes) -> None:
    """A stream: the id `response.created` (its first event) names."""
    _record(owners, entry, event_response_id(first))


def _record(owners: ResponseOwners, entry: LedgerEntry, response_id: str | None) -> None:
    entry.response_id = response_id
    if response_id is not None:
        owners.issued(entry.workspace_id, response_id)
