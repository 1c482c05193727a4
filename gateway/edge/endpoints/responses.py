"""POST /v1/responses: the OpenAI Responses wire in, the one flow, its outcome out.

Errors are OpenAI's shape (as on chat); the route needs the `inference` scope. The
attribution headers, `X-Bookbag-Provider-Key`, `Idempotency-Key` (scoped by route:
one key on chat and here is two keys), rate limits, the ledger entry (`api` =
"responses", `response_id`) and metrics are the flow's, exactly as for chat. A stream's
events are framed by the Responses dialect (gateway/dialects/responses/stream.py),
one instance per stream.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.dialects.responses.parse import responses_request
from gateway.dialects.responses.stream import ResponsesStream
from gateway.edge.completion import complete
from gateway.edge.request import authenticate, endpoint


@endpoint
async def create(request: Request, headers: dict[str, str]) -> Response:
    caller = await authenticate(request, "inference")  # from the headers, before the body
    return await complete(request, headers, caller, responses_request,
                          lambda req: ResponsesStream(model=req.model))
