-- Pause a schedule. ARGV[4] id, ARGV[5] note, ARGV[6] '1' to pause only if the schedule asks
-- to pause on failure. Removes its parked runs. Returns how many, -1 if missing, -2 if the
-- schedule does not pause on failure.
local id = ARGV[4]
if redis.call('EXISTS', sched) == 0 then return -1 end
if ARGV[6] == '1' and redis.call('HGET', sched, sfield.pause_on_failure) ~= '1' then return -2 end
redis.call('HSET', sched, sfield.paused, '1', sfield.note, ARGV[5], sfield.updated, now)
redis.call('HINCRBY', sched, sfield.generation, 1)
redis.call('ZREM', sched_due, id)
return remove_parked()
