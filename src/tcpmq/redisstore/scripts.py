"""The Lua scripts of the redis store: each atomic step of the broker is one script.

Every key a script touches is in one channel's slot (the hash tag `{ch:NAME}`),
so a Redis Cluster runs it on one shard; KEYS[1] is the channel's entry `P m`
and the other keys are derived from its prefix `P` (docs/redis-design.md has
the layout). Per-user byte quotas also read the directory's `held` hash, which
is in another slot: only on a single Redis (ARGV `accounts` names the key, or
is empty on a Cluster).

Scripts check everything before their first write (Redis does not roll back a
script that fails halfway) and answer with a status first: `{1, ...}` for a
result, `{0, code, message, limit, max}` for an error, mapped back to the
broker's exceptions by `backend.py`.
"""

from __future__ import annotations

# Shared by every script: keys, sizes, references to stored bodies, queue views.
PRELUDE = r"""
local P = string.sub(KEYS[1], 1, -2)
local function fail(code, message, limit, max)
  return {0, code, message, limit or '', max or 0}
end
local function qkey(quid) return P .. 'q' .. quid .. ':' end
-- A message as stored for one queue: `{"id":N` + its tail.
local function headlen(id, tail) return 6 + #tostring(id) + #tail end
-- Release one queue's reference to a body; returns the head's length.
local function release(id)
  local tail = redis.call('HGET', P .. 'b', id)
  if not tail then return 0 end
  local refs = redis.call('HINCRBY', P .. 'r', id, -1)
  if refs <= 0 then
    redis.call('HDEL', P .. 'b', id)
    redis.call('HDEL', P .. 'r', id)
  end
  return headlen(id, tail)
end
-- The same for many ids at once (a few calls, not a few per id); returns
-- the heads' total length.
local function release_all(ids)
  if #ids == 0 then return 0 end
  local tails = redis.call('HMGET', P .. 'b', unpack(ids))
  local refs = redis.call('HMGET', P .. 'r', unpack(ids))
  local gone, kept, counted, total = {}, {}, {}, 0
  for i, id in ipairs(ids) do
    if tails[i] then
      total = total + headlen(id, tails[i])
      local left = (tonumber(refs[i]) or 1) - 1
      if left <= 0 then
        gone[#gone + 1] = id
        if refs[i] then counted[#counted + 1] = id end
      else
        kept[#kept + 1] = id
        kept[#kept + 1] = left
      end
    end
  end
  if #gone > 0 then redis.call('HDEL', P .. 'b', unpack(gone)) end
  if #counted > 0 then redis.call('HDEL', P .. 'r', unpack(counted)) end
  if #kept > 0 then redis.call('HSET', P .. 'r', unpack(kept)) end
  return total
end
-- In flight: the set `Q i` of ids (an intset while small: cheap to add to and
-- look up, where a sorted set of deadlines costs O(n) per member while it is a
-- listpack). Deadlines are per pull: `Q d` scores each pull's `seq` by its
-- deadline, `Q b<seq>` holds the ids it delivered, and `Q rb` names the pull
-- of a message delivered again (a nack or timeout and a new pull), so that the
-- earlier pull's deadline passes it by.
local function forget_pulls(Q)
  local seqs = redis.call('ZRANGE', Q .. 'd', 0, -1)
  for _, seq in ipairs(seqs) do redis.call('DEL', Q .. 'b' .. seq) end
  redis.call('DEL', Q .. 'd', Q .. 'rb')
end
local function settled(Q)
  if redis.call('SCARD', Q .. 'i') == 0 then forget_pulls(Q) end
end
-- Deliveries so far of a message delivered before (a missing count means 1).
local function attempts(Q, id)
  return tonumber(redis.call('HGET', Q .. 'a', id) or 1)
end
local function num(v, default)
  if v == false or v == nil or v == '' then return default end
  return tonumber(v)
end
local function effective(own, server)
  own = num(own, nil)
  if own == nil or own > server then return server end
  return own
end
local function account(accounts, owner, delta)
  if accounts ~= '' and delta ~= 0 then redis.call('HINCRBY', accounts, owner, delta) end
end
local function may(meta_owner, access, user, admin, right)
  if access == 'public' or admin == '1' or user == meta_owner then return true end
  local held = redis.call('HGET', P .. 'g', user)
  return held and string.find(held, right, 1, true) ~= nil
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Wake the pulls waiting on the channel, on every node (see backend.Wakes):
-- only while some node has said it has pulls waiting here (`P w`: node ->
-- until when, Redis time), so that a channel nobody long-polls costs no
-- message to every node per publish.
local function wake()
  local last = redis.call('ZRANGE', P .. 'w', -1, -1, 'WITHSCORES')
  if last[2] == nil then return end
  if tonumber(last[2]) < now_ms() then
    redis.call('DEL', P .. 'w')
    return
  end
  local prefix, channel = string.match(KEYS[1], '^(.-){ch:(.*)}:m$')
  redis.call('PUBLISH', prefix .. 'wake', channel)
end
-- The queue object's stored parts; backend.py makes the protocol's object.
local function qview(name, quid, mq, mb)
  local Q = qkey(quid)
  local f = redis.call('HMGET', Q, 'owner', 'created_at', 'ack_timeout', 'overflow',
    'own_max_messages', 'own_max_bytes', 'dropped', 'delivered', 'acked')
  local oldest = nil
  local r0 = redis.call('ZRANGE', Q .. 'r', 0, 0)
  local f0 = redis.call('LRANGE', Q .. 'f', 0, 0)
  local cands = {r0[1], f0[1]}
  for _, c in ipairs(redis.call('SMEMBERS', Q .. 'i')) do
    if cands[3] == nil or tonumber(c) < tonumber(cands[3]) then cands[3] = c end
  end
  for _, c in pairs(cands) do
    if c and (oldest == nil or tonumber(c) < tonumber(oldest)) then oldest = c end
  end
  local tail = ''
  if oldest then tail = redis.call('HGET', P .. 'b', oldest) or '' end
  return {name, f[1], f[2], f[3],
    redis.call('LLEN', Q .. 'f') + redis.call('ZCARD', Q .. 'r'),
    redis.call('SCARD', Q .. 'i'), tail, redis.call('ZCARD', Q .. 'r'), f[4],
    effective(f[5], mq), effective(f[6], mb), tonumber(f[7] or 0), quid,
    tonumber(oldest or 0), tonumber(f[8] or 0), tonumber(f[9] or 0)}
end
local function cview(meta)
  local m = redis.call('HMGET', meta, 'owner', 'access', 'created_at', 'published', 'last')
  local depth = 0
  local qs = redis.call('HVALS', P .. 'qs')
  for _, quid in ipairs(qs) do
    local Q = qkey(quid)
    depth = depth + redis.call('LLEN', Q .. 'f') + redis.call('ZCARD', Q .. 'r')
  end
  return {m[1], m[2], m[3], tonumber(m[4]), #qs, depth, tonumber(m[5])}
end
"""

