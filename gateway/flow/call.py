"""What the flow is given and what it reports back, with no HTTP in either.

The edge reads the wire (body, headers) into a `ChatCall`; the flow never sees
a header dict. It fills the call's `Report` as it goes (the resolved model,
then the ledger entry) so that the edge's log record can name them even when
the request fails half-way: the edge copies them into its own record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.types import ChatRequest, LedgerEntry


@dataclass(slots=True)
class Report:
    """What the flow learnt about the request, for the edge's log line and metrics."""

    model: str | None = None  # the resolved model, as soon as it is known
    entry: LedgerEntry | None = None  # the ledger entry, once the request may be charged


@dataclass(slots=True)
class ChatCall:
    """A parsed chat call and the values the edge read from its headers.

    `idempotency_key` is the raw header value (the flow validates, hashes and
    claims it); `sent_body` is the body as the client sent it (Bookbag's
    metadata still in it), given only with a key: the key's hash covers it.
    """

    request: ChatRequest
    request_id: str
    provider_key: str | None = None
    idempotency_key: str | None = None
    sent_body: Mapping[str, Any] | None = None
    report: Report = field(default_factory=Report)
