-- Forget a schedule and remove its parked runs. ARGV[4] id. Returns how many runs were
-- removed, or -1 if missing. Runs already handed off run and stay listed like any task.
local id = ARGV[4]
if redis.call('EXISTS', sched) == 0 then return -1 end
local removed = remove_parked()
redis.call('DEL', sched, sched_runs, sched_running)
redis.call('ZREM', scheds, id)
redis.call('ZREM', sched_due, id)
return removed
