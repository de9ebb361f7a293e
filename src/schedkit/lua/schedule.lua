-- Store new tasks. ARGV[4] hand-off window ms, ARGV[5] a JSON array with one array per task:
-- id, fingerprint ('' when unkeyed), run ms, then the hash's field/value pairs, all strings.
-- One JSON argument instead of many: packing thousands of arguments costs the caller more
-- than cjson costs here.
-- Returns per task 1 created, 2 existing (same fingerprint), 3 conflict (key reused).
local window = tonumber(ARGV[4])
local rows = cjson.decode(ARGV[5])
local out = {}
local due_soon = false
local scheduled = skey('SCHEDULED')
local created = 0
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
    redis.call('ZADD', scheduled, run, id)
    emit(id, 'SCHEDULED')
    if tonumber(run) <= now + window then due_soon = true end
    out[n] = 1
    created = created + 1
  end
end
count('scheduled', created)
if due_soon then
  redis.call('LPUSH', prefix .. ':wake', '1')
  redis.call('LTRIM', prefix .. ':wake', 0, 0)
end
return out
