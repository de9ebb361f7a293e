-- Replace a schedule's definition. ARGV[4] id, ARGV[5] definition JSON, ARGV[6] fingerprint,
-- ARGV[7] overlap policy, ARGV[8] pause on failure. Parked runs are removed and made again
-- from now with the new content. Returns how many parked runs were removed, or -1 if missing.
local id = ARGV[4]
if redis.call('EXISTS', sched) == 0 then return -1 end
redis.call('HSET', sched, sfield.definition, ARGV[5], sfield.fingerprint, ARGV[6],
  sfield.overlap, ARGV[7], sfield.pause_on_failure, ARGV[8], sfield.updated, now,
  sfield.cursor, now)
redis.call('HINCRBY', sched, sfield.generation, 1)
local removed = remove_parked()
if not redis.call('HGET', sched, sfield.paused) then redis.call('ZADD', sched_due, now, id) end
return removed