# ARGV: node, seconds. The node has pulls waiting on the channel: wake it (every
# node) on what makes messages ready, until `seconds` from now.
WANT_WAKES = r"""
local ttl = tonumber(ARGV[2]) * 1000
redis.call('ZADD', P .. 'w', now_ms() + ttl, ARGV[1])
redis.call('PEXPIRE', P .. 'w', ttl)  -- gone with the last node that asked
return {1}
"""

# ARGV: user, admin, max_queue_messages, max_queue_bytes, largest stored,
# accounts key ('' on a Cluster), quota, exempt ('|a|b|'), then the tails.
PUBLISH = r"""
local user, admin = ARGV[1], ARGV[2]
local mq, mb, largest = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local accounts, quota, exempt = ARGV[6], tonumber(ARGV[7]), ARGV[8]
local m = redis.call('HMGET', KEYS[1], 'owner', 'access', 'last')
if not m[1] then return fail('not_found', 'channel does not exist') end
if not may(m[1], m[2], user, admin, 'p') then return fail('forbidden_publish') end
local first = tonumber(m[3]) + 1
local tails, sizes, total = {}, {}, 0
for i = 9, #ARGV do
  local id = first + i - 9
  local size = headlen(id, ARGV[i])
  if size > largest then return fail('too_large', tostring(i - 9), tostring(size)) end
  tails[#tails + 1] = ARGV[i]
  sizes[#sizes + 1] = size
  total = total + size
end
local count = #tails
local names = redis.call('HGETALL', P .. 'qs')
local queues = {}
local spent = {}
local function free_of(owner)
  if accounts == '' or string.find(exempt, '|' .. owner .. '|', 1, true) then return nil end
  if spent[owner] == nil then
    spent[owner] = num(redis.call('HGET', accounts, owner), 0)
  end
  return quota - spent[owner]
end
for i = 1, #names, 2 do
  local Q = qkey(names[i + 1])
  local f = redis.call('HMGET', Q, 'owner', 'overflow', 'own_max_messages', 'own_max_bytes',
    'held', 'held_bytes')
  local q = {name = names[i], key = Q, owner = f[1], overflow = f[2],
    maxm = effective(f[3], mq), maxb = effective(f[4], mb),
    held = num(f[5], 0), bytes = num(f[6], 0)}
  local free = free_of(q.owner)
  if q.held + count > q.maxm or q.bytes + total > q.maxb or (free ~= nil and total > free) then
    if q.overflow == 'reject' then
      if q.held + count > q.maxm then
        return fail('full', q.name, 'max_queue_messages', q.maxm)
      elseif q.bytes + total > q.maxb then
        return fail('full', q.name, 'max_queue_bytes', q.maxb)
      end
      return fail('user_full', q.owner .. '\0' .. q.name, 'max_queued_bytes_per_user', quota)
    end
    q.over = true
  elseif free ~= nil then
    spent[q.owner] = spent[q.owner] + total
  end
  queues[#queues + 1] = q
end
local last = first + count - 1
redis.call('HSET', KEYS[1], 'last', last)
redis.call('HINCRBY', KEYS[1], 'published', count)
local fanout = #queues
if fanout == 0 then return {1, first, 0} end
local ids, bodies, refs = {}, {}, {}
for i = 1, count do
  ids[i] = first + i - 1
  bodies[#bodies + 1] = ids[i]
  bodies[#bodies + 1] = tails[i]
  refs[#refs + 1] = ids[i]
  refs[#refs + 1] = fanout
end
redis.call('HSET', P .. 'b', unpack(bodies))
-- A missing count means 1: a channel with one queue writes none.
if fanout > 1 then redis.call('HSET', P .. 'r', unpack(refs)) end
for _, q in ipairs(queues) do
  if not q.over then
    redis.call('RPUSH', q.key .. 'f', unpack(ids))
    redis.call('HINCRBY', q.key, 'held', count)
    redis.call('HINCRBY', q.key, 'held_bytes', total)
    account(accounts, q.owner, total)
  else
    -- Message by message, as if published one by one (Broker._overflow).
    local drop_oldest = q.overflow == 'drop_oldest'
    local inflight = redis.call('SCARD', q.key .. 'i')
    local free = free_of(q.owner)
    local dropped, delta = 0, 0
    local function fits(len)
      return q.held < q.maxm and q.bytes + len <= q.maxb and (free == nil or len <= free)
    end
    for i = 1, count do
      local len = sizes[i]
      if drop_oldest and inflight < q.maxm and len <= q.maxb
          and (free == nil or len <= free + q.bytes) then
        while not fits(len) do
          local old = redis.call('ZPOPMIN', q.key .. 'r')
          local oid = old[1]
          if oid then
            redis.call('HDEL', q.key .. 'a', oid)
          else
            oid = redis.call('LPOP', q.key .. 'f')
          end
          if not oid then break end
          local olen = release(oid)
          q.held = q.held - 1
          q.bytes = q.bytes - olen
          delta = delta - olen
          if free ~= nil then free = free + olen end
          dropped = dropped + 1
        end
      end
      if fits(len) then
        redis.call('RPUSH', q.key .. 'f', ids[i])
        q.held = q.held + 1
        q.bytes = q.bytes + len
        delta = delta + len
        if free ~= nil then free = free - len end
      else
        release(ids[i])
        dropped = dropped + 1
      end
    end
    redis.call('HSET', q.key, 'held', q.held, 'held_bytes', q.bytes)
    redis.call('HINCRBY', q.key, 'dropped', dropped)
    account(accounts, q.owner, delta)
  end
end
wake()
return {1, first, fanout}
"""


