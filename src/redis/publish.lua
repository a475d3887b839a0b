-- ARGV: P, room R, the envelope's header (its first line, newline included), the event (a JSON
-- object), --history-size, --history-ttl in ms. Numbers the room message (the room's next
-- offset, spliced into the event as its last field), keeps it in the room's stream and
-- publishes it on the room's channel: all at once, so offsets follow the channel's order.
-- Returns {instances that received it, offset, epoch}.
local P, room, header, event = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local size, ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
local epoch = position(P, room, ttl)
local offset = redis.call('HINCRBY', P .. ':hm:' .. room, 'o', 1)
local json = string.sub(event, 1, -2) .. ',"offset":' .. string.format('%d', offset) .. '}'
local stream = P .. ':h:' .. room
redis.call('XADD', stream, 'MAXLEN', size, string.format('%d-0', offset), 't', now_ms(), 'd', json)
redis.call('PEXPIRE', stream, ttl)
local receivers = redis.call('PUBLISH', P .. ':r:' .. room, header .. json)
return {receivers, offset, epoch}
