-- The worker hook records how a started task ended. ARGV[4] id, ARGV[5] new state
-- (SUCCEEDED, FAILED or RETRYING), ARGV[6] result, ARGV[7] error, ARGV[8] traceback.
local id, to = ARGV[4], ARGV[5]
local key = tkey(id)
local state, run = unpack(redis.call('HMGET', key, field.state, field.run))
if not run or state_of(state) ~= 'STARTED' then return 0 end
move(id, state, to, run)
if to == 'RETRYING' then count(stat.retried) else count(stat.finished .. to) end
local fields = {}
if to ~= 'RETRYING' then fields = {field.finished, now} end
if ARGV[6] ~= '' then table.insert(fields, field.result); table.insert(fields, ARGV[6]) end
if ARGV[7] ~= '' then table.insert(fields, field.error); table.insert(fields, ARGV[7]) end
if ARGV[8] ~= '' then table.insert(fields, field.traceback); table.insert(fields, ARGV[8]) end
if #fields > 0 then redis.call('HSET', key, unpack(fields)) end
return 1