def _owned_queue(after: str) -> str:
    """The start of every script on one queue: ARGV[1] queue, ARGV[2] user, ARGV[3] admin."""
    return (
        r"""
local qname, user, admin = ARGV[1], ARGV[2], ARGV[3]
local quid = redis.call('HGET', P .. 'qs', qname)
if not quid then
  if redis.call('EXISTS', KEYS[1]) == 0 then return fail('not_found', 'channel does not exist') end
  return fail('not_found', 'queue', qname)
end
local Q = qkey(quid)
local qowner = redis.call('HGET', Q, 'owner')
"""
        + after
    )


_OWNER_ONLY = r"""
if qowner ~= user and admin ~= '1' then
  return fail('forbidden', "queue '" .. qname .. "' belongs to another user")
end
"""

# ARGV: queue, user, admin, max, reply budget, max_inflight.
PULL = _owned_queue(
    _OWNER_ONLY
    + r"""
local count = tonumber(ARGV[4])
local budget = tonumber(ARGV[5])
local room = tonumber(ARGV[6]) - redis.call('SCARD', Q .. 'i')
if room < count then count = room end
local now = now_ms()
if count <= 0 then return {1, now, 0} end
local deadline = now + math.floor(tonumber(redis.call('HGET', Q, 'ack_timeout')) * 1000)
local out = {1, now, deadline}
local taken, again = {}, {}
local retry = redis.call('ZRANGE', Q .. 'r', 0, count - 1)
for _, id in ipairs(retry) do
  local tail = redis.call('HGET', P .. 'b', id)
  local size = headlen(id, tail) + 24
  if #taken > 0 and size > budget then break end
  budget = budget - size
  redis.call('ZREM', Q .. 'r', id)
  local attempt = attempts(Q, id) + 1
  redis.call('HSET', Q .. 'a', id, attempt)
  again[#again + 1] = id
  taken[#taken + 1] = id
  out[#out + 1] = id
  out[#out + 1] = attempt
  out[#out + 1] = tail
end
local want = count - #taken
if want > 0 and #taken == #retry then
  local fresh = redis.call('LRANGE', Q .. 'f', 0, want - 1)
  if #fresh > 0 then
    local tails = redis.call('HMGET', P .. 'b', unpack(fresh))
    local n = 0
    for i, id in ipairs(fresh) do
      local size = headlen(id, tails[i]) + 24
      if #taken > 0 and size > budget then break end
      budget = budget - size
      n = n + 1
      taken[#taken + 1] = id
      out[#out + 1] = id
      out[#out + 1] = 1
      out[#out + 1] = tails[i]
    end
    if n > 0 then redis.call('LTRIM', Q .. 'f', n, -1) end
  end
end
if #taken > 0 then
  local seq = redis.call('HINCRBY', Q, 'seq', 1)
  redis.call('SADD', Q .. 'i', unpack(taken))
  redis.call('SADD', Q .. 'b' .. seq, unpack(taken))
  redis.call('ZADD', Q .. 'd', deadline, seq)
  for _, id in ipairs(again) do redis.call('HSET', Q .. 'rb', id, seq) end
  redis.call('HINCRBY', Q, 'delivered', #taken)
end
return out
"""
)

