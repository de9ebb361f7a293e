-- The overlap guard before start.lua, for runs of schedules. ARGV[4] id (start.lua's),
-- ARGV[5] the schedule key prefix and ARGV[6] the started-runs key prefix, both of the run's
-- partition, which holds its schedule (a run's schedule is found in its record, so these keys cannot be declared, like task keys), ARGV[7] how
-- long a buffered run waits before it is handed off again (ms).
-- Returns early 'overlap:skipped', 'overlap:buffered' or 'overlap:cancel <ids>' (the caller
-- stops those runs and starts this one again); else marks the run started and start.lua runs.
local run_id = ARGV[4]
local run_key = tkey(run_id)
local labels_json, run_state, run_at, run_queue = unpack(redis.call('HMGET', run_key,
  field.labels, field.state, field.run, field.queue))
run_state = state_of(run_state)
if run_at and labels_json and string.find(labels_json, schedule_label, 1, true)
    and waiting_states[run_state] and run_state ~= 'RETRYING' then
  local labels = cjson.decode(labels_json)
  local sid = labels[schedule_label]
  if sid then
    local policy = labels[overlap_label] or redis.call('HGET', ARGV[5] .. sid, sfield.overlap)
      or 'skip'
    local running = ARGV[6] .. sid
    local others, waiting = {}, 0
    for _, member in ipairs(redis.call('SMEMBERS', running)) do
      local buffered = string.sub(member, 1, 2) == 'b:'
      local other = buffered and string.sub(member, 3) or member
      local s = redis.call('HGET', tkey(other), field.state)
      local going = s == 'STARTED'
      if s == 'RETRYING' then going = true end  -- a retry is the same run, still going
      if other == run_id then
        if buffered then redis.call('SREM', running, member) end
      elseif buffered and not s and redis.call('EXISTS', tkey(other)) == 1 then
        waiting = waiting + 1
      elseif not buffered and going then
        others[#others + 1] = other
      else
        redis.call('SREM', running, member)
      end
    end
    if #others > 0 and policy ~= 'allow_all' then
      if policy == 'cancel_other' then return 'overlap:cancel ' .. table.concat(others, ' ') end
      -- Skipped or parked again, the run no longer counts against its queue's bound.
      if redis.call('ZREM', claims, run_id) == 1 or run_state == 'QUEUED' then land(run_queue) end
      if policy == 'skip' or (policy == 'buffer_one' and waiting > 0) then
        move(run_id, run_state, 'CANCELLED', run_at)
        redis.call('HSET', run_key, field.finished, now, field.error,
          'overlap: skipped, run ' .. others[1] .. ' of the schedule is still going')
        count(stat.finished .. 'CANCELLED')
        return 'overlap:skipped'
      end
      -- buffer_one or buffer_all: parked again, due shortly, so it starts after the other.
      local again = now + tonumber(ARGV[7])
      redis.call('ZREM', skey(run_state), run_id)
      redis.call('ZADD', skey('SCHEDULED'), again, run_id)
      redis.call('HDEL', run_key, field.state)
      redis.call('HSET', run_key, field.run, again)
      redis.call('SADD', running, 'b:' .. run_id)
      emit(run_id, 'SCHEDULED')
      return 'overlap:buffered'
    end
    if policy ~= 'allow_all' then redis.call('SADD', running, run_id) end
  end
end
