-- Change a parked task. ARGV[4] id, ARGV[5] new run ms, ARGV[6] new fingerprint ('' when
-- unkeyed), ARGV[7] JSON [field, value, ...] to set, ARGV[8] JSON [field, ...] to remove,
-- ARGV[9] hand-off window ms. Returns 'updated', 'missing', 'claimed' (a dispatcher is handing
-- it off) or the state it is in when that is not SCHEDULED.
local id = ARGV[4]
local key = tkey(id)
local state, run = unpack(redis.call('HMGET', key, field.state, field.run))
if not run then return 'missing' end
if state then return state end
if redis.call('ZSCORE', claims, id) then return 'claimed' end
local set = cjson.decode(ARGV[7])
local gone = cjson.decode(ARGV[8])
if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
redis.call('HSET', key, field.run, ARGV[5], unpack(set))
if ARGV[6] ~= '' then redis.call('HSET', key, field.fingerprint, ARGV[6]) end
redis.call('ZADD', skey('SCHEDULED'), ARGV[5], id)
emit(id, 'SCHEDULED')
if tonumber(ARGV[5]) <= now + tonumber(ARGV[9]) then
  redis.call('LPUSH', wake, '1')
  redis.call('LTRIM', wake, 0, 0)
end
return 'updated'