# ARGV: queue, user, admin, max, reply budget. Changes nothing.
PEEK = _owned_queue(
    _OWNER_ONLY
    + r"""
local count = tonumber(ARGV[4])
local budget = tonumber(ARGV[5])
local out = {1}
local n = 0
local function add(id, attempt, tail)
  local size = headlen(id, tail) + 24
  if n > 0 and size > budget then return false end
  budget = budget - size
  n = n + 1
  out[#out + 1] = id
  out[#out + 1] = attempt
  out[#out + 1] = tail
  return true
end
local retry = redis.call('ZRANGE', Q .. 'r', 0, count - 1)
for _, id in ipairs(retry) do
  if not add(id, attempts(Q, id) + 1,
      redis.call('HGET', P .. 'b', id)) then return out end
end
if count - n > 0 then
  local fresh = redis.call('LRANGE', Q .. 'f', 0, count - n - 1)
  if #fresh > 0 then
    local tails = redis.call('HMGET', P .. 'b', unpack(fresh))
    for i, id in ipairs(fresh) do
      if not add(id, 1, tails[i]) then return out end
    end
  end
end
return out
"""
)

# ARGV: queue, user, admin, accounts key, max_inflight, ids...
ACK = _owned_queue(
    _OWNER_ONLY
    + r"""
local accounts = ARGV[4]
local was_full = redis.call('SCARD', Q .. 'i') >= tonumber(ARGV[5])
local ids, seen = {}, {}
local unknown = {}
for i = 6, #ARGV do
  local id = ARGV[i]
  if seen[id] then unknown[#unknown + 1] = id else
    seen[id] = true
    ids[#ids + 1] = id
  end
end
local member = redis.call('SMISMEMBER', Q .. 'i', unpack(ids))
local found = {}
for i, id in ipairs(ids) do
  if member[i] == 1 then found[#found + 1] = id else unknown[#unknown + 1] = id end
end
local acked, freed = #found, 0
if acked > 0 then
  redis.call('SREM', Q .. 'i', unpack(found))
  redis.call('HDEL', Q .. 'a', unpack(found))
  if redis.call('EXISTS', Q .. 'rb') == 1 then redis.call('HDEL', Q .. 'rb', unpack(found)) end
  settled(Q)
  freed = release_all(found)
  redis.call('HINCRBY', Q, 'held', 0 - acked)
  redis.call('HINCRBY', Q, 'held_bytes', 0 - freed)
  redis.call('HINCRBY', Q, 'acked', acked)
  account(accounts, qowner, 0 - freed)
end
if was_full and acked > 0 then wake() end
return {1, acked, unknown}
"""
)

