-- Make runs of a schedule; schedule.lua follows and stores them (its ARGV[4] window and
-- ARGV[5] batch). ARGV[6] expected generation ('' any), ARGV[7] expected cursor ms ('' for a
-- trigger or backfill: the cursor stays), ARGV[8] new cursor ms, ARGV[9] next due ms (''
-- none: the schedule is done), ARGV[10] JSON [[nominal ms, run id], ...], ARGV[11] how many
-- runs before now the runs index keeps, ARGV[12] '1' to refuse while paused, ARGV[13] id.
-- Returns {'missing'}, {'stale'} (another dispatcher or a change came first: nothing made),
-- {'paused'}, or schedule.lua's verdicts.
local sid = ARGV[13]
local gen, cur, paused = unpack(redis.call('HMGET', sched, sfield.generation, sfield.cursor,
  sfield.paused))
if not gen then return {'missing'} end
if ARGV[6] ~= '' and gen ~= ARGV[6] then return {'stale'} end
if ARGV[7] ~= '' and cur ~= ARGV[7] then return {'stale'} end
if ARGV[12] == '1' and paused then return {'paused'} end
if ARGV[7] ~= '' then
  redis.call('HSET', sched, sfield.cursor, ARGV[8])
  if ARGV[9] ~= '' then
    redis.call('ZADD', sched_due, ARGV[9], sid)
  else
    redis.call('ZREM', sched_due, sid)
  end
end
local made = 0
for _, pair in ipairs(cjson.decode(ARGV[10])) do
  -- Counted when its task is new: a run made before (and trimmed from the index) is not.
  if redis.call('EXISTS', tkey(pair[2])) == 0 then made = made + 1 end
  redis.call('ZADD', sched_runs, pair[1], pair[2])
end
if made > 0 then redis.call('HINCRBY', sched, sfield.runs, made) end
local keep = redis.call('ZCOUNT', sched_runs, now, '+inf') + tonumber(ARGV[11])
redis.call('ZREMRANGEBYRANK', sched_runs, 0, -(keep + 1))
