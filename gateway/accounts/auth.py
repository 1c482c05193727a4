"""Authentication: Bearer `bk_` keys -> Caller, cached for a few seconds; the admin token.

A cache entry lives `key_cache_ttl` seconds, so a revocation made by the CLI
or another process stops the key on every server within that time. Unknown
keys are cached too (briefly), so guessing keys cannot hammer the database.
While the database is unreachable, a key seen before is still accepted from
the expired entry, for as long as the lookup keeps failing. A key's `expires_at`
is checked on every request, cached or not (401 `key_expired`).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable

from gateway.accounts.key_expiry import check_expiry
from gateway.accounts.workspaces import KEY_PREFIX, hash_key
from gateway.clock import Clock
from gateway.errors import Forbidden, InvalidApiKey, ServiceUnavailable
from gateway.types import Caller

_MAX_KEY_LEN = 256
_CACHE_LIMIT = 100_000


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


class KeyCache:
    def __init__(self, lookup: Callable[[str], Caller | None], clock: Clock, ttl: float) -> None:
        self._lookup = lookup
        self._clock = clock
        self._ttl = ttl
        self._cache: dict[str, tuple[float, Caller | None]] = {}

    async def authenticate(self, header: str | None) -> Caller:
        return self._admit(await self.resolve(header))

    async def resolve(self, header: str | None) -> Caller:
        """The key's caller, not yet admitted (expiry and suspension unchecked): the dry-run's."""
        token = bearer(header)
        if token is None:
            raise InvalidApiKey(
                "Missing API key: send your Bookbag key as `Authorization: Bearer bk_...`."
            )
        if not token.startswith(KEY_PREFIX) or len(token) > _MAX_KEY_LEN:
            raise InvalidApiKey("Incorrect API key provided. Bookbag keys start with `bk_`.")
        digest = hash_key(token)
        now = self._clock.now()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            caller = hit[1]
        else:
            try:
                caller = await asyncio.to_thread(self._lookup, digest)
            except Exception as exc:
                if hit is not None and hit[1] is not None:
                    # The database is down: a key known a moment ago keeps working, so
                    # replies that need no balance (local, BYO, metering off) still flow.
                    return hit[1]
                raise ServiceUnavailable("The key store is unavailable; retry shortly.") from exc
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[digest] = (now + (self._ttl if caller else min(self._ttl, 1.0)), caller)
        if caller is None:
            raise InvalidApiKey("Incorrect API key provided, or the key was revoked.")
        return caller

    def _admit(self, caller: Caller) -> Caller:
        # The expiry is checked on every request against the clock, not the cache:
        # an expiring key stops at its instant on every gateway.
        check_expiry(caller.expires_ms, self._clock.now())
        if caller.suspended:
            raise Forbidden("This workspace is suspended.", code="workspace_suspended")
        return caller


def require_scope(caller: Caller, scope: str) -> None:
    if scope not in caller.scopes:
        raise Forbidden(f"This key lacks the `{scope}` scope needed for this route.",
                        code="insufficient_scope")


def check_admin(header: str | None, admin_token: str | None) -> None:
    token = bearer(header)
    if admin_token is None:
        raise Forbidden("The admin API is disabled: set BOOKBAG_ADMIN_TOKEN.",
                        code="insufficient_scope")
    if token is None or not hmac.compare_digest(token.encode(), admin_token.encode()):
        raise InvalidApiKey("Incorrect admin token.")


def is_admin_token(header: str | None, admin_token: str | None) -> bool:
    token = bearer(header)
    return bool(admin_token and token and hmac.compare_digest(token.encode(), admin_token.encode()))
