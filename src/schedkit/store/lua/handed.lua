-- Settle claims after a hand-off attempt. ARGV[4] 'queued', 'release' or 'failed'.
-- queued: the broker has the message; release: it does not, so the task is due again now;
-- for both, ids follow. failed: the broker refused this message itself (not the broker being
-- away), so handing it off again would fail the same way: pairs of id and reason follow, and
-- each task ends FAILED, finished now (retention purges it), with the reason as its error.
-- A task cancelled or started meanwhile keeps its state.
local verdict = ARGV[4]
local step = 1
if verdict == 'failed' then step = 2 end
local handed, failed = 0, 0
local queued = {}  -- one event entry per hundred, not per task
for i = 5, #ARGV, step do
  local id = ARGV[i]
  if redis.call('ZREM', claims, id) == 1 then
    local state, run, queue = unpack(redis.call('HMGET', tkey(id), field.state, field.run, field.queue))
    if not (verdict == 'queued' and run and state_of(state) == 'SCHEDULED') then land(queue) end
    if run and state_of(state) == 'SCHEDULED' then
      if verdict == 'queued' then
        redis.call('ZADD', skey('QUEUED'), run, id)  -- a claimed task is in no state index
        redis.call('HSET', tkey(id), field.state, 'QUEUED', field.queued, now)
        queued[#queued + 1] = id
        handed = handed + 1
      elseif verdict == 'failed' then
        move(id, 'SCHEDULED', 'FAILED', run)
        redis.call('HSET', tkey(id), field.finished, now, field.error, ARGV[i + 1])
        failed = failed + 1
      else
        redis.call('ZADD', skey('SCHEDULED'), run, id)
      end
    end
  end
end
emit_many(queued, 'QUEUED')
count(stat.handed, handed)
count(stat.finished .. 'FAILED', failed)
return 0
