-- Shared by every script: how one instance's contribution to the hub-wide state changes.
--
-- Keys (P is --redis-prefix, I an instance id, R a room, U a user):
--   P:inst:I   hash, what instance I holds: "c\0R" connections in R, "m\0R\0U" 1 when U has a
--              connection in R, "u\0U" 1 when U is connected, "n\0" connections; "!" marks a
--              registered instance (a flushed Redis loses it, and the instance registers again)
--   P:alive:I  set with an expiry by I's heartbeat; once it is gone, I is reaped
--   P:instances the instance ids
--   P:reaped:I I was reaped and its users' leaving announced: its next registration announces
--              them back (kept a day)
--   P:room:R   hash U -> how many instances have U in R (the key count is the room's `count`)
--   P:rc:R     connections in R over all instances (for --presence-max-members)
--   P:users    hash U -> how many instances have U connected
--   P:conns    connections over all instances
-- Presence is published on the room's channel, in the order of the room's messages; its
-- envelope is "I 0 p\nU\nJSON" (see src/redis/envelope.rs).

local function presence(P, I, room, user, state)
  local json = '{"event":"presence","room":' .. cjson.encode(room) ..
    ',"data":{"user":' .. cjson.encode(user) .. ',"state":"' .. state .. '"}}'
  redis.call('PUBLISH', P .. ':r:' .. room, I .. ' 0 p\n' .. user .. '\n' .. json)
end

-- Applies `delta` of one contribution `field` to the hub-wide keys (not to P:inst:I), sending
-- presence when a user's first connection anywhere joins a room or its last one leaves.
-- Returns the room's distinct users for room fields, 0 otherwise.
local function apply(P, I, field, delta, max)
  local kind = string.sub(field, 1, 1)
  local name = string.sub(field, 3)
  if kind == 'c' then
    local key = P .. ':rc:' .. name
    if redis.call('INCRBY', key, delta) <= 0 then redis.call('DEL', key) end
    return redis.call('HLEN', P .. ':room:' .. name)
  elseif kind == 'm' then
    local room, user = string.match(name, '^(.*)%z(.*)$')
    if room == nil then return 0 end
    local key = P .. ':room:' .. room
    local n = redis.call('HINCRBY', key, user, delta)
    if n <= 0 then redis.call('HDEL', key, user) end
    local users = redis.call('HLEN', key)
    local conns = tonumber(redis.call('GET', P .. ':rc:' .. room) or '0')
    if delta > 0 and n == delta and users > 1 and conns <= max then
      presence(P, I, room, user, 'join')
    elseif delta < 0 and n <= 0 and n - delta > 0 and users >= 1 and conns + 1 <= max then
      presence(P, I, room, user, 'leave')
    end
    return users
  elseif kind == 'u' then
    local key = P .. ':users'
    if redis.call('HINCRBY', key, name, delta) <= 0 then redis.call('HDEL', key, name) end
  elseif kind == 'n' then
    local key = P .. ':conns'
    if redis.call('INCRBY', key, delta) <= 0 then redis.call('DEL', key) end
  elseif kind == 'j' then
    -- Not a contribution: a join's marker, at the join's place in the room's order. `delta`
    -- is the joining instance's waiter; `name` is "H\0B\0K\0E\0R": H the history TTL in ms and B
    -- the most bytes a replay may hold ('' with history off), K and E the join's `since` offset
    -- and epoch (K '' without since). The
    -- marker carries "COUNT[ EPOCH LAST[ 1|0]]\n" (0: not recovered), then each missed event
    -- as "LENGTH\nEVENT": the messages before the marker in the channel are exactly those up
    -- to LAST, so the replay meets the live messages after it without a gap or an overlap.
    local ttl, budget, since, since_epoch, room =
      string.match(name, '^(%d*)%z(%d*)%z(%d*)%z([^%z]*)%z(.*)$')
    if room == nil then return 0 end
    local count = redis.call('HLEN', P .. ':room:' .. room)
    local head, replay = string.format('%d', count), {}
    if ttl ~= '' then
      local epoch, last = position(P, room, tonumber(ttl))
      head = head .. ' ' .. epoch .. ' ' .. string.format('%d', last)
      if since ~= '' then
        local events = missed(P, room, epoch, last, since_epoch, tonumber(since), tonumber(ttl),
          tonumber(budget))
        head = head .. (events and ' 1' or ' 0')
        for i, json in ipairs(events or {}) do
          replay[i] = string.format('%d', #json) .. '\n' .. json
        end
      end
    end
    redis.call('PUBLISH', P .. ':r:' .. room,
      I .. ' 0 j\n' .. string.format('%d', delta) .. '\n' .. head .. '\n' .. table.concat(replay))
    return count
  end
  return 0
end

-- Connection counts first, so that presence is decided with the room's size after the change.
local KINDS = {'c', 'n', 'u', 'm'}

-- Takes everything instance I held out of the hub, with presence, and forgets I.
local function withdraw(P, I, max)
  local inst = P .. ':inst:' .. I
  local held = redis.call('HGETALL', inst)
  for _, kind in ipairs(KINDS) do
    for i = 1, #held - 1, 2 do
      if string.sub(held[i], 1, 1) == kind then
        apply(P, I, held[i], -tonumber(held[i + 1]), max)
      end
    end
  end
  redis.call('DEL', inst, P .. ':alive:' .. I)
  redis.call('SREM', P .. ':instances', I)
end
