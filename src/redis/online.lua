-- ARGV: P, then a room, or nothing for everyone. Returns {connections, user, user, ...}.
local P, room = ARGV[1], ARGV[2]
local out
if room then
  out = redis.call('HKEYS', P .. ':room:' .. room)
  table.insert(out, 1, tonumber(redis.call('GET', P .. ':rc:' .. room) or '0'))
else
  out = redis.call('HKEYS', P .. ':users')
  table.insert(out, 1, tonumber(redis.call('GET', P .. ':conns') or '0'))
end
return out
