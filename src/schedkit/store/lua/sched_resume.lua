-- Resume a paused schedule from now: nominal times of the paused period are passed over.
-- ARGV[4] id, ARGV[5] note. Returns 1 resumed, 0 was not paused, -1 missing.
local id = ARGV[4]
if redis.call('EXISTS', sched) == 0 then return -1 end
if not redis.call('HGET', sched, sfield.paused) then return 0 end
redis.call('HDEL', sched, sfield.paused)
redis.call('HSET', sched, sfield.note, ARGV[5], sfield.updated, now, sfield.cursor, now)
redis.call('HINCRBY', sched, sfield.generation, 1)
redis.call('ZADD', sched_due, now, id)
redis.call('LPUSH', wake, '1')
redis.call('LTRIM', wake, 0, 0)
return 1