# ARGV: queue, user, admin, ids...
NACK = _owned_queue(
    _OWNER_ONLY
    + r"""
local requeued = 0
local unknown = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  if redis.call('SREM', Q .. 'i', id) == 1 then
    redis.call('ZADD', Q .. 'r', id, id)
    redis.call('HDEL', Q .. 'rb', id)
    requeued = requeued + 1
  else
    unknown[#unknown + 1] = id
  end
end
if requeued > 0 then
  settled(Q)
  wake()
end
return {1, requeued, unknown}
"""
)

# Every queue of the channel: in-flight messages past their deadline are ready
# again. Returns how many, and the channel's next deadline (-1: none).
EXPIRE = r"""
local now = now_ms()
local expired, next_at = 0, -1
if redis.call('EXISTS', KEYS[1]) == 0 then return {1, 0, -1, now} end
for _, quid in ipairs(redis.call('HVALS', P .. 'qs')) do
  local Q = qkey(quid)
  for _, seq in ipairs(redis.call('ZRANGEBYSCORE', Q .. 'd', '-inf', now, 'LIMIT', 0, 100)) do
    local ids = redis.call('SMEMBERS', Q .. 'b' .. seq)
    if #ids > 0 then
      local member = redis.call('SMISMEMBER', Q .. 'i', unpack(ids))
      for i, id in ipairs(ids) do
        -- Still in flight from this pull (not delivered again since)?
        if member[i] == 1 and (redis.call('HGET', Q .. 'rb', id) or seq) == seq then
          redis.call('SREM', Q .. 'i', id)
          redis.call('HDEL', Q .. 'rb', id)
          redis.call('ZADD', Q .. 'r', id, id)
          expired = expired + 1
        end
      end
    end
    redis.call('DEL', Q .. 'b' .. seq)
    redis.call('ZREM', Q .. 'd', seq)
  end
  settled(Q)
  local first = redis.call('ZRANGE', Q .. 'd', 0, 0, 'WITHSCORES')
  if first[2] then
    local at = tonumber(first[2])
    if next_at < 0 or at < next_at then next_at = at end
  end
end
if expired > 0 then wake() end
return {1, expired, next_at, now}
"""

# ARGV: queue, user, admin, accounts key. Ready messages go; in-flight ones stay.
PURGE = r"""
local qname, user, admin, accounts = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local quid = redis.call('HGET', P .. 'qs', qname)
local Q = qkey(quid)
local freed, n = 0, 0
local retry = redis.call('ZRANGE', Q .. 'r', 0, -1)
if #retry > 0 then redis.call('HDEL', Q .. 'a', unpack(retry)) end
for _, ids in ipairs({retry, redis.call('LRANGE', Q .. 'f', 0, -1)}) do
  -- In chunks: unpack takes a few thousand values at most.
  for start = 1, #ids, 1000 do
    freed = freed + release_all({unpack(ids, start, math.min(start + 999, #ids))})
  end
  n = n + #ids
end
redis.call('DEL', Q .. 'r', Q .. 'f')
redis.call('HINCRBY', Q, 'held', 0 - n)
redis.call('HINCRBY', Q, 'held_bytes', 0 - freed)
account(accounts, redis.call('HGET', Q, 'owner'), 0 - freed)
return {1, n}
"""

# Drop a queue and every message it holds. ARGV: queue, accounts key.
_DROP_QUEUE = r"""
local function drop_queue(qname, accounts)
  local quid = redis.call('HGET', P .. 'qs', qname)
  if not quid then return nil end
  local Q = qkey(quid)
  local owner = redis.call('HGET', Q, 'owner')
  local freed = 0
  forget_pulls(Q)
  for _, ids in ipairs({redis.call('ZRANGE', Q .. 'r', 0, -1), redis.call('SMEMBERS', Q .. 'i'),
      redis.call('LRANGE', Q .. 'f', 0, -1)}) do
    for start = 1, #ids, 1000 do
      freed = freed + release_all({unpack(ids, start, math.min(start + 999, #ids))})
    end
  end
  redis.call('DEL', Q, Q .. 'r', Q .. 'i', Q .. 'f', Q .. 'a')
  redis.call('HDEL', P .. 'qs', qname)
  account(accounts, owner, 0 - freed)
  return owner
end
-- Drop every queue `user` owns on the channel; returns how many.
local function drop_queues_of(user, accounts)
  local dropped = 0
  local names = redis.call('HGETALL', P .. 'qs')
  for i = 1, #names, 2 do
    if redis.call('HGET', qkey(names[i + 1]), 'owner') == user then
      drop_queue(names[i], accounts)
      dropped = dropped + 1
    end
  end
  return dropped
end
"""

# ARGV: queue, accounts key. Who may is checked before (QUEUE_GET).
DELETE_QUEUE = (
    _DROP_QUEUE
    + r"""
local owner = drop_queue(ARGV[1], ARGV[2])
if not owner then return fail('not_found', 'queue', ARGV[1]) end
return {1, owner}
"""
)

