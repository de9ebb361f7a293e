-- Hand-offs that never arrived: QUEUED tasks handed off more than ARGV[4] ms ago whose run time
-- is that long past, and that no worker has started, become due again (SCHEDULED) so the
-- dispatcher hands them off once more. A broker can lose a message it accepted, and a worker
-- that dies takes the hand-offs it held with it (the worker keeps them out of kombu's unacked
-- record, dispatch/transport.py); the start script still lets only one copy run.
-- ARGV[5] limit. Returns the ids made due.
local stale, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', skey('QUEUED'), '-inf', now - stale, 'LIMIT', 0, limit)) do
  local run, queued, queue = unpack(redis.call('HMGET', tkey(id), field.run, field.queued, field.queue))
  if run and (not queued or tonumber(queued) <= now - stale) then
    land(queue)
    move(id, 'QUEUED', 'SCHEDULED', run)
    out[#out + 1] = id
  end
end
count(stat.redelivered, #out)
return out
