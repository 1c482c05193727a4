"""GET /v1/balance: the two buckets, holds in flight, the period, credits used in 30 days.

The buckets are the workspace's; a key bound to an agent sees its agent's
`credits_used_30d` (and `agent_id`), as `/v1/usage` shows it only that agent.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.accounts.spend_caps import cap_view
from gateway.edge.request import authenticate, endpoint, json_response, services


@endpoint
async def show(request: Request, headers: dict[str, str]) -> Response:
    caller = await authenticate(request, "read")
    svc = services(request)
    balance = await svc.reads.meter.balance(caller.workspace_id)
    used = await svc.reads.usage.credits_used_30d(caller.workspace_id, caller.agent_id)
    body: dict[str, object] = {
        "object": "balance",
        "workspace_id": caller.workspace_id,
        "plan": balance.plan,
        "allotment": balance.allotment,
        "allotment_remaining": balance.allotment_remaining,
        "topups_remaining": balance.topups_remaining,
        "balance": balance.available,
        "reserved": balance.reserved,
        "period_start": balance.period_start,
        "period_end": balance.period_end,
        "credits_used_30d": used,
    }
    if caller.agent_id is not None:
        body["agent_id"] = caller.agent_id
    if caller.caps:  # spend controls: the reading key's cap and its agent's, with what remains
        usage = await svc.reads.meter.cap_usage(caller.workspace_id, caller.caps)
        body["caps"] = [cap_view(c, usage[c.subject], balance.period_end) for c in caller.caps]
    return json_response(body, headers=headers)
