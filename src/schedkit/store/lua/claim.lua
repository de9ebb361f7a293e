-- Claim what falls due inside the window, in run-time order (priority breaks ties among the
-- entries one slice reads: lower first, as Celery reads priorities on Redis; none counts as
-- 0), at most ARGV[6] tasks.
-- ARGV[4] window ms, ARGV[5] lease ms, ARGV[6] limit, ARGV[7] bound: most tasks per queue
-- claimed or handed off and not yet started (the flight hash; 0: no bound), ARGV[8] scan: most
-- due entries read, so one call stays short however large the burst.
-- First returns lapsed claims (a dispatcher died between claim and hand-off) to the due index.
-- Tasks past their expiry become EXPIRED instead of being claimed.
-- Returns {held back, then id, task, args, kwargs, run, queue, priority per claimed task}:
-- held back counts due tasks left for want of room in their queue.
local window, lease, limit = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local bound, scan = tonumber(ARGV[7]), tonumber(ARGV[8])
if bound > 0 then redis.call('HSET', stats, stat.flight_wake, bound - math.max(1, math.floor(bound / 10))) end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', claims, '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', claims, id)
  local state, run, queue = unpack(redis.call('HMGET', tkey(id), field.state, field.run, field.queue))
  land(queue)
  if run and state_of(state) == 'SCHEDULED' then redis.call('ZADD', skey('SCHEDULED'), run, id) end
end

local out = {0}
local n_out = 1
local room = {}
local took = {}  -- per queue, one HINCRBY at the end
local taken = 0

-- Read the due index a slice of `limit` at a time: most rounds need one slice; a slice whose
-- queues are full moves on to the next, up to `scan` entries in all.
local function claim_slice(due)
  local candidates = {}
  for n, id in ipairs(due) do
    local f = redis.call('HMGET', tkey(id), field.task, field.args, field.kwargs, field.run,
      field.queue, field.priority, field.expires)
    local expires = f[7] and (tonumber(f[4]) + tonumber(f[7])) or nil
    if expires and expires < now then
      move(id, 'SCHEDULED', 'EXPIRED', f[4])
      redis.call('HSET', tkey(id), field.finished, now, field.error, 'expired before hand-off')
      count(stat.finished .. 'EXPIRED')
    else
      candidates[#candidates + 1] = {tonumber(f[4]), tonumber(f[6]) or 0, n, id, f}
    end
  end
  -- The index gives run-time order; only ties with different priorities need the sort.
  local mixed = false
  for i = 2, #candidates do
    if candidates[i][2] ~= candidates[1][2] then mixed = true; break end
  end
  if mixed then table.sort(candidates, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    if a[2] ~= b[2] then return a[2] < b[2] end
    return a[3] < b[3]
  end) end
  local kept = 0  -- entries of this slice still in the due index
  -- The slice's index moves go out as one ZREM and one ZADD (a call per task was a third of
  -- the script's time).
  local moved, leased = {}, {}
  local deadline = now + lease
  for _, c in ipairs(candidates) do
    local id, f = c[4], c[5]
    local queue = f[5] or ''
    if room[queue] == nil then
      room[queue] = bound > 0 and bound - tonumber(redis.call('HGET', flight, queue) or 0) or limit
    end
    if taken < limit and room[queue] > 0 then
      room[queue] = room[queue] - 1
      taken = taken + 1
      moved[#moved + 1] = id
      leased[#leased + 1] = deadline
      leased[#leased + 1] = id
      took[queue] = (took[queue] or 0) + 1
      out[n_out + 1], out[n_out + 2], out[n_out + 3] = id, f[1] or '', f[2] or ''
      out[n_out + 4], out[n_out + 5], out[n_out + 6] = f[3] or '', f[4], f[5] or ''
      out[n_out + 7] = f[6] or ''
      n_out = n_out + 7
    else
      if taken < limit then out[1] = out[1] + 1 end
      kept = kept + 1
    end
  end
  if #moved > 0 then
    redis.call('ZREM', skey('SCHEDULED'), unpack(moved))
    redis.call('ZADD', claims, unpack(leased))
  end
  return kept
end

local offset, read = 0, 0
while taken < limit and read < scan do
  local due = redis.call('ZRANGEBYSCORE', skey('SCHEDULED'), '-inf', now + window,
    'LIMIT', offset, math.min(limit, scan - read))
  if #due == 0 then break end
  read = read + #due
  offset = offset + claim_slice(due)
end
for queue, n in pairs(took) do redis.call('HINCRBY', flight, queue, n) end
return out
