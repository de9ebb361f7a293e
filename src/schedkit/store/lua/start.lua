-- The worker hook asks to start a task. ARGV[4] id. Returns one of:
-- 'unmanaged' (not a schedkit task), 'started', 'cancelled', 'expired', 'duplicate:<state>'.
local id = ARGV[4]
local key = tkey(id)
local state, run, expires_after, queue = unpack(redis.call('HMGET', key, field.state, field.run,
  field.expires, field.queue))
if not run then return 'unmanaged' end
state = state_of(state)
if state == 'CANCELLED' then count(stat.refused_cancelled); return 'cancelled' end
if not waiting_states[state] then
  count(stat.refused_duplicate)
  return 'duplicate:' .. state
end
-- A claimed task can start before its dispatcher marks it queued.
if redis.call('ZREM', claims, id) == 1 or state == 'QUEUED' then land(queue) end
if expires_after and tonumber(run) + tonumber(expires_after) < now then
  move(id, state, 'EXPIRED', run)
  redis.call('HSET', key, field.finished, now, field.error, 'expired before a worker could start it')
  count(stat.finished .. 'EXPIRED')
  return 'expired'
end
move(id, state, 'STARTED', run)
redis.call('HSET', key, field.started, now)
redis.call('HINCRBY', key, field.attempts, 1)
count(stat.started)
-- A retry starts late by design; only a first start says how punctual hand-off was.
if state ~= 'RETRYING' then observe_lateness(now - tonumber(run)) end
return 'started'
