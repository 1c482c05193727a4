"""The reference relay: bare Starlette + one shared aiohttp session, no auth, no metering.

It is the floor the gateway is compared with in the same run: everything the
gateway does beyond this (auth, validation, catalog, reserve, settle, the
ledger commit, headers) is its overhead.

    python bench/relay.py --port 9200 --upstream http://127.0.0.1:9100 \
        [--slow-upstream http://127.0.0.1:9101]

POST /v1/chat/completions goes to `--upstream`, POST /slow/v1/chat/completions
to `--slow-upstream`; the body and the reply bytes are passed on untouched.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}


def create_app(upstream: str, slow_upstream: str) -> Starlette:
    session: dict[str, aiohttp.ClientSession] = {}

    async def relay(request: Request, base: str) -> Response:
        body = await request.body()
        resp = await session["client"].post(base + "/v1/chat/completions", data=body,
                                            headers=HEADERS)
        if resp.content_type != "text/event-stream":
            data = await resp.read()
            resp.release()
            return Response(data, resp.status, media_type="application/json")

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.content.iter_any():
                    yield chunk
            finally:
                resp.release()

        return StreamingResponse(chunks(), resp.status, media_type="text/event-stream")

    async def fast(request: Request) -> Response:
        return await relay(request, upstream)

    async def slow(request: Request) -> Response:
        return await relay(request, slow_upstream)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        session["client"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1024), skip_auto_headers=("User-Agent",))
        try:
            yield
        finally:
            await session["client"].close()

    return Starlette(routes=[Route("/v1/chat/completions", fast, methods=["POST"]),
                             Route("/slow/v1/chat/completions", slow, methods=["POST"])],
                     lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--slow-upstream", default="")
    args = parser.parse_args()
    uvicorn.run(create_app(args.upstream, args.slow_upstream or args.upstream),
                host="127.0.0.1", port=args.port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
