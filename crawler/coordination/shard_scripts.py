"""The Lua scripts of the shard queue (``crawler/coordination/shardqueue.py``), one per change that must be
atomic on the Redis server: a script runs whole, with nothing in between, and its effects reach the AOF and
replicas as one transaction.

Each script gets every key it touches in KEYS (none is built inside Lua) and uses only commands Redis 7.0
has. Lease checks read the consumer group's idle times and TIME, both the server's clock.
"""

from __future__ import annotations

# KEYS: meta, runs, shards. ARGV: spec, run_id, group.
PUT_RUN = """
local t = redis.call('TIME')
local now = t[1] .. string.format('%06d', tonumber(t[2]))
redis.call('HSET', KEYS[1], 'spec', ARGV[1], 'state', 'running', 'updated_us', now)
redis.call('HSETNX', KEYS[1], 'created_us', now)
redis.call('ZADD', KEYS[2], 'NX', redis.call('HGET', KEYS[1], 'created_us'), ARGV[2])
redis.pcall('XGROUP', 'CREATE', KEYS[3], ARGV[3], '0', 'MKSTREAM')
return 1
"""

# KEYS: meta, runs. ARGV: state, run_id, active (1/0).
SET_STATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'updated_us', t[1] .. string.format('%06d', tonumber(t[2])))
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[2], 'NX', redis.call('HGET', KEYS[1], 'created_us'), ARGV[2])
else
  redis.call('ZREM', KEYS[2], ARGV[2])
end
return 1
"""

# KEYS: shards, enqueued. ARGV: group, run_id, shard ids...
ENQUEUE = """
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
local added = 0
for i = 3, #ARGV do
  if redis.call('SADD', KEYS[2], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[1], '*', 'run_id', ARGV[2], 'shard_id', ARGV[i])
    added = added + 1
  end
end
return added
"""

# Take over one entry whose lease ran out, or dead-letter it when one more delivery would pass the limit.
# XPENDING IDLE <lease> + XCLAIM <lease> rather than XAUTOCLAIM: XPENDING tells the owner and delivery count
# *before* the claim, so the dead letter names the last real consumer and an entry over the limit is never
# handed to anyone, even for an instant; and it scans the whole pending list in one call, where XAUTOCLAIM
# COUNT 1 gives up after ten entries. Inside one script both are as atomic as XAUTOCLAIM.
# KEYS: shards, deadletters, dead. ARGV: group, consumer, lease_ms, max_deliveries, run_id, scan limit.
# Returns {entry_id, shard_id, deliveries, dead shard ids...}; entry_id is '' when nothing was taken over.
TAKE_OVER = """
local dead = {}
for _ = 1, tonumber(ARGV[6]) do
  local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', 1)
  if pending.err or #pending == 0 then break end
  local id, owner, deliveries = pending[1][1], pending[1][2], tonumber(pending[1][4])
  local entry = redis.call('XRANGE', KEYS[1], id, id)
  local shard = ''
  if #entry > 0 then
    local fields = entry[1][2]
    for i = 1, #fields, 2 do if fields[i] == 'shard_id' then shard = fields[i + 1] end end
  end
  if shard == '' then
    redis.call('XACK', KEYS[1], ARGV[1], id)  -- an entry gone from the stream: nothing to hand out
  elseif deliveries + 1 > tonumber(ARGV[4]) then
    redis.call('XADD', KEYS[2], '*', 'run_id', ARGV[5], 'shard_id', shard, 'entry_id', id,
               'deliveries', deliveries, 'last_consumer', owner)
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('SADD', KEYS[3], shard)
    table.insert(dead, shard)
  else
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], id, 'JUSTID', 'RETRYCOUNT', deliveries + 1)
    local result = {id, shard, deliveries + 1}
    for _, d in ipairs(dead) do table.insert(result, d) end
    return result
  end
end
local result = {'', '', 0}
for _, d in ipairs(dead) do table.insert(result, d) end
return result
"""

# The check both renew and release start with: is the entry still pending and owned by this consumer?
OWNED = """
local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if pending.err or #pending == 0 or pending[1][2] ~= ARGV[2] then return 0 end
"""

# KEYS: shards. ARGV: group, consumer, entry_id.
RENEW = OWNED + """
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""

# KEYS: shards. ARGV: group, consumer, entry_id, parking consumer, idle_ms.
RELEASE = OWNED + """
local deliveries = math.max(tonumber(pending[1][4]) - 1, 0)
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[4], 0, ARGV[3], 'IDLE', ARGV[5], 'RETRYCOUNT', deliveries, 'JUSTID')
return 1
"""

# KEYS: shards, done, dead. ARGV: group, entry_id, shard_id.
ACK = """
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('SREM', KEYS[3], ARGV[3])
return acked
"""

# KEYS: finalizer, meta. ARGV: consumer, lease_ms.
TRY_FINALIZE = """
local state = redis.call('HGET', KEYS[2], 'state')
if state ~= 'running' and state ~= 'finalizing' then return 0 end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
redis.call('HSET', KEYS[2], 'state', 'finalizing')
return 1
"""

# KEYS: finalizer. ARGV: consumer.
END_FINALIZE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""

# KEYS: enqueued, done, dead, shards. ARGV: group, parking consumer.
# Returns {enqueued, delivered and not acked, parked, done, dead}, read at one instant.
COUNTS = """
local unacked, parked = 0, 0
local summary = redis.pcall('XPENDING', KEYS[4], ARGV[1])
if not summary.err then
  unacked = tonumber(summary[1])
  if summary[4] then
    for _, c in ipairs(summary[4]) do if c[1] == ARGV[2] then parked = tonumber(c[2]) end end
  end
end
return {redis.call('SCARD', KEYS[1]), unacked, parked, redis.call('SCARD', KEYS[2]), redis.call('SCARD', KEYS[3])}
"""

#: By the name ``ShardQueue`` runs them with.
SCRIPTS = {"put_run": PUT_RUN, "set_state": SET_STATE, "enqueue": ENQUEUE, "take_over": TAKE_OVER, "renew": RENEW,
           "release": RELEASE, "ack": ACK, "try_finalize": TRY_FINALIZE, "end_finalize": END_FINALIZE,
           "counts": COUNTS}
