"""Rate limits in Redis, shared by every gateway process: one GCRA step in one Lua script.

Each key's state is one string (`bk:{sNN}:rl:<key id>`, under its workspace's shard
tag, expiring once the key is back to its full burst). The client and its error map are the
shared ones (`gateway/storage/redis.py`): short timeouts keep a dead Redis from holding
requests up.
"""

from __future__ import annotations

from gateway.catalog import RateLimit
from gateway.metering.redis_keys import shard_of
from gateway.ratelimit.limiter import Verdict, gcra
from gateway.storage.redis import ERRORS, REQUEST_CONNECTIONS, connect, unavailable

STORE = "The rate-limit store"

_SCRIPT = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local interval = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > window + 0.000001 then
  return {0, tostring(tat)}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return {1, tostring(new_tat)}
"""


class RedisLimits:
    def __init__(self, url: str, *, timeout: float = 0.25, prefix: str = "bk:") -> None:
        self._prefix = prefix
        # No reconnect: a verdict a second try could give would come too late to help.
        self._redis = connect(url, timeout=timeout, max_connections=REQUEST_CONNECTIONS,
                              retries=0)
        self._script = self._redis.register_script(_SCRIPT)

    async def hit(self, key: str, limit: RateLimit, now_ms: float, *,
                  workspace_id: str = "") -> Verdict:
        window = limit.seconds * 1000
        interval = window / limit.requests
        try:
            allowed, tat = await self._script(
                keys=[self.name(key, workspace_id)], args=[repr(now_ms), repr(window), repr(interval)])
        except ERRORS as exc:
            raise unavailable(exc, STORE) from exc
        stored = float(tat)
        if int(allowed):
            verdict, _ = gcra(stored - interval, now_ms, limit)  # replays the step Redis took
        else:
            verdict, _ = gcra(stored, now_ms, limit)
        return verdict

    async def peek(self, key: str, limit: RateLimit, now_ms: float, *,
                   workspace_id: str = "") -> Verdict:
        """The admission dry-run: the stored arrival time, read only."""
        try:
            tat = await self._redis.get(self.name(key, workspace_id))
        except ERRORS as exc:
            raise unavailable(exc, STORE) from exc
        return gcra(float(tat) if tat else None, now_ms, limit)[0]

    def name(self, key: str, workspace_id: str) -> str:
        """Under the workspace's shard tag (issue 17); the state before it,
        `bookbag:rl:{<key id>}`, is not carried over: a key gets one fresh burst at the upgrade,
        and the old entries expire by themselves within a window."""
        return f"{self._prefix}{{s{shard_of(workspace_id):02d}}}:rl:{key}"

    async def close(self) -> None:
        await self._redis.aclose()
