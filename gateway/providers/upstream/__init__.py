"""The relay's HTTP/1.1 client: keep-alive pools, three timeouts, replies as they arrive.

Why not aiohttp: profiled under load (bench/profile.py --gil), its client was 25 % of the
gateway's CPU (ClientSession._request, header merging, TimeoutHandle, ClientResponse.start,
StreamWriter...). This does only what the relay needs on an asyncio Protocol and httptools'
C parser (llhttp, as uvicorn). One A/B run (bench/run.py --quick, JSON at 16 in flight):
the gateway's CPU per request went from 0.52 to 0.38 ms (streams 0.70 to 0.54).

- A pool per (scheme, host, port) of at most `connections`; at the cap requests queue.
- TimeoutError for `connect` (TCP + TLS), `idle` (between reply bytes, the first one
  included), `total` (queueing included; its own subclass DeadlineReached, raised also
  while a body still flows past it); else UpstreamFailure, whose text holds no header.
- Bodies: Content-Length, chunked or until the end; gzip/deflate decoded; not paced (the
  relay's replies are small: read whole, or LLM streams).
- Reused only after a complete keep-alive reply: never after an error, an incomplete read,
  `Connection: close` or a cancellation (which closes it, stopping the upstream call).
- The keep-alive race: a pooled connection is checked just before a request is written
  (closed as the loop saw, or a FIN or stray bytes on its socket): one the server closed
  while idle is dropped for another. A written request is never sent again (the provider
  may have run it).
"""

from gateway.providers.upstream.client import UpstreamClient
from gateway.providers.upstream.connection import DeadlineReached, UpstreamFailure
from gateway.providers.upstream.response import Response

__all__ = ["DeadlineReached", "Response", "UpstreamClient", "UpstreamFailure"]
