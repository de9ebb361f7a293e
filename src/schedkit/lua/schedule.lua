-- Store new tasks. ARGV[4] hand-off window ms, ARGV[5] a JSON array with one array per task:
-- id, fingerprint ('' when unkeyed), run ms, then the hash's field/value pairs, all strings.
-- One JSON argument instead of many: packing thousands of arguments costs the caller more
-- than cjson costs here.
-- Returns per task 1 created, 2 existing (same fingerprint), 3 conflict (key reused).
-- A key repeated within one batch is created once: the later rows see the first one's record.
local window = tonumber(ARGV[4])
local rows = cjson.decode(ARGV[5])
local out = {}
local due_soon = false
local scheduled = skey('SCHEDULED')
local created = {}
local scores = {}
for n = 1, #rows do
  local row = rows[n]
  local id, fp, run = row[1], row[2], row[3]
  local key = tkey(id)
  if redis.call('EXISTS', key) == 1 then
    if fp ~= '' and redis.call('HGET', key, 'h') == fp then
      out[n] = 2
    else
      out[n] = 3
    end
  else
    redis.call('HSET', key, unpack(row, 4))
    scores[#scores + 1] = run
    scores[#scores + 1] = id
    created[#created + 1] = id
    if tonumber(run) <= now + window then due_soon = true end
    out[n] = 1
  end
end
-- One ZADD per 500 tasks instead of one per task (1,000 arguments: unpack has a stack limit).
for first = 1, #scores, 1000 do
  redis.call('ZADD', scheduled, unpack(scores, first, math.min(first + 999, #scores)))
end
emit_many(created, 'SCHEDULED')
count('scheduled', #created)
if due_soon then
  redis.call('LPUSH', prefix .. ':wake', '1')
  redis.call('LTRIM', prefix .. ':wake', 0, 0)
end
return out
