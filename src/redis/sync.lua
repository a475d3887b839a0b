-- ARGV: P, I, presence_max, alive_ms, then (field, value) pairs: everything instance I holds.
-- Replaces I's previous contribution (kept in P:inst:I, or nothing after a flush or a reap),
-- sending presence for what changed hub-wide. When Redis lost its data (no P:inst:I, and no
-- P:reaped:I left by a reaper that announced I's users leaving), nobody heard of a change:
-- the state is rebuilt without presence.
local P, I, max, alive = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local inst = P .. ':inst:' .. I
local old = redis.call('HGETALL', inst)
local reaped = redis.call('DEL', P .. ':reaped:' .. I) == 1
if #old == 0 and not reaped then max = -1 end
local had, want = {}, {}
for i = 1, #old - 1, 2 do
  if old[i] ~= '!' then had[old[i]] = tonumber(old[i + 1]) end
end
for i = 5, #ARGV - 1, 2 do want[ARGV[i]] = tonumber(ARGV[i + 1]) end
for _, kind in ipairs(KINDS) do
  for field, value in pairs(want) do
    if string.sub(field, 1, 1) == kind and value ~= (had[field] or 0) then
      apply(P, I, field, value - (had[field] or 0), max)
    end
  end
  for field, value in pairs(had) do
    if string.sub(field, 1, 1) == kind and want[field] == nil then
      apply(P, I, field, -value, max)
    end
  end
end
redis.call('DEL', inst)
redis.call('HSET', inst, '!', 1)
for field, value in pairs(want) do redis.call('HSET', inst, field, value) end
redis.call('SET', P .. ':alive:' .. I, 1, 'PX', alive)
redis.call('SADD', P .. ':instances', I)
return 1
