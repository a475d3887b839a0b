-- ARGV: P, I, presence_max, then (field, delta) pairs. Records each change in P:inst:I and
-- applies it hub-wide, in order. Returns one integer per pair (see apply()).
local P, I, max = ARGV[1], ARGV[2], tonumber(ARGV[3])
local inst = P .. ':inst:' .. I
local out = {}
for i = 4, #ARGV - 1, 2 do
  local field, delta = ARGV[i], tonumber(ARGV[i + 1])
  if string.sub(field, 1, 1) ~= 'j' and redis.call('HINCRBY', inst, field, delta) <= 0 then
    redis.call('HDEL', inst, field)
  end
  out[#out + 1] = apply(P, I, field, delta, max)
end
return out
