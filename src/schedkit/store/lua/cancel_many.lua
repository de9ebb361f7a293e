-- Cancel many tasks that have not started (CancelTasks, one slice). ARGV[4...] ids.
-- Returns {cancelled count, ids that were handed off (to revoke)...}; others are left as they are.
local cancelled, handed = {}, {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local key = tkey(id)
  local state, run, queue = unpack(redis.call('HMGET', key, field.state, field.run, field.queue))
  state = state_of(state)
  if run and waiting_states[state] then
    -- Claimed or handed off, it counted against its queue's bound: give the room back.
    if redis.call('ZREM', claims, id) == 1 or state == 'QUEUED' then land(queue) end
    redis.call('ZREM', skey(state), id)
    redis.call('ZADD', skey('CANCELLED'), run, id)
    redis.call('HSET', key, field.state, 'CANCELLED', field.finished, now, field.error, 'cancelled')
    cancelled[#cancelled + 1] = id
    if state ~= 'SCHEDULED' then handed[#handed + 1] = id end
  end
end
emit_many(cancelled, 'CANCELLED')
count(stat.finished .. 'CANCELLED', #cancelled)
return {#cancelled, unpack(handed)}
