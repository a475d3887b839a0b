-- ARGV: P, I, presence_max, alive_ms. Keeps I alive, and reaps every instance whose heartbeat
-- stopped (killed, or cut off from Redis): its users leave every room hub-wide, with presence.
-- Returns {1 if I is still registered else 0, instances reaped}.
local P, I, max, alive = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
redis.call('SET', P .. ':alive:' .. I, 1, 'PX', alive)
redis.call('SADD', P .. ':instances', I)
local registered = redis.call('HEXISTS', P .. ':inst:' .. I, '!')
local reaped = 0
for _, other in ipairs(redis.call('SMEMBERS', P .. ':instances')) do
  if other ~= I and redis.call('EXISTS', P .. ':alive:' .. other) == 0 then
    withdraw(P, other, max)
    redis.call('SET', P .. ':reaped:' .. other, 1, 'EX', 86400)
    redis.call('PUBLISH', P .. ':ctl', 'gone ' .. other)
    reaped = reaped + 1
  end
end
return {registered, reaped}
