#!lua name=missionstream
--[[
missionstream: server-side logic of the mission plan streams.

Load (or upgrade) with:
    redis-cli -x FUNCTION LOAD REPLACE < lua/missionstream.lua

Every function takes the protocol version as its first argument and refuses
any other version, so a client never talks to a library it does not
understand. The second argument is the request nonce (1-64 letters and
digits, chosen by the client): every reply is a flat array whose first
element is that nonce, and every error names it as its second word
("MSNOTFOUND <nonce> no such stream"; "-" when the nonce itself was
malformed), so a client can prove which request a reply answers. The last
argument of every function is a framed body (see docs/PROTOCOL.md):
"<len1> <len2> ...\n" followed by the fields, the last field taking the
rest of the body. Secrets and states travel only there.

Record of stream <name>: hash "stream:<name>" with fields
    name, pw, code (salted SHA-1 hex), salt, channel, state, seq,
    updated_ms, hb_ms, ttl, pub (id of the last stored publish)
Index of live streams: set "streams" of names.
Channel messages (payloads published on the stream's channel):
    "s <seq> <updated_ms>\n<state>"   a stored state
    "h <interval_ms>"                 leader heartbeat
    "p <nonce>"                       follower probe (ignored by others)
    "e"                               the stream was stopped
]]

local PROTOCOL = '3'
local INDEX = 'streams'

-- An error reply naming the request nonce ("-" when it was malformed).
local function fail(code, nonce, message)
  return redis.error_reply(code .. ' ' .. (nonce or '-') .. ' ' .. message)
end

-- Splits a framed body into n fields; nil when it is malformed.
local function fields(body, n)
  if type(body) ~= 'string' then return nil end
  local nl = string.find(body, '\n', 1, true)
  if not nl then return nil end
  local out, pos = {}, nl + 1
  for len in string.gmatch(string.sub(body, 1, nl - 1), '%d+') do
    len = tonumber(len)
    if pos + len - 1 > #body then return nil end
    out[#out + 1] = string.sub(body, pos, pos + len - 1)
    pos = pos + len
  end
  out[#out + 1] = string.sub(body, pos)
  if #out ~= n then return nil end
  return out
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function hash(salt, secret)
  return redis.sha1hex(salt .. '\0' .. secret)
end

-- Common entry: checks the protocol version, the request nonce and the
-- body; returns the nonce and the fields, or nil and an error reply.
local function enter(args, body_index, n)
  if args[1] ~= PROTOCOL then
    -- No nonce word: a client of another version cannot read one anyway.
    return nil, nil, redis.error_reply('MSVERSION the missionstream functions library speaks protocol ' ..
      PROTOCOL .. ', the client speaks ' .. tostring(args[1]) .. '; load the matching lua/missionstream.lua with ' ..
      '"redis-cli -x FUNCTION LOAD REPLACE < lua/missionstream.lua"')
  end
  local nonce = args[2]
  if type(nonce) ~= 'string' or #nonce < 1 or #nonce > 64 or string.find(nonce, '[^%w]') then
    return nil, nil, fail('MSARG', nil, 'malformed request nonce (1-64 letters and digits)')
  end
  if body_index == nil then return nonce, {} end
  local f = fields(args[body_index], n)
  if not f then return nil, nil, fail('MSARG', nonce, 'malformed request body') end
  return nonce, f
end

-- Loads the record; returns the fields table or nil.
local function load(key)
  local v = redis.call('HMGET', key, 'pw', 'code', 'salt', 'channel', 'seq', 'hb_ms', 'ttl', 'updated_ms', 'pub')
  if not v[1] then return nil end
  return { pw = v[1], code = v[2], salt = v[3], channel = v[4], seq = tonumber(v[5]),
           hb_ms = v[6], ttl = tonumber(v[7]) or 0, updated_ms = v[8], pub = v[9] }
end

local function not_found(nonce)
  return fail('MSNOTFOUND', nonce, 'no such stream')
end

-- Refreshes the expiry of a stream with a TTL.
local function touch(key, rec)
  if rec.ttl > 0 then redis.call('EXPIRE', key, rec.ttl) end
end

-- Loads the record of a leader and checks its leader code and channel.
local function load_leader(nonce, key, code, channel)
  local rec = load(key)
  if not rec or rec.channel ~= channel then return nil, not_found(nonce) end
  if hash(rec.salt, code) ~= rec.code then return nil, fail('MSBADCODE', nonce, 'wrong leader code') end
  return rec
end

local function load_follower(nonce, key, pw)
  local rec = load(key)
  if not rec then return nil, not_found(nonce) end
  if hash(rec.salt, pw) ~= rec.pw then return nil, fail('MSBADPASSWORD', nonce, 'wrong password') end
  return rec
end

-- ms_start KEYS: record, index  ARGV: version, nonce, hb_ms, ttl, body[pw, code, salt, channel]
--   -> [nonce]
redis.register_function('ms_start', function(keys, args)
  local nonce, f, err = enter(args, 5, 4)
  if not nonce then return err end
  local key = keys[1]
  if redis.call('EXISTS', key) == 1 then return fail('MSEXISTS', nonce, 'the stream name is taken') end
  local ttl = tonumber(args[4]) or 0
  local name = string.sub(key, 8)
  redis.call('HSET', key, 'name', name, 'pw', hash(f[3], f[1]), 'code', hash(f[3], f[2]), 'salt', f[3],
    'channel', f[4], 'state', '{}', 'seq', 0, 'updated_ms', now_ms(), 'hb_ms', args[3], 'ttl', ttl)
  if ttl > 0 then redis.call('EXPIRE', key, ttl) end
  redis.call('SADD', keys[2], name)
  return { nonce }
end)

-- ms_reconnect KEYS: record, index  ARGV: version, nonce, hb_ms, ttl, body[pw, code]
--   -> [nonce, channel, seq]
redis.register_function('ms_reconnect', function(keys, args)
  local nonce, f, err = enter(args, 5, 2)
  if not nonce then return err end
  local key = keys[1]
  local rec = load(key)
  if not rec then return not_found(nonce) end
  if hash(rec.salt, f[1]) ~= rec.pw then return fail('MSBADPASSWORD', nonce, 'wrong password') end
  if hash(rec.salt, f[2]) ~= rec.code then return fail('MSBADCODE', nonce, 'wrong leader code') end
  rec.ttl = tonumber(args[4]) or 0
  redis.call('HSET', key, 'hb_ms', args[3], 'ttl', rec.ttl)
  if rec.ttl > 0 then redis.call('EXPIRE', key, rec.ttl) else redis.call('PERSIST', key) end
  redis.call('SADD', keys[2], string.sub(key, 8))
  return { nonce, rec.channel, rec.seq }
end)

-- ms_connect KEYS: record  ARGV: version, nonce, body[pw] -> [nonce, channel, hb_ms]
redis.register_function{ function_name = 'ms_connect', flags = { 'no-writes' }, callback = function(keys, args)
  local nonce, f, err = enter(args, 3, 1)
  if not nonce then return err end
  local rec, e = load_follower(nonce, keys[1], f[1])
  if not rec then return e end
  return { nonce, rec.channel, tonumber(rec.hb_ms) }
end }

-- ms_snapshot KEYS: record  ARGV: version, nonce, body[pw]
--   -> [nonce, channel, seq, updated_ms, hb_ms, state]
redis.register_function{ function_name = 'ms_snapshot', flags = { 'no-writes' }, callback = function(keys, args)
  local nonce, f, err = enter(args, 3, 1)
  if not nonce then return err end
  local rec, e = load_follower(nonce, keys[1], f[1])
  if not rec then return e end
  return { nonce, rec.channel, rec.seq, tonumber(rec.updated_ms), tonumber(rec.hb_ms),
           redis.call('HGET', keys[1], 'state') }
end }

-- ms_publish KEYS: record  ARGV: version, nonce, publish_id, body[code, channel, state]
--   -> [nonce, seq, stored publish id]
-- Stores the state and broadcasts it in one atomic call. The publish id is
-- 32 lowercase hex digits: a random token of the lead (16), then the
-- lead's publish counter (16, zero-padded). A publish whose id has the
-- token of the last stored one and is not greater (a repeat of a request
-- whose response was lost, or an abandoned older request arriving late)
-- answers the stored seq and id and stores and broadcasts nothing: a
-- stream never goes back to an older state of the same lead. The id in the
-- reply is that of the state now stored, so it is never below the request's.
redis.register_function('ms_publish', function(keys, args)
  local nonce, f, err = enter(args, 4, 3)
  if not nonce then return err end
  local key = keys[1]
  local rec, e = load_leader(nonce, key, f[1], f[2])
  if not rec then return e end
  local id = args[3]
  if type(id) ~= 'string' or #id ~= 32 or not string.match(id, '^[0-9a-f]+$') then
    return fail('MSARG', nonce, 'malformed publish id (32 lowercase hex digits: lead token, then counter)')
  end
  if rec.pub and string.sub(rec.pub, 1, 16) == string.sub(id, 1, 16) and id <= rec.pub then
    return { nonce, rec.seq, rec.pub }
  end
  local seq = rec.seq + 1
  local updated = now_ms()
  redis.call('HSET', key, 'state', f[3], 'seq', seq, 'updated_ms', updated, 'pub', id)
  touch(key, rec)
  redis.call('PUBLISH', rec.channel, 's ' .. seq .. ' ' .. updated .. '\n' .. f[3])
  return { nonce, seq, id }
end)

-- ms_heartbeat KEYS: record  ARGV: version, nonce, hb_ms, body[code, channel] -> [nonce]
redis.register_function('ms_heartbeat', function(keys, args)
  local nonce, f, err = enter(args, 4, 2)
  if not nonce then return err end
  local rec, e = load_leader(nonce, keys[1], f[1], f[2])
  if not rec then return e end
  touch(keys[1], rec)
  redis.call('PUBLISH', rec.channel, 'h ' .. (tonumber(args[3]) or 0))
  return { nonce }
end)

-- ms_probe KEYS: record  ARGV: version, nonce, probe, body[pw] -> [nonce, channel, receivers]
-- Lets a follower check that its subscription works: "p <probe>" is
-- published on the channel; receivers is the number of subscriptions
-- Redis delivered it to (0: the caller's own subscription is not there).
redis.register_function('ms_probe', function(keys, args)
  local nonce, f, err = enter(args, 4, 1)
  if not nonce then return err end
  local rec, e = load_follower(nonce, keys[1], f[1])
  if not rec then return e end
  local n = redis.call('PUBLISH', rec.channel, 'p ' .. string.gsub(args[3], '[^%w]', ''))
  return { nonce, rec.channel, n }
end)

-- ms_stop KEYS: record, index  ARGV: version, nonce, body[code, channel] -> [nonce]
redis.register_function('ms_stop', function(keys, args)
  local nonce, f, err = enter(args, 3, 2)
  if not nonce then return err end
  local rec, e = load_leader(nonce, keys[1], f[1], f[2])
  if not rec then return e end
  redis.call('DEL', keys[1])
  redis.call('SREM', keys[2], string.sub(keys[1], 8))
  redis.call('PUBLISH', rec.channel, 'e')
  return { nonce }
end)

-- ms_list KEYS: index  ARGV: version, nonce
--   -> flat [nonce, name, seq, followers, updated_ms, name, ...]
-- Names whose record expired are dropped from the index on the way.
redis.register_function('ms_list', function(keys, args)
  local nonce, _, err = enter(args, nil)
  if not nonce then return err end
  local out = { nonce }
  for _, name in ipairs(redis.call('SMEMBERS', keys[1])) do
    local v = redis.call('HMGET', 'stream:' .. name, 'seq', 'updated_ms', 'channel')
    if v[1] then
      local subs = redis.call('PUBSUB', 'NUMSUB', v[3])
      out[#out + 1] = name
      out[#out + 1] = tonumber(v[1])
      out[#out + 1] = tonumber(subs[2])
      out[#out + 1] = tonumber(v[2])
    else
      redis.call('SREM', keys[1], name)
    end
  end
  return out
end)
