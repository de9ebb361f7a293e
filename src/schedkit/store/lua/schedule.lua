-- Store new tasks. ARGV[4] hand-off window ms, ARGV[5] a JSON array [templates, rows, created]:
-- templates are the field/value lists that rows share (task, args, kwargs, queue, ...); a row
-- is [id, fingerprint ('' when unkeyed), run ms, template index from 0, key]; created is the
-- creation ms of all. One JSON argument instead of many: packing thousands of arguments costs
-- the caller more than cjson costs here, and shared fields cross the wire once per batch.
-- Returns per task 1 created, 2 existing (same fingerprint), 3 conflict (key reused).
-- A key repeated within one batch is created once: the later rows see the first one's record.
local window = tonumber(ARGV[4])
local batch = cjson.decode(ARGV[5])
local templates, rows, created_ms = batch[1], batch[2], batch[3]
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
    if fp ~= '' and redis.call('HGET', key, field.fingerprint) == fp then
      out[n] = 2
    else
      out[n] = 3
    end
  else
    local shared = templates[row[4] + 1]
    if fp ~= '' then
      redis.call('HSET', key, field.run, run, field.created, created_ms, field.key, row[5],
        field.fingerprint, fp, unpack(shared))
    else
      redis.call('HSET', key, field.run, run, field.created, created_ms, unpack(shared))
    end
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
count(stat.scheduled, #created)
if due_soon then
  redis.call('LPUSH', wake, '1')
  redis.call('LTRIM', wake, 0, 0)
end
return out
