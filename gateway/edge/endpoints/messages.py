"""POST /v1/messages and /v1/messages/count_tokens: the Anthropic Messages wire in, the
one flow, its outcome out in Anthropic's shapes (SPEC "Three dialects, one meter").

- The key comes as `x-api-key` or as a Bearer token (the Anthropic SDKs send either);
  both given and different: 401. The routes need the `inference` scope.
- Every error, ours (404, 408, 413, 429 included) or the provider's, is
  `{"type": "error", "error": {"type", "message"}}` with our status code;
  a stream that fails after its start ends with `event: error`.
- `?beta=true` (Claude Code, the SDKs' beta namespace) changes nothing: accepted.
- count_tokens: never charged, no ledger entry, its own rate-limit buckets, the
  Idempotency-Key ignored (gateway/flow/count_tokens.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from gateway.dialects.chat.parse import parse_json
from gateway.dialects.messages.errors import error_body
from gateway.dialects.messages.parse import messages_request
from gateway.dialects.messages.stream import MessagesStream
from gateway.edge.completion import complete
from gateway.edge.request import (
    Handler,
    authenticate,
    credential,
    endpoint,
    headers_of,
    json_response,
    read_body,
    services,
)
from gateway.errors import GatewayError
from gateway.flow.decide import PROVIDER_KEY_HEADER
from gateway.observability.logs import record_of
from gateway.types import Caller


def anthropic_error(error: GatewayError, headers: dict[str, str]) -> Response:
    return Response(error_body(error), error.status, headers={**headers, **error.headers},
                    media_type="application/json")


def messages_endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """`endpoint`, with errors in Anthropic's shape."""
    return endpoint(handler, anthropic_error)


async def anthropic_caller(request: Request, *, count_tokens: bool = False) -> Caller:
    svc = services(request)
    return await authenticate(request, "inference", header=credential(headers_of(request), api_key=True),
                              admission=svc.inference.pipeline.admit_count_tokens if count_tokens else None)


@messages_endpoint
async def create(request: Request, headers: dict[str, str]) -> Response:
    caller = await anthropic_caller(request)  # from the headers, before the body
    return await complete(request, headers, caller, messages_request, lambda _: MessagesStream())


@messages_endpoint
async def count_tokens(request: Request, headers: dict[str, str]) -> Response:
    caller = await anthropic_caller(request, count_tokens=True)
    body = parse_json(await read_body(request))
    given = headers_of(request)
    req = messages_request(body, given, caller, count_tokens=True)
    counted = await services(request).inference.pipeline.count_tokens(caller, req,
                                                           given.get(PROVIDER_KEY_HEADER))
    record = record_of(request)
    if record is not None:
        record.model = req.model
    return json_response(counted, headers=headers)
