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

from gateway.dialects.chat.parse import parse_json
from gateway.dialects.responses.parse import responses_request
from gateway.dialects.responses.stream import ResponsesStream
from gateway.edge.render import render
from gateway.edge.request import authenticate, endpoint, headers_of, read_body, services
from gateway.flow.call import ChatCall
from gateway.flow.decide import PROVIDER_KEY_HEADER
from gateway.idempotency.service import HEADER as IDEMPOTENCY_HEADER
from gateway.observability.logs import record_of


@endpoint
async def create(request: Request, headers: dict[str, str]) -> Response:
    caller = await authenticate(request, "inference")  # from the headers, before the body
    body = parse_json(await read_body(request))
    given = headers_of(request)
    idempotency_key = given.get(IDEMPOTENCY_HEADER)
    # The key's hash covers the body as sent (parsing replaces `metadata`, never edits it).
    sent = dict(body) if idempotency_key is not None else None
    req = responses_request(body, given, caller)
    call = ChatCall(req, headers["x-request-id"], given.get(PROVIDER_KEY_HEADER),
                    idempotency_key, sent)
    try:
        outcome = await services(request).inference.pipeline.chat(caller, call)
    finally:
        record = record_of(request)
        if record is not None:  # the log line is the edge's: it copies what the flow learnt
            record.model, record.entry = call.report.model, call.report.entry
    return render(outcome, headers, ResponsesStream(model=req.model))
