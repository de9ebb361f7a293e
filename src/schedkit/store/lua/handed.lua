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
-- Which ids are still claimed, in one call; the claims and index moves go out as one ZREM
-- and one ZADD each (a call per task was half of the script's time).
local ids = {}
for i = 5, #ARGV, step do ids[#ids + 1] = ARGV[i] end
if #ids == 0 then return 0 end
local leases = redis.call('ZMSCORE', claims, unpack(ids))
local settled, queued_index, due_again = {}, {}, {}
local seen = {}
for n, id in ipairs(ids) do
  if leases[n] and not seen[id] then
    seen[id] = true
    settled[#settled + 1] = id
    local state, run, queue = unpack(redis.call('HMGET', tkey(id), field.state, field.run, field.queue))
    if not (verdict == 'queued' and run and state_of(state) == 'SCHEDULED') then land(queue) end
    if run and state_of(state) == 'SCHEDULED' then
      if verdict == 'queued' then
        -- a claimed task is in no state index
        queued_index[#queued_index + 1] = run
        queued_index[#queued_index + 1] = id
        redis.call('HSET', tkey(id), field.state, 'QUEUED', field.queued, now)
        queued[#queued + 1] = id
        handed = handed + 1
      elseif verdict == 'failed' then
        move(id, 'SCHEDULED', 'FAILED', run)
        redis.call('HSET', tkey(id), field.finished, now, field.error, ARGV[4 + 2 * n])
        failed = failed + 1
      else
        due_again[#due_again + 1] = run
        due_again[#due_again + 1] = id
      end
    end
  end
end
if #settled > 0 then redis.call('ZREM', claims, unpack(settled)) end
if #queued_index > 0 then redis.call('ZADD', skey('QUEUED'), unpack(queued_index)) end
if #due_again > 0 then redis.call('ZADD', skey('SCHEDULED'), unpack(due_again)) end
emit_many(queued, 'QUEUED')
count(stat.handed, handed)
count(stat.finished .. 'FAILED', failed)
return 0
