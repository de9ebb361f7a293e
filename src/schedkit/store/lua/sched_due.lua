-- Take the schedules due by now for one materializer, leaderless like claims: each id's due
-- time moves a lease ahead, so other materializers pass it by; making its runs sets the real
-- next due time, and a materializer that dies leaves it due again when the lease lapses.
-- ARGV[4] limit, ARGV[5] lease ms. Returns the ids.
local ids = redis.call('ZRANGEBYSCORE', sched_due, '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(ids) do
  redis.call('ZADD', sched_due, now + tonumber(ARGV[5]), id)
end
return ids