# ARGV: accounts key. Returns the owners of the queues dropped.
DELETE_CHANNEL = (
    _DROP_QUEUE
    + r"""
local owners = {}
for _, qname in ipairs(redis.call('HKEYS', P .. 'qs')) do
  owners[#owners + 1] = drop_queue(qname, ARGV[1])
end
redis.call('DEL', KEYS[1], P .. 'g', P .. 'qs', P .. 'b', P .. 'r', P .. 'w')
return {1, owners}
"""
)

# ARGV: user, heir, accounts key. The user is gone: its queues and grants go,
# its channel passes to the heir. Returns the queues dropped, and 1 if inherited.
FORGET_USER = (
    _DROP_QUEUE
    + r"""
local user, heir = ARGV[1], ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 0 then return {1, 0, 0} end
local dropped = drop_queues_of(user, ARGV[3])
redis.call('HDEL', P .. 'g', user)
local inherited = 0
if redis.call('HGET', KEYS[1], 'owner') == user then
  redis.call('HSET', KEYS[1], 'owner', heir)
  inherited = 1
end
return {1, dropped, inherited}
"""
)

# ARGV: name, owner, created_at, access, uid.
CREATE_CHANNEL = r"""
if redis.call('EXISTS', KEYS[1]) == 1 then return fail('exists') end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'owner', ARGV[2], 'created_at', ARGV[3],
  'access', ARGV[4], 'uid', ARGV[5], 'last', 0, 'published', 0)
return {1, cview(KEYS[1])}
"""

CHANNEL_GET = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return fail('not_found', 'channel does not exist') end
return {1, cview(KEYS[1])}
"""

# ARGV: max_queue_messages, max_queue_bytes. The channel, its grants and queues.
CHANNEL_DETAIL = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return fail('not_found', 'channel does not exist') end
local queues = {}
local names = redis.call('HGETALL', P .. 'qs')
for i = 1, #names, 2 do
  queues[#queues + 1] = qview(names[i], names[i + 1], tonumber(ARGV[1]), tonumber(ARGV[2]))
end
return {1, cview(KEYS[1]), redis.call('HGETALL', P .. 'g'), queues}
"""

# ARGV: queue (or ''), max_queue_messages, max_queue_bytes. A queue's view and
# the channel's owner (who may manage it), or with '' every queue's view.
QUEUE_GET = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return fail('not_found', 'channel does not exist') end
local mq, mb = tonumber(ARGV[2]), tonumber(ARGV[3])
local owner = redis.call('HGET', KEYS[1], 'owner')
if ARGV[1] ~= '' then
  local quid = redis.call('HGET', P .. 'qs', ARGV[1])
  if not quid then return fail('not_found', 'queue', ARGV[1]) end
  return {1, owner, {qview(ARGV[1], quid, mq, mb)}}
end
local queues = {}
local names = redis.call('HGETALL', P .. 'qs')
for i = 1, #names, 2 do queues[#queues + 1] = qview(names[i], names[i + 1], mq, mb) end
return {1, owner, queues}
"""

# ARGV: caller, admin, user, rights ('p', 's' or 'ps'), mode ('grant' or
# 'revoke'), user_admin. Returns the rights left and the queues dropped.
RIGHTS = (
    _DROP_QUEUE
    + r"""
local caller, admin, user, rights, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local m = redis.call('HMGET', KEYS[1], 'owner', 'access')
if not m[1] then return fail('not_found', 'channel does not exist') end
if admin ~= '1' and caller ~= m[1] then return fail('not_manager', m[1]) end
local held = redis.call('HGET', P .. 'g', user) or ''
local after = ''
for _, r in ipairs({'p', 's'}) do
  local has = string.find(held, r, 1, true) ~= nil
  local asked = string.find(rights, r, 1, true) ~= nil
  if (mode == 'grant' and (has or asked)) or (mode == 'revoke' and has and not asked) then
    after = after .. r
  end
end
if after == '' then redis.call('HDEL', P .. 'g', user)
else redis.call('HSET', P .. 'g', user, after) end
local dropped = 0
if mode == 'revoke' and string.find(rights, 's', 1, true)
    and not may(m[1], m[2], user, ARGV[6], 's') then
  dropped = drop_queues_of(user, ARGV[7])
