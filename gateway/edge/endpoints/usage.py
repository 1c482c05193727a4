"""GET /v1/usage: reply credits in a window and time zone, grouped; what agent-bound keys may read."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.accounts.workspaces import ID_RE
from gateway.edge.request import authenticate, endpoint, json_response, services
from gateway.errors import Forbidden, InvalidRequest, ModelNotFound
from gateway.ledger.usage import UsageQuery, parse_group_by, parse_limit
from gateway.ledger.window import window
from gateway.storage.offload import run_db
from gateway.types import Caller


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
        return services(request).reads.catalog.resolve(requested).id
    except ModelNotFound:
        return requested


@endpoint
async def show(request: Request, headers: dict[str, str]) -> Response:
    caller = await authenticate(request, "read")
    svc = services(request)
    params = request.query_params
    group_by = parse_group_by(params.get("group_by"))
    query = UsageQuery(
        workspace_id=caller.workspace_id,
        window=window(params.get("start"), params.get("end"), params.get("tz"), svc.reads.clock.now()),
        group_by=group_by,
        agent=agent_filter(caller, params.get("agent")),
        model=model_filter(request, params.get("model")),
        limit=parse_limit(params.get("limit"), group_by),
    )
    report = await run_db(svc.reads.usage.query, query)
    return json_response(report.as_json(), headers=headers)
