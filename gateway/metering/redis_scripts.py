"""The Redis meter's Lua scripts (keys: `redis_keys.py`, whose docstring draws the layout and
explains the shard tags and epochs the scripts rely on)."""

from __future__ import annotations

from typing import Any

# --- scripts --------------------------------------------------------------------
# Every script does all its reads and checks before its first write, so a
# refusal leaves nothing behind. A renewal is its own idempotent step (the
# entry `allotment:<ws>:<period>` marked in `applied`), done before the check.

# KEYS bal, applied, outbox; ARGV (from `first`) period, allotment, renewal id, renewal JSON.
# Given the period alone, it renews nothing and answers true when a renewal is due: the
# caller then sends the entry (the hot path need not build one per request).
_RENEW = """
local function renew(first)
  local period = ARGV[first]
  if period ~= '' and period > redis.call('HGET', KEYS[1], 'period') then
    if ARGV[first + 3] == nil then return true end
    redis.call('HSET', KEYS[1], 'period', period, 'allotment', ARGV[first + 1],
               'allot_rem', ARGV[first + 1])
    if redis.call('SADD', KEYS[2], ARGV[first + 2]) == 1 then
      redis.call('XADD', KEYS[3], '*', 'e', ARGV[first + 3])
    end
  end
  return false
end
"""

# KEYS bal, applied, outbox, holds, exp, epoch
# ARGV request id, credits, expires ms, workspace, n caps, then n x (subject, cap, seed or ''),
#      then the period now, or the renewal (4)
# -> {0} not seeded | {-1} request id already holds | {-2, available, period}
#    | {3} a renewal is due: send it | {1, from allotment, from top-ups, period, epoch}
#    | {4, subject, period} a cap's usage this period is not in Redis: send its seed
#    | {-3, cap index, used, period} a spend cap would be passed
# Spend caps: usage per period is the bal field `cap:<period>:<subject>` (charged + held),
# checked after the balance (its refusal wins); the hold remembers its subjects for void.
RESERVE = _RENEW + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
if redis.call('HEXISTS', KEYS[4], ARGV[1]) == 1 then return {-1} end
local ncaps = tonumber(ARGV[5])
if renew(6 + 3 * ncaps) then return {3} end
local b = redis.call('HMGET', KEYS[1], 'period', 'allot_rem', 'top_rem')
local credits, ar, tr = tonumber(ARGV[2]), tonumber(b[2]), tonumber(b[3])
if credits > ar + tr then return {-2, ar + tr, b[1]} end
local used, subjects = {}, {}
for i = 0, ncaps - 1 do
  local subject, cap, seed = ARGV[6 + 3 * i], tonumber(ARGV[7 + 3 * i]), ARGV[8 + 3 * i]
  local u = redis.call('HGET', KEYS[1], 'cap:' .. b[1] .. ':' .. subject)
  if not u then
    if seed == '' then return {4, subject, b[1]} end
    u = seed
  end
  u = tonumber(u)
  if u + credits > cap then return {-3, i, u, b[1]} end
  used[i + 1] = u
  subjects[i + 1] = subject
end
for i = 1, ncaps do
  redis.call('HSET', KEYS[1], 'cap:' .. b[1] .. ':' .. subjects[i], used[i] + credits)
end
local fa = math.max(0, math.min(credits, ar))
local ft = credits - fa
redis.call('HINCRBY', KEYS[1], 'allot_rem', 0 - fa)
redis.call('HINCRBY', KEYS[1], 'top_rem', 0 - ft)
redis.call('HINCRBY', KEYS[1], 'reserved', credits)
redis.call('HSET', KEYS[4], ARGV[1], ARGV[4] .. '|' .. credits .. '|' .. fa .. '|' .. ft .. '|' .. b[1]
           .. '|' .. table.concat(subjects, ','))
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
return {1, fa, ft, b[1], redis.call('GET', KEYS[6]) or ''}
"""

# KEYS bal, holds, exp, outbox, epoch, pending
# ARGV request id, entry JSON, epoch at reserve ('' = unknown), credits held, charged from
#      allotment, charged from top-ups, period[, a trimmed settle's rest: credits, from
#      allotment, from top-ups -- given back to the buckets and caps in this same step]
# -> {code, then the balance after it (period, allotment, allot_rem, top_rem, reserved) when
#    the workspace is in Redis}: 1 charged | 0 already resolved | 2 the hold was lost with
#    Redis's data: charged anyway. The balance spares the reply a third round trip.
# `pending` holds the request id until the consumer has committed the entry to SQL, so
# "was this request charged?" is answered by `pending`, then SQL, with no gap.
SETTLE = """
local function after(code)
  if redis.call('EXISTS', KEYS[1]) == 0 then return {code} end
  local b = redis.call('HMGET', KEYS[1], 'period', 'allotment', 'allot_rem', 'top_rem', 'reserved')
  return {code, b[1], b[2], b[3], b[4], b[5]}
