"""The Redis idempotency store: one hash per key, changed only by Lua scripts.

A record is `bk:{sNN}:idem:<workspace>:<key>`: the workspace's shard tag, so with
Redis Cluster a workspace's records live in the slot of its balance and holds, and a
shard down stops only its own workspaces (before issue 17: `bookbag:{<workspace>}:...`,
still read on a single node; docs/deployment.md "Redis Cluster"). Each operation
is one script (read, check, write atomically): the claim is a set-if-absent
that also treats a record past its `expires` field as absent (times come
from the gateway's clock, so tests can move it), and every later write is
conditional on the request id holding the record (and safe to run twice).
The key's own TTL (`PEXPIRE`, at least the retention) only collects garbage;
Redis purges expired records by itself, so `sweep` has nothing to do.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.idempotency.store import Record, State, StoredResponse
from gateway.metering.redis_keys import shard_of
from gateway.storage.redis import ERRORS, REQUEST_CONNECTIONS, connect, is_cluster, unavailable

STORE = "The idempotency store (Redis)"

_WHERE = """
local k = KEYS[1]
if KEYS[2] and redis.call('EXISTS', k) == 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  k = KEYS[2]
end
"""
# KEYS[1] record (KEYS[2]: its legacy name, single node only)
# ARGV body_hash, request_id, now, lease, expires
_CLAIM = _WHERE + """
local r = redis.call('HMGET', k, 'state', 'hash', 'rid', 'lease', 'expires',
                     'kind', 'status', 'headers', 'body')
local now = tonumber(ARGV[3])
if r[1] == 'in_flight' and r[3] == ARGV[2] then return false end  -- our own claim, resent
if r[1] and tonumber(r[5]) > now then return r end
redis.call('DEL', k)
redis.call('HSET', KEYS[1], 'state', 'in_flight', 'hash', ARGV[1], 'rid', ARGV[2],
           'created', ARGV[3], 'lease', ARGV[4], 'expires', ARGV[5])
redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[5]) - now, 1))
return false
"""
# ARGV old_request_id, request_id, now, lease, expires
_TAKE_OVER = _WHERE + """
local r = redis.call('HMGET', k, 'state', 'rid')
if r[1] == 'in_flight' and r[2] == ARGV[2] then return 1 end  -- resent after it ran
if r[1] ~= 'in_flight' or r[2] ~= ARGV[1] then return 0 end
redis.call('HDEL', k, 'kind', 'status', 'headers', 'body')
redis.call('HSET', k, 'rid', ARGV[2], 'created', ARGV[3], 'lease', ARGV[4],
           'expires', ARGV[5])
redis.call('PEXPIRE', k, math.max(tonumber(ARGV[5]) - tonumber(ARGV[3]), 1))
return 1
"""
# ARGV request_id, kind, status, headers, body
_STAGE = _WHERE + """
local r = redis.call('HMGET', k, 'state', 'rid')
if r[1] ~= 'in_flight' or r[2] ~= ARGV[1] then return 0 end
redis.call('HSET', k, 'kind', ARGV[2], 'status', ARGV[3], 'headers', ARGV[4],
           'body', ARGV[5])
return 1
"""
# ARGV request_id, expires
_FINISH = _WHERE + """
if redis.call('HGET', k, 'rid') ~= ARGV[1] then return 0 end
redis.call('HSET', k, 'state', 'done', 'expires', ARGV[2])
return 1
"""
# ARGV request_id
_RELEASE = _WHERE + """
local r = redis.call('HMGET', k, 'state', 'rid')
if r[1] ~= 'in_flight' or r[2] ~= ARGV[1] then return 0 end
return redis.call('DEL', k)
"""


class RedisIdempotencyStore:
    def __init__(self, url: str, *, prefix: str = "bk:", legacy_prefix: str = "bookbag:",
                 timeout: float = 2.0) -> None:
        # One immediate reconnect on a dead pooled connection (a Redis restart); every
        # script is safe to run twice (a resent claim or take-over recognises its own id).
        self._redis = connect(url, timeout=timeout, max_connections=REQUEST_CONNECTIONS,
                              decode_responses=False)
        self._prefix = prefix
        # Before issue 17 a record was `bookbag:{<workspace>}:idem:<key>`. Those exist only on
        # a single node (nothing spoke Cluster then): there every script also finds a record
        # at its legacy name, so a key claimed or finished before the upgrade keeps working.
        self._legacy = None if is_cluster(self._redis) else legacy_prefix
        self._claim = self._redis.register_script(_CLAIM)
        self._take_over = self._redis.register_script(_TAKE_OVER)
        self._stage = self._redis.register_script(_STAGE)
        self._finish = self._redis.register_script(_FINISH)
        self._release = self._redis.register_script(_RELEASE)

    def name(self, workspace_id: str, key: str) -> str:
        """Under the workspace's shard tag, beside its balance and holds (`redis_keys.py`)."""
        return f"{self._prefix}{{s{shard_of(workspace_id):02d}}}:idem:{workspace_id}:{key}"

    def legacy_name(self, workspace_id: str, key: str) -> str | None:
        return None if self._legacy is None else f"{self._legacy}{{{workspace_id}}}:idem:{key}"

    async def _run(self, script: Any, workspace_id: str, key: str, *args: Any) -> Any:
        keys = [self.name(workspace_id, key)]
        if (legacy := self.legacy_name(workspace_id, key)) is not None:
            keys.append(legacy)
        try:
            return await script(keys=keys, args=list(args))
        except ERRORS as exc:
            raise unavailable(exc, STORE) from exc

    # --- IdempotencyStore ----------------------------------------------------

    async def claim(self, workspace_id: str, key: str, body_hash: str, request_id: str, *,
                    now_ms: int, lease_ms: int, expires_ms: int) -> Record | None:
        row = await self._run(self._claim, workspace_id, key,
                              body_hash, request_id, now_ms, lease_ms, expires_ms)
        return _record(row) if row else None

    async def take_over(self, workspace_id: str, key: str, old_request_id: str, request_id: str,
                        *, now_ms: int, lease_ms: int, expires_ms: int) -> bool:
        return bool(await self._run(self._take_over, workspace_id, key,
                                    old_request_id, request_id, now_ms, lease_ms, expires_ms))

    async def stage(self, workspace_id: str, key: str, request_id: str,
                    response: StoredResponse) -> bool:
        return bool(await self._run(self._stage, workspace_id, key, request_id,
                                    response.kind, response.status,
                                    orjson.dumps(response.headers), response.body))

    async def finish(self, workspace_id: str, key: str, request_id: str, *,
                     expires_ms: int) -> bool:
        return bool(await self._run(self._finish, workspace_id, key, request_id,
                                    expires_ms))

    async def release(self, workspace_id: str, key: str, request_id: str) -> None:
        await self._run(self._release, workspace_id, key, request_id)

    async def sweep(self, now_ms: int) -> int:
        return 0  # every record carries a TTL: Redis deletes expired ones itself

    async def close(self) -> None:
        await self._redis.aclose()


def _text(value: bytes) -> str:
    return value.decode()


def _record(row: list[Any]) -> Record:
    state, body_hash, request_id, lease_ms, _expires, kind, status, headers, body = row
    response = None
    if kind is not None and body is not None:
        response = StoredResponse(_text(kind), int(status), dict(orjson.loads(headers)), bytes(body))
    return Record(State(_text(state)), _text(body_hash), _text(request_id), int(lease_ms), response)