end
return {1, after, dropped}
"""
)

# ARGV: caller, admin, access. Made private, queue owners get 's'.
SET_ACCESS = r"""
local caller, admin, access = ARGV[1], ARGV[2], ARGV[3]
local m = redis.call('HMGET', KEYS[1], 'owner', 'access')
if not m[1] then return fail('not_found', 'channel does not exist') end
if admin ~= '1' and caller ~= m[1] then return fail('not_manager', m[1]) end
local granted = {}
if access == 'private' and m[2] == 'public' then
  local owners = {}
  for _, quid in ipairs(redis.call('HVALS', P .. 'qs')) do
    owners[redis.call('HGET', qkey(quid), 'owner')] = true
  end
  local sorted = {}
  for owner in pairs(owners) do sorted[#sorted + 1] = owner end
  table.sort(sorted)
  for _, owner in ipairs(sorted) do
    local held = redis.call('HGET', P .. 'g', owner) or ''
    if owner ~= m[1] and not string.find(held, 's', 1, true) then
      local after = ''
      if string.find(held, 'p', 1, true) then after = 'p' end
      redis.call('HSET', P .. 'g', owner, after .. 's')
      granted[#granted + 1] = owner
    end
  end
end
redis.call('HSET', KEYS[1], 'access', access)
return {1, granted}
"""

# Settings of an existing queue, as Broker._configure. Expects `m_owner`,
# `Q`, `user`, `admin`, and ARGV overflow, max_messages, max_bytes at `base`.
_CONFIGURE = r"""
local m_owner, Q, user, admin
local function configure(base, mq, mb)
  local overflow, asked_m, asked_b = ARGV[base], ARGV[base + 1], ARGV[base + 2]
  local manager = admin == '1' or user == m_owner
  if overflow == 'reject' and not manager then return fail('reject_forbidden', m_owner) end
  if not manager then
    local f = redis.call('HMGET', Q, 'own_max_messages', 'own_max_bytes')
    if asked_m ~= '' and tonumber(asked_m) > effective(f[1], mq) then
      return fail('raise_forbidden', 'max_messages', m_owner, effective(f[1], mq))
    end
    if asked_b ~= '' and tonumber(asked_b) > effective(f[2], mb) then
      return fail('raise_forbidden', 'max_bytes', m_owner, effective(f[2], mb))
    end
  end
  if overflow ~= '' then redis.call('HSET', Q, 'overflow', overflow) end
  if asked_m ~= '' then redis.call('HSET', Q, 'own_max_messages', asked_m) end
  if asked_b ~= '' then redis.call('HSET', Q, 'own_max_bytes', asked_b) end
  return nil
end
"""

# ARGV: queue, user, admin, ack_timeout ('' none), created_at, reserved_for,
# overflow, max_messages, max_bytes, max_queue_messages, max_queue_bytes,
# max_queues_per_channel, default_ack_timeout, may_create, uid.
SUBSCRIBE = (
    _CONFIGURE
    + r"""
local qname = ARGV[1]
user, admin = ARGV[2], ARGV[3]
local mq, mb = tonumber(ARGV[10]), tonumber(ARGV[11])
local m = redis.call('HMGET', KEYS[1], 'owner', 'access')
m_owner = m[1]
if not m_owner then return fail('not_found', 'channel does not exist') end
local quid = redis.call('HGET', P .. 'qs', qname)
if quid then
  Q = qkey(quid)
  local owner = redis.call('HGET', Q, 'owner')
  if owner ~= user and admin ~= '1' then return fail('taken', owner, m_owner) end
  local refused = configure(7, mq, mb)
  if refused then return refused end
  if ARGV[4] ~= '' then redis.call('HSET', Q, 'ack_timeout', ARGV[4]) end
  return {1, 0, qview(qname, quid, mq, mb)}
end
if not may(m_owner, m[2], user, admin, 's') then return fail('forbidden_subscribe') end
local reserved = ARGV[6]
if reserved ~= '' and reserved ~= user and admin ~= '1' then
  return fail('reserved', reserved)
end
if ARGV[7] == 'reject' and admin ~= '1' and user ~= m_owner then
  return fail('reject_forbidden', m_owner)
end
local manager = admin == '1' or user == m_owner
if redis.call('HLEN', P .. 'qs') >= tonumber(ARGV[12]) and not manager then
  return fail('limit', 'too many queues in this channel', 'max_queues_per_channel',
    tonumber(ARGV[12]))
end
if ARGV[14] ~= '1' then return {1, 2} end
quid = ARGV[15]
Q = qkey(quid)
local overflow = ARGV[7]
if overflow == '' then
  if admin == '1' or user == m_owner then overflow = 'reject' else overflow = 'drop_oldest' end
end
local ack = ARGV[4]
if ack == '' then ack = ARGV[13] end
redis.call('HSET', Q, 'owner', user, 'created_at', ARGV[5], 'ack_timeout', ack,
  'overflow', overflow, 'held', 0, 'held_bytes', 0, 'dropped', 0, 'delivered', 0, 'acked', 0)
if ARGV[8] ~= '' then redis.call('HSET', Q, 'own_max_messages', ARGV[8]) end
if ARGV[9] ~= '' then redis.call('HSET', Q, 'own_max_bytes', ARGV[9]) end
redis.call('HSET', P .. 'qs', qname, quid)
return {1, 1, qview(qname, quid, mq, mb)}
"""
)

# ARGV: queue, user, admin, overflow, max_messages, max_bytes, max_queue_messages,
# max_queue_bytes. Who may manage the queue was checked (QUEUE_GET) before.
UPDATE_QUEUE = (
    _CONFIGURE
    + r"""
local qname = ARGV[1]
user, admin = ARGV[2], ARGV[3]
local mq, mb = tonumber(ARGV[7]), tonumber(ARGV[8])
m_owner = redis.call('HGET', KEYS[1], 'owner')
if not m_owner then return fail('not_found', 'channel does not exist') end
local quid = redis.call('HGET', P .. 'qs', qname)
if not quid then return fail('not_found', 'queue', qname) end
Q = qkey(quid)
local refused = configure(4, mq, mb)
if refused then return refused end
return {1, qview(qname, quid, mq, mb)}
"""
)

# The directory (`{dir}` slot): channel names and per-user counts.
# ARGV: kind ('channel' or 'queue'), name, owner, limit, per-user limit
# (-1: exempt). Returns a new uid.
RESERVE = r"""
local D = string.sub(KEYS[1], 1, -9)
local kind, name, owner = ARGV[1], ARGV[2], ARGV[3]
local limit, per_user = tonumber(ARGV[4]), tonumber(ARGV[5])
if kind == 'channel' then
  if redis.call('HEXISTS', KEYS[1], name) == 1 then return {0, 'exists'} end
  if redis.call('HLEN', KEYS[1]) >= limit then return {0, 'max_channels', limit} end
  if per_user >= 0 and tonumber(redis.call('HGET', D .. 'owned', owner) or 0) >= per_user then
    return {0, 'max_channels_per_user', per_user}
  end
  redis.call('HSET', KEYS[1], name, owner)
  redis.call('HINCRBY', D .. 'owned', owner, 1)
else
  if per_user >= 0 and tonumber(redis.call('HGET', D .. 'queues', owner) or 0) >= per_user then
    return {0, 'max_queues_per_user', per_user}
  end
  redis.call('HINCRBY', D .. 'queues', owner, 1)
end
return {1, redis.call('INCR', D .. 'uid')}
"""

# ARGV: kind, name, owner, count. Gives back what RESERVE took (a channel
# deleted or never made; queues dropped).
RELEASE = r"""
local D = string.sub(KEYS[1], 1, -9)
local kind, name, owner, count = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local key = D .. 'queues'
if kind == 'channel' then
  if name ~= '' then redis.call('HDEL', KEYS[1], name) end
  key = D .. 'owned'
end
if owner ~= '' and redis.call('HINCRBY', key, owner, 0 - count) <= 0 then
  redis.call('HDEL', key, owner)
end
return {1}
"""

# ARGV: user, heir, channels inherited. The user is gone from the directory.
FORGET_OWNER = r"""
local D = string.sub(KEYS[1], 1, -9)
local user, heir, inherited = ARGV[1], ARGV[2], tonumber(ARGV[3])
redis.call('HDEL', D .. 'owned', user)
redis.call('HDEL', D .. 'queues', user)
redis.call('HDEL', D .. 'held', user)
local names = redis.call('HGETALL', KEYS[1])
for i = 1, #names, 2 do
  if names[i + 1] == user then redis.call('HSET', KEYS[1], names[i], heir) end
end
if inherited > 0 then redis.call('HINCRBY', D .. 'owned', heir, inherited) end
return {1}
"""


#: Scripts that only free memory (or move what is there): they must run when
#: Redis is at `maxmemory`, so that consumers can drain a full store.
FREEING = frozenset(
    {"ACK", "NACK", "EXPIRE", "PURGE", "DELETE_QUEUE", "DELETE_CHANNEL", "FORGET_USER"}
    | {"WANT_WAKES"}
)


#: Scripts that change nothing (no WAIT for replicas after them).
#: (And the wake registration: nothing is lost if a failover loses it.)
READ_ONLY = frozenset({"PEEK", "CHANNEL_GET", "CHANNEL_DETAIL", "QUEUE_GET", "WANT_WAKES"})


def source(name: str) -> str:
    """The full source of a channel script."""
    flags = "#!lua flags=allow-oom\n" if name in FREEING else ""
    body: str = globals()[name]
    return flags + PRELUDE + body
