"""The id of the Response a client received, read from what the provider sent.

The ledger records it (`response_id`) so that a later `previous_response_id` is accepted
only from the workspace the gateway gave it to (tenancy.py). A JSON reply is the Response
itself; a stream names it in its first event (`response.created`, whose `response` is the
Response). OpenAI writes `id` first in both, so the id is read from the bytes without
parsing a reply that may be large; any other order falls back to a parse.

Ids longer than the ledger's column (128) are not recorded: such a Response cannot be
continued with `previous_response_id` on the house's keys, which fails safe.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

MAX_ID = 128
_REPLY_ID = re.compile(rb'\A\s*\{\s*"id"\s*:\s*"([^"\\]{1,128})"')
_EVENT_ID = re.compile(rb'"response"\s*:\s*\{\s*"id"\s*:\s*"([^"\\]{1,128})"')
_SCAN = 512  # where the id stands when it comes first


def _checked(value: Any) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= MAX_ID else None


def reply_response_id(body: bytes) -> str | None:
    """The `id` of a Response sent as JSON."""
    found = _REPLY_ID.match(body[:_SCAN])
    if found is not None:
        return found.group(1).decode("utf-8", "replace")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return _checked(data.get("id")) if isinstance(data, dict) else None


def event_response_id(payload: bytes) -> str | None:
    """The Response id in a stream event that carries the Response (`response.created`)."""
    found = _EVENT_ID.search(payload[:_SCAN])
    if found is not None:
        return found.group(1).decode("utf-8", "replace")
    at = payload.find(b"data:")  # the event's data line (a payload is the framed event)
    try:
        data = orjson.loads(payload[at + 5:] if at >= 0 else payload)
    except orjson.JSONDecodeError:
        return None
    response = data.get("response") if isinstance(data, dict) else None
    return _checked(response.get("id")) if isinstance(response, dict) else None
