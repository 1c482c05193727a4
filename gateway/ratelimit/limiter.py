"""Per-key rate limits: checked after auth, before idempotency and reserve, on every /v1 route.

The limit of a key is its own `rate_limit`, else its workspace's, else its
plan's in `pricing.toml` (`rate_limit = "100/10s"`), else none. The algorithm
is GCRA (a sliding window without buckets): with a limit of N per W seconds a
key may burst N requests and then sustains N/W per second; the state is one
number per key (its "theoretical arrival time"), so a refusal knows exactly
when to retry.

Stores: `MemoryLimits` (one process) and `RedisLimits` (`ratelimit_redis.py`,
shared by every process using the same Redis). When the shared store is down
the check fails open and marks the caller `rate_unchecked`; the pipeline then
refuses metered requests with 503 (fail closed) and lets unmetered ones through.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Protocol

from gateway.catalog import Catalog, CatalogError, RateLimit, parse_rate_limit
from gateway.clock import Clock
from gateway.errors import RateLimited, ServiceUnavailable
from gateway.types import Caller

log = logging.getLogger("bookbag.ratelimit")

_MEMORY_LIMIT = 200_000
_BREAKER_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset: float  # seconds until the key is back to its full burst
    retry_after: float  # seconds until one more request is allowed (0 when allowed)

    def headers(self) -> dict[str, str]:
        out = {
            "x-ratelimit-limit": str(self.limit),
            "x-ratelimit-remaining": str(max(self.remaining, 0)),
            "x-ratelimit-reset": str(math.ceil(self.reset)),
        }
        if not self.allowed:
            out["retry-after"] = str(max(1, math.ceil(self.retry_after)))
        return out


def gcra(tat_ms: float | None, now_ms: float, limit: RateLimit) -> tuple[Verdict, float | None]:
    """One request against the stored arrival time; (verdict, new arrival time to store or None)."""
    window = limit.seconds * 1000
    interval = window / limit.requests
    tat = max(tat_ms or 0.0, now_ms)
    new_tat = tat + interval
    if new_tat - now_ms > window + 1e-6:
        retry = (new_tat - window - now_ms) / 1000
        return Verdict(False, limit.requests, 0, (tat - now_ms) / 1000, retry), None
    remaining = int((window - (new_tat - now_ms)) / interval + 1e-9)
    return Verdict(True, limit.requests, remaining, (new_tat - now_ms) / 1000, 0.0), new_tat


class LimitStore(Protocol):
    async def hit(self, key: str, limit: RateLimit, now_ms: float, *,
                  workspace_id: str = "") -> Verdict:
        """Count one request for `key` (of `workspace_id`: a shared store keeps the state under
        the workspace's shard); raises ServiceUnavailable when the store is down."""
        ...

    async def close(self) -> None: ...

    async def peek(self, key: str, limit: RateLimit, now_ms: float, *,
                   workspace_id: str = "") -> Verdict:
        """What `hit` would answer now, counting nothing (the admission dry-run)."""
        ...


class MemoryLimits:
    """One process's limits: a dict of arrival times."""

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}

    async def hit(self, key: str, limit: RateLimit, now_ms: float, *,
                  workspace_id: str = "") -> Verdict:
        verdict, new_tat = gcra(self._tat.get(key), now_ms, limit)
        if new_tat is not None:
            if len(self._tat) >= _MEMORY_LIMIT:
                self._tat = {k: v for k, v in self._tat.items() if v > now_ms}
            self._tat[key] = new_tat
        return verdict

    async def peek(self, key: str, limit: RateLimit, now_ms: float, *,
                   workspace_id: str = "") -> Verdict:
        return gcra(self._tat.get(key), now_ms, limit)[0]

    async def close(self) -> None:
        return None


class RateLimiter:
    def __init__(self, catalog: Catalog, store: LimitStore, clock: Clock) -> None:
        self._catalog = catalog
        self._store = store
        self._clock = clock
        self._parsed: dict[str, RateLimit | None] = {}
        self._down_until = 0.0

    def limit_for(self, caller: Caller) -> RateLimit | None:
        if caller.rate_limit:
            if caller.rate_limit not in self._parsed:
                try:
                    self._parsed[caller.rate_limit] = parse_rate_limit("rate_limit", caller.rate_limit)
                except CatalogError:
                    log.warning("ignoring the malformed rate limit %r of key %s",
                                caller.rate_limit, caller.key_id)
                    self._parsed[caller.rate_limit] = None
            limit = self._parsed[caller.rate_limit]
            if limit is not None:
                return limit
        return self._catalog.plan_rate_limit(caller.plan)

    async def admit(self, caller: Caller) -> tuple[Caller, dict[str, str]]:
        """The caller (marked `rate_unchecked` if the store is down) and the headers to send.

        Raises RateLimited (429 with Retry-After and X-RateLimit-*) over the limit.
        """
        limit = self.limit_for(caller)
        if limit is None:
            return caller, {}
        now = self._clock.now()
        if now < self._down_until:
            return replace(caller, rate_unchecked=True), {}
        try:
            verdict = await self._store.hit(caller.key_id, limit, now * 1000,
                                            workspace_id=caller.workspace_id)
        except ServiceUnavailable:
            # Fail open here; metered requests are refused later (fail closed).
            self._down_until = now + _BREAKER_SECONDS
            log.warning("rate-limit store unavailable; failing open for unmetered requests")
            return replace(caller, rate_unchecked=True), {}
        headers = verdict.headers()
        if not verdict.allowed:
            raise RateLimited(
                f"Rate limit reached for this key: {limit.requests} requests per "
                f"{limit.seconds:g} seconds. Retry after {headers['retry-after']} s.",
                headers=headers,
            )
        return caller, headers

    async def admit_bucket(self, caller: Caller, bucket: str, per_key: RateLimit,
                           per_workspace: RateLimit) -> dict[str, str]:
        """A route's own buckets (count_tokens), per key and per workspace: 429 past
        either; fails open, unmarked, when the store is down (the route costs nothing)."""
        now = self._clock.now()
        if now < self._down_until:
            return {}
        headers: dict[str, str] = {}
        for name, limit in ((f"{bucket}:key:{caller.key_id}", per_key),
                            (f"{bucket}:ws:{caller.workspace_id}", per_workspace)):
            try:
                verdict = await self._store.hit(name, limit, now * 1000,
                                                workspace_id=caller.workspace_id)
            except ServiceUnavailable:
                self._down_until = now + _BREAKER_SECONDS
                log.warning("rate-limit store unavailable; %s fails open", bucket)
                return {}
            if not verdict.allowed:
                whose = "key" if limit is per_key else "workspace"
                raise RateLimited(
                    f"Rate limit reached for {bucket} on this {whose}: {limit.requests} "
                    f"requests per {limit.seconds:g} seconds. Retry after "
                    f"{verdict.headers()['retry-after']} s.", headers=verdict.headers())
            headers = headers or verdict.headers()
        return headers

    async def peek(self, caller: Caller) -> tuple[RateLimit | None, Verdict | None]:
        """The key's limit and what a request now would meet, counting nothing; (limit, None)
        without a limit or while the store is down."""
        limit = self.limit_for(caller)
        if limit is None or self._clock.now() < self._down_until:
            return limit, None
        try:
            return limit, await self._store.peek(caller.key_id, limit, self._clock.now() * 1000,
                                                 workspace_id=caller.workspace_id)
        except ServiceUnavailable:
            return limit, None

    async def close(self) -> None:
        await self._store.close()
