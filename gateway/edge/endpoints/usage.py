"""GET /v1/usage: reply credits in a window and time zone, grouped; what agent-bound keys may read."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from gateway.accounts.workspaces import ID_RE
from gateway.edge.request import authenticate, endpoint, gateway, json_response
from gateway.errors import Forbidden, GatewayError, InvalidRequest, ModelNotFound, ServiceUnavailable
from gateway.ledger.usage import UsageQuery, parse_group_by, parse_limit
from gateway.ledger.window import window
from gateway.types import Caller

T = TypeVar("T")


def agent_filter(caller: Caller, requested: str | None) -> str | None:
    """A key bound to an agent reads only that agent; others may filter by any agent id."""
    if requested is not None and not ID_RE.match(requested):
        raise InvalidRequest("`agent` must match ^[A-Za-z0-9._-]{1,128}$.", param="agent")
    if caller.agent_id is None:
        return requested
    if requested is not None and requested != caller.agent_id:
        raise Forbidden(f"This key is bound to agent `{caller.agent_id}` and reads only its usage.",
                        code="agent_mismatch")
    return caller.agent_id


def model_filter(request: Request, requested: str | None) -> str | None:
    """A model id or alias -> its canonical id (the ledger's); an id no longer listed as given."""
    if requested is None:
        return None
    if not requested or len(requested) > 128:
        raise InvalidRequest("`model` must be a model id.", param="model")
    try:
        return gateway(request).catalog.resolve(requested).id
    except ModelNotFound:
        return requested


async def in_thread(fn: Callable[..., T], *args: object) -> T:
    """Run a database read off the loop; a database failure becomes a 503.

    A value error is a bug in what reached the query (input is checked before),
    never an outage: it stays a 500 rather than hide behind "unavailable".
    """
    try:
        return await asyncio.to_thread(fn, *args)
    except (GatewayError, ArithmeticError, LookupError, TypeError, ValueError):
        raise
    except Exception as exc:
        raise ServiceUnavailable("The ledger database is unavailable; retry shortly.") from exc


@endpoint
async def show(request: Request, headers: dict[str, str]) -> Response:
    caller = await authenticate(request, "read")
    gw = gateway(request)
    params = request.query_params
    group_by = parse_group_by(params.get("group_by"))
    query = UsageQuery(
        workspace_id=caller.workspace_id,
        window=window(params.get("start"), params.get("end"), params.get("tz"), gw.clock.now()),
        group_by=group_by,
        agent=agent_filter(caller, params.get("agent")),
        model=model_filter(request, params.get("model")),
        limit=parse_limit(params.get("limit"), group_by),
    )
    report = await in_thread(gw.usage.query, query)
    return json_response(report.as_json(), headers=headers)
