-- Shared by every schedkit script, after the header schedkit.store.header renders from Python:
-- it names KEYS (claims, events, stats, wake, state_keys[STATE]) and the constants Python
-- owns (final_states, waiting_states, late_bounds, the stats fields in stat, the task record's
-- fields in field). Key and field names come only from Python (schedkit.store.keys, .record):
-- never spell one here.
-- ARGV[1] the task key prefix (a task's key is it and the id), ARGV[2] event history length,
-- ARGV[3] the caller's clock in ms. Script arguments start at ARGV[4].
local task_prefix = ARGV[1]
local history = ARGV[2]
local now = tonumber(ARGV[3])

-- Running totals for the metrics endpoint, kept with the change they count (see metrics.py).
local function count(field, n)
  if n == nil or n > 0 then redis.call('HINCRBY', stats, field, n or 1) end
end

-- Start lateness histogram over late_bounds (upper bounds in ms, from the header).
local function observe_lateness(ms)
  if ms < 0 then ms = 0 end
  local bucket = stat.late_inf
  for _, bound in ipairs(late_bounds) do
    if ms <= bound then bucket = stat.late .. tostring(bound); break end
  end
  redis.call('HINCRBY', stats, bucket, 1)
  redis.call('HINCRBY', stats, stat.late_sum_ms, ms)
end

-- A task of ``queue`` claimed or handed off has started, or will not be: one less in flight
-- (the hash counts, per queue, what the dispatcher keeps under its bound; '' is the default).
-- When the count falls to the claim's wake mark, a dispatcher waiting for room is nudged.
local function land(queue)
  queue = queue or ''
  local left = redis.call('HINCRBY', flight, queue, -1)
  if left <= 0 then redis.call('HDEL', flight, queue) end
  if left == tonumber(redis.call('HGET', stats, stat.flight_wake) or -1) then
    redis.call('LPUSH', wake, '1')
    redis.call('LTRIM', wake, 0, 0)
  end
end

-- A parked task has no 's' field: SCHEDULED is implied (saves bytes on every parked task).
local function state_of(s) if s then return s end return 'SCHEDULED' end

local function tkey(id) return task_prefix .. id end
local function skey(state)
  local key = state_keys[state]
  if not key then error('schedkit: no state index for ' .. tostring(state)) end
  return key
end

local function emit(id, state)
  redis.call('XADD', events, 'MAXLEN', '~', history, '*',
    event_field.ids, id, event_field.state, state)
end

-- One event for many tasks that made the same change: up to event_ids ids, space-separated
-- (keys.EVENT_IDS says why).
local function emit_many(ids, state)
  for first = 1, #ids, event_ids do
    local last = math.min(first + event_ids - 1, #ids)
    redis.call('XADD', events, 'MAXLEN', '~', history, '*',
      event_field.ids, table.concat(ids, ' ', first, last), event_field.state, state)
  end
end

-- Move a task between state indexes, keeping the record, the index and the event stream agreed.
local function move(id, from, to, run)
  redis.call('ZREM', skey(from), id)
  redis.call('ZADD', skey(to), run, id)
  redis.call('HSET', tkey(id), field.state, to)
  emit(id, to)
end