end
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  if redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('HINCRBY', KEYS[1], 'reserved', 0 - tonumber(ARGV[4]))
    local rest = tonumber(ARGV[8] or '0')
    if rest > 0 then
      local caps = string.match(held, '^[^|]*|%d+|%d+|%d+|[^|]*|?(.*)$') or ''
      for subject in string.gmatch(caps, '[^,]+') do
        local f = 'cap:' .. ARGV[7] .. ':' .. subject
        if redis.call('HEXISTS', KEYS[1], f) == 1 then redis.call('HINCRBY', KEYS[1], f, 0 - rest) end
      end
      if redis.call('HGET', KEYS[1], 'period') == ARGV[7] then
        redis.call('HINCRBY', KEYS[1], 'allot_rem', tonumber(ARGV[9]))
      end
      redis.call('HINCRBY', KEYS[1], 'top_rem', tonumber(ARGV[10]))
    end
  end
  redis.call('XADD', KEYS[4], '*', 'e', ARGV[2])
  redis.call('HSET', KEYS[6], ARGV[1], 1)
  return after(1)
end
if ARGV[3] == '' or redis.call('GET', KEYS[5]) == ARGV[3] then return after(0) end
if redis.call('HEXISTS', KEYS[6], ARGV[1]) == 1 then return after(0) end  -- settled, replicated
redis.call('XADD', KEYS[4], '*', 'e', ARGV[2])
redis.call('HSET', KEYS[6], ARGV[1], 1)
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'period') == ARGV[7] then
    redis.call('HINCRBY', KEYS[1], 'allot_rem', 0 - tonumber(ARGV[5]))
  end
  redis.call('HINCRBY', KEYS[1], 'top_rem', 0 - tonumber(ARGV[6]))
end
return after(2)
"""

# KEYS bal, holds, exp; ARGV request id -> 1 voided | 0 not held
VOID = """
local h = redis.call('HGET', KEYS[2], ARGV[1])
if not h then return 0 end
local _, credits, fa, ft, period, caps = string.match(h, '^([^|]*)|(%d+)|(%d+)|(%d+)|([^|]*)|?(.*)$')
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'reserved', 0 - tonumber(credits))
  for subject in string.gmatch(caps, '[^,]+') do
    local f = 'cap:' .. period .. ':' .. subject
    if redis.call('HEXISTS', KEYS[1], f) == 1 then
      redis.call('HINCRBY', KEYS[1], f, 0 - tonumber(credits))
    end
  end
  if redis.call('HGET', KEYS[1], 'period') == period then
    redis.call('HINCRBY', KEYS[1], 'allot_rem', tonumber(fa))
  end
  redis.call('HINCRBY', KEYS[1], 'top_rem', tonumber(ft))
end
return 1
"""

# Spend caps: KEYS bal; ARGV period, subjects... -> each one's usage, '' when not in Redis
CAPS = """
local out = {}
for i = 2, #ARGV do
  out[i - 1] = redis.call('HGET', KEYS[1], 'cap:' .. ARGV[1] .. ':' .. ARGV[i]) or ''
end
return out
"""

# KEYS bal, applied, outbox; ARGV the renewal (4)
# -> {0} not seeded | {1, period, allotment, allot_rem, top_rem, reserved}
BALANCE = _RENEW + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
renew(1)
local b = redis.call('HMGET', KEYS[1], 'period', 'allotment', 'allot_rem', 'top_rem', 'reserved')
return {1, b[1], b[2], b[3], b[4], b[5]}
"""

# Apply a grant or renewal already written to SQL, once (marked by its request id).
# KEYS bal, applied, outbox; ARGV request id, kind, allotment delta, top-up delta, period
# ('' = none), then the renewal due now (4, period '' = none)
# -> -1 not seeded | 0 applied before | 1 applied now
APPLY = _RENEW + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
renew(6)
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
local kind, ad, td, period = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local current = redis.call('HGET', KEYS[1], 'period')
if period ~= '' and kind == 'allotment' and period > current then
  redis.call('HSET', KEYS[1], 'period', period, 'allotment', ad, 'allot_rem', ad)
elseif period ~= '' and period == current then
  if kind == 'allotment' then redis.call('HINCRBY', KEYS[1], 'allotment', ad) end
  redis.call('HINCRBY', KEYS[1], 'allot_rem', ad)
end
redis.call('HINCRBY', KEYS[1], 'top_rem', td)
return 1
"""


def apply_args(request_id: str, kind: str, allotment_delta: int, topup_delta: int,
               period: str | None, renewal: list[Any] | None = None) -> list[Any]:
    """`APPLY`'s ARGV: the grant, then the renewal due now (4 values) or four blanks."""
    return [request_id, kind, allotment_delta, topup_delta, period or "",
            *(renewal or ["", "", "", ""])]


# Create a workspace's balance from SQL's settled projection, only if absent (never adds).
# KEYS bal, applied, epoch; ARGV period, allotment, allot_rem, top_rem, new epoch, applied ids...
# -> 1 seeded | 0 it existed
SEED = """
redis.call('SET', KEYS[3], ARGV[5], 'NX')
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'period', ARGV[1], 'allotment', ARGV[2], 'allot_rem', ARGV[3],
           'top_rem', ARGV[4], 'reserved', 0)
for i = 6, #ARGV, 1000 do
  redis.call('SADD', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return 1
"""

