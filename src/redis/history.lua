-- Room history (SPEC §11), shared by every script. Keys (P is --redis-prefix, R a room):
--   P:hm:R  hash: "e" the room's epoch, "o" its last offset. Kept a day past the room's last
--           message or join (or --history-ttl, when longer), so offsets keep counting through
--           quiet spells; lost (Redis restarted empty, flushed), the room starts over under a
--           new epoch.
--   P:h:R   stream of the room's last --history-size messages: entry id "OFFSET-0", fields
--           "t" (when, in ms) and "d" (the event as its recipients got it); it expires
--           --history-ttl after the room's last message.

local HISTORY_META_MS = 86400000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The room's epoch and last offset; a room without them starts (offset 0, a new epoch, and
-- whatever an older epoch left in the stream dropped).
local function position(P, room, ttl)
  local meta = P .. ':hm:' .. room
  local known = redis.call('HMGET', meta, 'e', 'o')
  local epoch, last = known[1], tonumber(known[2] or '0')
  if not epoch then
    local t = redis.call('TIME')
    epoch = string.format('%x-%x', tonumber(t[1]), tonumber(t[2]))
    last = 0
    redis.call('HSET', meta, 'e', epoch, 'o', 0)
    redis.call('DEL', P .. ':h:' .. room)
  end
  redis.call('PEXPIRE', meta, math.max(HISTORY_META_MS, ttl))
  return epoch, last
end

-- The events of the room after offset `since` of `since_epoch`, oldest first, when the epoch
-- is the room's, every one of them is still kept (none trimmed by size, none older than `ttl`
-- ms) and together they hold at most `budget` bytes; nil when not.
local function missed(P, room, epoch, last, since_epoch, since, ttl, budget)
  if since_epoch ~= epoch or since > last then return nil end
  if since == last then return {} end
  local entries = redis.call('XRANGE', P .. ':h:' .. room, string.format('%d-0', since + 1), '+')
  local first = entries[1]
  if #entries ~= last - since or first[1] ~= string.format('%d-0', since + 1) then return nil end
  if tonumber(first[2][2]) <= now_ms() - ttl then return nil end
  local events, bytes = {}, 0
  for i, entry in ipairs(entries) do
    events[i] = entry[2][4]
    bytes = bytes + #events[i]
  end
  if bytes > budget then return nil end
  return events
end
