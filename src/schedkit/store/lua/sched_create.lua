-- Create a schedule. ARGV[4] id, ARGV[5] definition JSON, ARGV[6] its fingerprint,
-- ARGV[7] overlap policy, ARGV[8] pause on failure ('1' or ''), ARGV[9] first cursor ms,
-- ARGV[10] most schedules this partition may keep (the store's bound less the schedules of
-- the other partitions).
-- Returns 'created', 'existing' (same fingerprint), 'conflict' or 'full'.
local id = ARGV[4]
if redis.call('EXISTS', sched) == 1 then
  if redis.call('HGET', sched, sfield.fingerprint) == ARGV[6] then return 'existing' end
  return 'conflict'
end
if redis.call('ZCARD', scheds) >= tonumber(ARGV[10]) then return 'full' end
redis.call('HSET', sched, sfield.definition, ARGV[5], sfield.fingerprint, ARGV[6],
  sfield.generation, 1, sfield.cursor, ARGV[9], sfield.runs, 0, sfield.overlap, ARGV[7],
  sfield.pause_on_failure, ARGV[8], sfield.created, now, sfield.updated, now)
redis.call('ZADD', scheds, 0, id)
redis.call('ZADD', sched_due, now, id)
redis.call('LPUSH', wake, '1')
redis.call('LTRIM', wake, 0, 0)
return 'created'
