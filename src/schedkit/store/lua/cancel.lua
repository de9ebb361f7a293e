-- Cancel a task that has not started. ARGV[4] id.
-- Returns {verdict, previous state}: verdict 'missing', 'cancelled', 'already' or 'refused'.
local id = ARGV[4]
local key = tkey(id)
local state, run, queue = unpack(redis.call('HMGET', key, field.state, field.run, field.queue))
if not run then return {'missing', ''} end
state = state_of(state)
if state == 'CANCELLED' then return {'already', state} end
if not waiting_states[state] then
  return {'refused', state}
end
if redis.call('ZREM', claims, id) == 1 or state == 'QUEUED' then land(queue) end
move(id, state, 'CANCELLED', run)
redis.call('HSET', key, field.finished, now, field.error, 'cancelled')
count(stat.finished .. 'CANCELLED')
return {'cancelled', state}
