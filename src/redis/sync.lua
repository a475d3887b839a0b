-- ARGV: P, I, presence_max, alive_ms, then (field, value) pairs: everything instance I holds.
-- Replaces I's previous contribution (kept in P:inst:I, or nothing after a flush or a reap),
-- sending presence only for what changed hub-wide.
local P, I, max, alive = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local inst = P .. ':inst:' .. I
local old = redis.call('HGETALL', inst)
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
