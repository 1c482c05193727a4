"""The per-key rate limit as the flow applies it: the verdict and its fail-closed rule.

`admit` runs before the body is read (the edge calls it right after
authentication): over the limit it raises 429; when the shared limit store is
down it lets the caller through marked `rate_unchecked`. `fail_closed` is the
other half, applied once the billing decision is known: a metered request
with an unchecked limit is refused (503), since nothing bounds what it could
spend; local, BYO and unmetered requests go on.
"""

from __future__ import annotations

from gateway.errors import ServiceUnavailable
from gateway.ratelimit.limiter import RateLimiter
from gateway.types import Caller


async def admit(limiter: RateLimiter, caller: Caller) -> tuple[Caller, dict[str, str]]:
    """The caller (marked `rate_unchecked` if the store is down) and the headers to send."""
    return await limiter.admit(caller)


def fail_closed(caller: Caller, *, metered: bool) -> None:
    if metered and caller.rate_unchecked:
        raise ServiceUnavailable("The rate-limit store is unavailable; retry shortly.")