# KEYS lease; ARGV owner, ttl ms -> 2 taken now | 1 renewed | 0 held by another
LEASE = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not owner then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0
"""

# KEYS lease; ARGV owner
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS mark; ARGV seq: only ever moves forward
MARK = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""

# Rebuild one workspace's balance from SQL's snapshot plus what Redis has that SQL had not
# (`redis_rebuild.py`: run by the shard's outbox consumer, so no entry of the shard reaches
# SQL between the snapshot and this script).
# KEYS bal, applied, holds, exp, outbox
# ARGV workspace, SQL's period, allotment, allot_rem, top_rem,
#      n, then n request ids SQL had (of the workspace's outbox entries and holds),
#      m, then m grant/renewal ids SQL had,
#      the outbox id read up to, r, then the workspace's r entries up to it (JSON, in order),
#      then (cap field, subject, period, SQL's usage)...
# -> 0 not in Redis (a seed will come from SQL) | {1, allot_rem, top_rem, reserved, dropped}
# The outbox entries SQL lacked (those passed, then any appended since the id) are applied
# on top of SQL's figures as SQL will apply them; a hold whose charge SQL already has is
# dropped (its settle was lost with a primary after its entry reached SQL); the other
# holds are subtracted as reserve took them. Only the entries appended since the caller's
# read are read here, so a long outbox never holds Redis up for long.
REBUILD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ws = ARGV[1]
local period, allotment, ar, tr = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local known, n = {}, tonumber(ARGV[6])
for i = 7, 6 + n do known[ARGV[i]] = true end
local at = 7 + n
local applied, m = {}, tonumber(ARGV[at])
for i = at + 1, at + m do applied[#applied + 1] = ARGV[i] end
at = at + m + 1
local since, r = ARGV[at], tonumber(ARGV[at + 1])
local passed = at + 2
at = passed + r
local used = {}  -- subject|period -> credits charged or held that SQL has not
local function use(subject, p, credits)
  local k = subject .. '|' .. p
  used[k] = (used[k] or 0) + credits
end
local function entry(raw)
  local ok, d = pcall(cjson.decode, raw or '')
  if not ok or type(d) ~= 'table' or d.workspace_id ~= ws or known[d.request_id] then return end
  local ad, td = tonumber(d.allotment_delta or 0), tonumber(d.topup_delta or 0)
  local p = d.period_start
  if type(p) ~= 'string' then
    tr = tr + td
  elseif d.kind == 'allotment' and p > period then
    period, allotment, ar, tr = p, ad, ad, tr + td
  elseif p == period then
    if d.kind == 'allotment' then allotment = allotment + ad end
    ar, tr = ar + ad, tr + td
  else
    tr = tr + td
  end
  if d.kind == 'reply' then
    if type(p) == 'string' then
      if type(d.key_id) == 'string' then use('key:' .. d.key_id, p, tonumber(d.credits or 0)) end
      if type(d.agent_id) == 'string' then use('agent:' .. d.agent_id, p, tonumber(d.credits or 0)) end
    end
  else
    applied[#applied + 1] = d.request_id
  end
end
for i = passed, at - 1 do entry(ARGV[i]) end
for _, e in ipairs(redis.call('XRANGE', KEYS[5], since == '' and '-' or '(' .. since, '+')) do
  for i = 1, #e[2], 2 do if e[2][i] == 'e' then entry(e[2][i + 1]) end end
end
local reserved, dropped = 0, 0
local holds = redis.call('HGETALL', KEYS[3])
for i = 1, #holds, 2 do
  local id, h = holds[i], holds[i + 1]
  local hws, credits, fa, ft, hp, caps = string.match(h, '^([^|]*)|(%d+)|(%d+)|(%d+)|([^|]*)|?(.*)$')
  if hws == ws then
    if known[id] then
      redis.call('HDEL', KEYS[3], id)
      redis.call('ZREM', KEYS[4], id)
      dropped = dropped + 1
    else
      reserved = reserved + tonumber(credits)
      if hp == period then ar = ar - tonumber(fa) end
      tr = tr - tonumber(ft)
      for subject in string.gmatch(caps, '[^,]+') do use(subject, hp, tonumber(credits)) end
    end
  end
end
redis.call('HSET', KEYS[1], 'period', period, 'allotment', allotment, 'allot_rem', ar,
           'top_rem', tr, 'reserved', reserved)
for i = at, #ARGV, 4 do
  redis.call('HSET', KEYS[1], ARGV[i], tonumber(ARGV[i + 3]) + (used[ARGV[i + 1] .. '|' .. ARGV[i + 2]] or 0))
end
redis.call('DEL', KEYS[2])
for i = 1, #applied, 1000 do
  redis.call('SADD', KEYS[2], unpack(applied, i, math.min(i + 999, #applied)))
end
return {1, ar, tr, reserved, dropped}
"""
