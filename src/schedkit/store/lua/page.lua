-- One state index's share of a ListTasks page. ARGV[4] state, ARGV[5] min run ms or '',
-- ARGV[6] max run ms (exclusive) or '', ARGV[7] cursor run ms or '', ARGV[8] cursor id,
-- ARGV[9] limit, ARGV[10] scan budget, ARGV[11] task name or '', ARGV[12] labels JSON or ''.
-- Returns {exhausted, last scanned score, last scanned id, id1, fields1, id2, fields2, ...}.
local key = skey(ARGV[4])
local min_s, max_s, cur_s, cur_id = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local limit, budget = tonumber(ARGV[9]), tonumber(ARGV[10])
local name = ARGV[11]
local want_labels = nil
if ARGV[12] ~= '' then want_labels = cjson.decode(ARGV[12]) end

local function first_index_after(score, member)
  -- Within equal scores Redis orders members bytewise: binary-search the tie block.
  local lo = redis.call('ZCOUNT', key, '-inf', '(' .. score)
  local hi = redis.call('ZCOUNT', key, '-inf', score)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if redis.call('ZRANGE', key, mid, mid)[1] <= member then lo = mid + 1 else hi = mid end
  end
  return lo
end

local start = 0
if min_s ~= '' then start = redis.call('ZCOUNT', key, '-inf', '(' .. min_s) end
if cur_s ~= '' then
  local after = first_index_after(cur_s, cur_id)
  if after > start then start = after end
end

local function matches(fields)
  if name == '' and not want_labels then return true end
  local rec = {}
  for j = 1, #fields, 2 do rec[fields[j]] = fields[j + 1] end
  if name ~= '' and rec[field.task] ~= name then return false end
  if want_labels then
    local have = rec[field.labels] and cjson.decode(rec[field.labels]) or {}
    for k, v in pairs(want_labels) do
      if have[k] ~= v then return false end
    end
  end
  return true
end

local out = {0, '', ''}
local found, scanned, index = 0, 0, start
local max_n = max_s ~= '' and tonumber(max_s) or nil
while found < limit and scanned < budget do
  local items = redis.call('ZRANGE', key, index, index + 199, 'WITHSCORES')
  if #items == 0 then out[1] = 1 break end
  local stop = false
  for j = 1, #items, 2 do
    local id, score = items[j], items[j + 1]
    if max_n and tonumber(score) >= max_n then out[1] = 1 stop = true break end
    index = index + 1
    scanned = scanned + 1
    out[2], out[3] = score, id
    local fields = redis.call('HGETALL', tkey(id))
    if #fields > 0 and matches(fields) then
      out[#out + 1] = id
      out[#out + 1] = fields
      found = found + 1
    end
    if found >= limit or scanned >= budget then stop = true break end
  end
  if stop then break end
end
return out
