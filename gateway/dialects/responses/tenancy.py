"""No state across tenants on the house's provider keys (SPEC "Three dialects, one meter").

The Responses API can keep state on the provider's side: stored responses (`store`, on by
default), `previous_response_id`, stored prompts (`prompt`), conversations
(`conversation`), references to stored items (`item_reference`). On the house's keys that
state would live in one provider account shared by every workspace, so:

- `store` is forced to false unless the workspace opted in (sent explicitly: the API's
  default is true);
- `previous_response_id` is accepted only for a response id the gateway returned to the
  same workspace (`owns`, a lookup in what the gateway recorded); any other id gets the
  API's own "not found", so an id of another tenant is indistinguishable from none;
- `prompt`, `conversation` and `item_reference` inputs are refused (nothing records whose
  they are).

With a BYO key the request runs on the client's own provider account: passed through.
Pure functions on the parsed body (parse.py), applied once the billing decision is known.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.errors import InvalidRequest, UnsupportedParameter

Owns = Callable[[str, str], bool]  # (workspace id, response id) -> the gateway gave it there
_SHARED = {"prompt": "stored prompts (`prompt`)", "conversation": "conversations (`conversation`)"}


def refuse_shared_state(body: dict[str, Any], *, house_pays: bool) -> None:
    if not house_pays:
        return
    for key, what in _SHARED.items():
        if body.get(key) is not None:
            raise UnsupportedParameter(
                f"{what[0].upper()}{what[1:]} are not supported on the gateway's provider "
                "account: they would be shared by every workspace. Send the input itself, or "
                "use your own provider key (X-Bookbag-Provider-Key).", param=key)
    items = body.get("input")
    for i, item in enumerate(items if isinstance(items, list) else []):
        if isinstance(item, dict) and item.get("type") == "item_reference":
            raise UnsupportedParameter(
                "Item references are not supported on the gateway's provider account: send "
                "the item itself.", param=f"input[{i}]")


def force_store(body: dict[str, Any], *, house_pays: bool, workspace_stores: bool) -> None:
    """`store` off on the house's keys unless the workspace opted in."""
    if house_pays and not workspace_stores:
        body["store"] = False


def check_previous_response(body: dict[str, Any], workspace_id: str, owns: Owns, *,
                            house_pays: bool) -> None:
    response_id = body.get("previous_response_id")
    if response_id is None or not house_pays:
        return
    if not owns(workspace_id, response_id):
        raise InvalidRequest(f"Previous response with id '{response_id[:128]}' not found.",
                             param="previous_response_id", code="previous_response_not_found")


def apply_tenancy(body: dict[str, Any], *, workspace_id: str, house_pays: bool,
                  workspace_stores: bool, owns: Owns) -> None:
    """Every rule above, in the order a client is best told about them."""
    refuse_shared_state(body, house_pays=house_pays)
    check_previous_response(body, workspace_id, owns, house_pays=house_pays)
    force_store(body, house_pays=house_pays, workspace_stores=workspace_stores)
