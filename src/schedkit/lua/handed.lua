-- Settle claims after a hand-off attempt. ARGV[4] 'queued' or 'release', then ids.
-- queued: the broker has the message; release: it does not, so the task is due again now.
-- A task cancelled or started meanwhile keeps its state.
local verdict = ARGV[4]
local handed = 0
for i = 5, #ARGV do
  local id = ARGV[i]
  if redis.call('ZREM', claims, id) == 1 then
    local state, run = unpack(redis.call('HMGET', tkey(id), 's', 'r'))
    if run and state_of(state) == 'SCHEDULED' then
      if verdict == 'queued' then
        move(id, 'SCHEDULED', 'QUEUED', run)
        redis.call('HSET', tkey(id), 'qt', now)
        handed = handed + 1
      else
        redis.call('ZADD', skey('SCHEDULED'), run, id)
      end
    end
  end
end
count('handed', handed)
return 0
