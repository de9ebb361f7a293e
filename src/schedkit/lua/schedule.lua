-- Store new tasks. ARGV[4] hand-off window ms, then per task:
-- id, fingerprint ('' when unkeyed), run ms, field count, field/value pairs.
-- Returns per task 1 created, 2 existing (same fingerprint), 3 conflict (key reused).
local window = tonumber(ARGV[4])
local out = {}
local due_soon = false
local created = 0
local i = 5
while i <= #ARGV do
  local id, fp, run, nf = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local first = i + 4
  i = first + 2 * nf
  local key = tkey(id)
  if redis.call('EXISTS', key) == 1 then
    if fp ~= '' and redis.call('HGET', key, 'h') == fp then
      out[#out + 1] = 2
    else
      out[#out + 1] = 3
    end
  else
    redis.call('HSET', key, unpack(ARGV, first, i - 1))
    redis.call('ZADD', skey('SCHEDULED'), run, id)
    emit(id, 'SCHEDULED')
    if run <= now + window then due_soon = true end
    out[#out + 1] = 1
    created = created + 1
  end
end
count('scheduled', created)
if due_soon then
  redis.call('LPUSH', prefix .. ':wake', '1')
  redis.call('LTRIM', prefix .. ':wake', 0, 0)
end
return out
