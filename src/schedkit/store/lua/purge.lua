-- Forget final tasks that finished before ARGV[4] (ms). ARGV[5] limit per state.
-- Scans the oldest run times first; a task that finished late stays until a later pass.
local before, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local removed = 0
for _, state in ipairs(final_states) do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', skey(state), '-inf', before, 'LIMIT', 0, limit)) do
    local finished = tonumber(redis.call('HGET', tkey(id), field.finished) or '0')
    if finished < before then
      redis.call('ZREM', skey(state), id)
      redis.call('DEL', tkey(id))
      removed = removed + 1
    end
  end
end
return removed
