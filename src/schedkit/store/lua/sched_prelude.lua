-- Shared by the schedule scripts, after prelude.lua. Their KEYS are the task scripts' ones,
-- then the five of keys.Keys.schedule_keys, which the header names: sched (the schedule's
-- hash), scheds (the partition's id list), sched_due, sched_runs (its runs by nominal time) and
-- sched_running (its started runs). Fields: sfield (the header).

-- Remove the schedule's parked runs that no dispatcher has claimed (a claimed one is being
-- handed off); returns how many. Removed, not cancelled: a run's id is derived from its
-- nominal time, and must be free for the same run to be made again after resume or update.
local function remove_parked()
  local removed = {}
  for _, id in ipairs(redis.call('ZRANGE', sched_runs, 0, -1)) do
    local key = tkey(id)
    local state, run = unpack(redis.call('HMGET', key, field.state, field.run))
    if not run then
      redis.call('ZREM', sched_runs, id)
    elseif not state and not redis.call('ZSCORE', claims, id) then
      redis.call('DEL', key)
      redis.call('ZREM', skey('SCHEDULED'), id)
      redis.call('ZREM', sched_runs, id)
      removed[#removed + 1] = id
    end
  end
  if #removed > 0 then
    emit_many(removed, 'CANCELLED')
    redis.call('HINCRBY', sched, sfield.runs, -#removed)
  end
  return #removed
end
