-- Claim what falls due inside the window. ARGV[4] window ms, ARGV[5] lease ms, ARGV[6] limit.
-- First returns lapsed claims (a dispatcher died between claim and hand-off) to the due index.
-- Tasks past their expiry become EXPIRED instead of being claimed.
-- Returns a flat list of id, task, args, kwargs, run, queue, priority per claimed task.
local window, lease, limit = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])

for _, id in ipairs(redis.call('ZRANGEBYSCORE', claims, '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', claims, id)
  local state, run = unpack(redis.call('HMGET', tkey(id), field.state, field.run))
  if run and state_of(state) == 'SCHEDULED' then redis.call('ZADD', skey('SCHEDULED'), run, id) end
end

local out = {}
local due = redis.call('ZRANGEBYSCORE', skey('SCHEDULED'), '-inf', now + window, 'LIMIT', 0, limit)
for _, id in ipairs(due) do
  local f = redis.call('HMGET', tkey(id), field.task, field.args, field.kwargs, field.run,
    field.queue, field.priority, field.expires)
  local expires = f[7] and (tonumber(f[4]) + tonumber(f[7])) or nil
  if expires and expires < now then
    move(id, 'SCHEDULED', 'EXPIRED', f[4])
    redis.call('HSET', tkey(id), field.finished, now, field.error, 'expired before hand-off')
    count(stat.finished .. 'EXPIRED')
  else
    redis.call('ZREM', skey('SCHEDULED'), id)
    redis.call('ZADD', claims, now + lease, id)
    out[#out + 1] = id
    for j = 1, 6 do out[#out + 1] = f[j] or '' end
  end
end
return out
