#!lua name=missionstream
--[[
missionstream: server-side logic of the mission plan streams.

Contents (each section opens with a banner of its number and title):
   1. Protocol, errors and request bodies
   2. Secrets, channels and seals
   3. Limits, quotas and where the channel is carried
   4. UTF-8
   5. Deltas: format and checksums
   6. Kept states (ropes)
   7. The record: a base and a log of the deltas since it
   8. Records of protocol 8 (read, and converted once)
   9. Applying a delta
  10. Arguments and the common entry
  11. Records and the throttling of guesses
  12. The index of live streams and the quotas it counts
  13. The functions of a stream: ms_start, ms_reconnect, ms_connect, ms_params,
      ms_snapshot, ms_publish, ms_heartbeat, ms_probe, ms_stop
  14. The functions of the index: ms_list, ms_subscribers, ms_limits

Load (or upgrade) with:
    redis-cli -x FUNCTION LOAD REPLACE < lua/missionstream.lua

Every function takes the protocol version as its first argument and refuses
any other version, so a client never talks to a library it does not
understand. The second argument is the request nonce (1-64 letters and
digits, chosen by the client): every reply is a flat array whose first
element is that nonce, and every error names it as its second word
("MSNOTFOUND <nonce> no such stream"; "-" when the nonce itself was
malformed), so a client can prove which request a reply answers. The last
argument of every function but ms_publish is a framed body (see
docs/PROTOCOL.md): "<len1> <len2> ...\n" followed by the fields, the last
field taking the rest of the body. Secrets travel only there. ms_publish's
body is the state message "r <publish id>\n<state>" or a delta, unframed,
stored and published as received; its lead token travels sealed (section 2).

Passwords and leader codes never reach Redis: the client stretches each
with PBKDF2-HMAC-SHA256 and the stream's salt (kdf, iter: chosen at start)
and sends the derived key (64 hex digits); the record keeps only its
SHA-1, so Redis never runs a slow hash. Publish, heartbeat and stop carry
the lead token instead (128 random bits, 32 hex digits, sent by the
client at start and reconnect): a cheap check, no throttling needed.

Keys of stream <name>:
  hash "stream:<name>", the record, with fields
    name, kdf, iter, salt, pw, code (SHA-1 hex of the derived key's hex),
    lead (SHA-1 hex of the lead token), channel (channel_of below: 40 hex
    digits, made here), hb_ms, ttl, heard_ms (when the leader was last
    heard: start, reconnect, heartbeat; a publish is heard through its
    updated_ms), fails, fail_at, locked_until, locks (the throttling of
    wrong secrets), and the base of the newest state (section 7):
    s ("r <publish id>\n<state>", "r -\n{}" for the initial state),
    b ("<seq> <updated_ms> <publish id> <chain id>" of the base),
    p (the lead prefix of the newest entry's publish id)
  string "msl:<name>", the log: the deltas since the base, each followed
    by its trailer " <seq> <ms since the base's updated_ms> <counter>\n"
    (section 7); absent when the base is the newest state
Index of live streams: hash "streams" of names -> bytes of their states
(rounded up to 1 KiB).
Channel messages (payloads published on the stream's channel, all through
broadcast in section 3: on the primary only, unless the deployment sets
CHANNEL_ON_REPLICAS, when they replicate to the replicas too):
    "s <seq> <updated_ms> <publish id>"  the header of a stored full state
    "r <publish id>\n<state>"           its state (ms_publish's body as
                                        received), published right after
    "d <seq> <base_seq> <updated_ms>\n<delta>"
                                      a stored state, as a delta (Fossil's
                                      format) against the state of base_seq
    "h <interval_ms>"                 leader heartbeat
    "p <nonce>"                       follower probe (ignored by others)
    "e"                               the stream was stopped
]]

-- ========================================================================
-- 1. Protocol, errors and request bodies
-- ========================================================================

local PROTOCOL = '10'
local INDEX = 'streams'

-- An error reply naming the request nonce ("-" when it was malformed).
local function fail(code, nonce, message)
  return redis.error_reply(code .. ' ' .. (nonce or '-') .. ' ' .. message)
end

-- Splits a framed body into n fields; nil when it is malformed.
-- The header is looked at only within the length n - 1 lengths of up to
-- MAX_FIELD_DIGITS digits can take, so a header of millions of fields costs
-- no more than a valid one.
local MAX_FIELD_DIGITS = 8
local function fields(body, n)
  if type(body) ~= 'string' then return nil end
  local nl = string.find(string.sub(body, 1, n * (MAX_FIELD_DIGITS + 1)), '\n', 1, true)
  if not nl then return nil end
  local header = string.sub(body, 1, nl - 1)
  if string.find(header, '[^0-9 ]') then return nil end
  local out, pos = {}, nl + 1
  for len in string.gmatch(header, '%d+') do
    if #out >= n - 1 or #len > MAX_FIELD_DIGITS then return nil end
    len = tonumber(len)
    if pos + len - 1 > #body then return nil end
    out[#out + 1] = string.sub(body, pos, pos + len - 1)
    pos = pos + len
  end
  if #out ~= n - 1 then return nil end
  out[n] = string.sub(body, pos)
  return out
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- ========================================================================
-- 2. Secrets, channels and seals
-- ========================================================================

-- The key derivation of new streams and its bounds (docs/SECURITY.md):
-- the client derives, so a stream's cost lands on whoever guesses.
local KDF = 'pbkdf2-sha256'
local MIN_ITERATIONS = 100000
local MAX_ITERATIONS = 10000000

-- What the record keeps of a derived key or a lead token (hex): its SHA-1,
-- so a leaked record is no credential.
local function hash(hex)
  return redis.sha1hex(hex)
end

-- A stream's channel: made by the functions from the random seed the
-- starting client sends and the stream's name, so that no call can make a
-- stream publish on a channel another stream holds (whoever knows a channel
-- would need a SHA-1 preimage for a name of their own). 40 lowercase hex
-- digits.
local function channel_of(seed, name)
  return redis.sha1hex('channel:' .. seed .. ':' .. name)
end

-- A secret of a reply (40 lowercase hex digits: the channel) sealed for the
-- caller alone: XORed with SHA-1("seal:" <derived key the caller sent> ":"
-- <request nonce>), so a reply written to another connection (Webdis 0.1.9
-- can do that) gives its reader nothing usable. Hex digit by hex digit,
-- which is the XOR of the 20 bytes.
-- The first `digits` hex digits (a multiple of 8) of `secret` XORed with
-- those of `mask`, eight digits at a time (the XOR of the bytes).
local function xor_hex(secret, mask, digits)
  local out = {}
  for i = 1, digits, 8 do
    local x = bit.bxor(tonumber(string.sub(secret, i, i + 7), 16), tonumber(string.sub(mask, i, i + 7), 16))
    out[#out + 1] = bit.tohex(x, 8)
  end
  return table.concat(out)
end

local function seal(secret, key, nonce)
  return xor_hex(secret, redis.sha1hex('seal:' .. key .. ':' .. nonce), 40)
end

-- What ms_publish takes instead of the channel: its tag, the first 16 hex
-- digits of SHA-1("tag:" <channel>). It tells a leader of an earlier
-- stream of the same name (another channel) from this one's, and gives
-- nothing of the channel away (the channel is a secret of the followers).
local function channel_tag(channel)
  return string.sub(redis.sha1hex('tag:' .. channel), 1, 16)
end

-- ms_publish's lead token travels in the request's path (its body is the
-- state, untouched), sealed for that one request: the token's 32 hex
-- digits XORed with the first 32 of SHA-1("lead:" <lead> ":" <publish id>
-- ":" <kind> ":" <base seq> ":" <base id> ":" <floor> ":" <body length>),
-- where lead is what the record keeps (the SHA-1 hex of the token). Opens
-- a seal (the same XOR) with the record's lead; the caller then checks the
-- token against it. Someone who reads paths alone learns nothing; a seal
-- serves only a request of the same publish id, kind, base, floor and body
-- length (docs/SECURITY.md).
local function open_lead(sealed, lead, id, kind, base_seq, base_id, floor, len)
  local mask = redis.sha1hex('lead:' .. lead .. ':' .. id .. ':' .. kind .. ':' .. base_seq .. ':' .. base_id
    .. ':' .. floor .. ':' .. len)
  return xor_hex(sealed, mask, 32)
end

-- ========================================================================
-- 3. Limits, quotas and where the channel is carried
-- ========================================================================

-- Limits, the same as the client library's.
local MAX_NAME = 256
local MAX_STATE = 8 * 1024 * 1024
-- Largest seq floor a leader may send (12 digits).
local MAX_SEQ = 999999999999
local RECORD_PREFIX = 'stream:'

-- QUOTAS of the deployment: edit these three lines before loading the
-- library (FUNCTION LOAD REPLACE); ms_limits shows them to clients.
-- Live streams at most:
local QUOTA_STREAMS = 10000
-- Bytes of one stream's state at most (at most MAX_STATE, 8 MiB):
local QUOTA_STATE_BYTES = MAX_STATE
-- Bytes of the states of all streams together at most:
local QUOTA_TOTAL_BYTES = 1024 * 1024 * 1024

-- CHANNEL of the deployment: edit this line before loading the library
-- (FUNCTION LOAD REPLACE), the same on every node; ms_connect shows it to
-- clients. false: channel messages are published on the primary only
-- (followers subscribe there; replicas hold the record but carry no
-- message, and the replication stream and the append-only file get a
-- delta publish's APPEND alone). true: they replicate, so that followers
-- can subscribe on replicas (fan-out over replicas), at the cost of every
-- message in the replication stream, wrapped with the record's write in
-- MULTI/EXEC.
local CHANNEL_ON_REPLICAS = false

-- Every message on a stream's channel goes through here. Redis replicates
-- a function's PUBLISH to the replicas (never to the append-only file)
-- unless told otherwise; the record's writes around it replicate as ever.
-- Returns the number of subscriptions of this node it reached.
local function broadcast(channel, msg)
  if CHANNEL_ON_REPLICAS then return redis.call('PUBLISH', channel, msg) end
  redis.set_repl(redis.REPL_NONE)
  local n = redis.call('PUBLISH', channel, msg)
  redis.set_repl(redis.REPL_ALL)
  return n
end

-- ========================================================================
-- 4. UTF-8
-- ========================================================================

-- Whether s is valid UTF-8 (no overlong forms, no surrogates), in C speed
-- (Redis runs nothing else meanwhile): runs of ASCII collapse to one
-- space, then each kind of well-formed multi-byte sequence is replaced by
-- an ASCII byte and the runs collapse again, so the string shrinks with
-- every pass; any byte >= 0x80 left over belongs to no well-formed
-- sequence. Used for names only (256 bytes at most): on a large string
-- it would keep Redis busy (8 MiB: ~0.1 s of ASCII, seconds of mixed
-- text), so states are not scanned. NUL is ASCII here (checked apart).
local UTF8_SEQUENCES = {
  '[\194-\223][\128-\191]',
  '[\225-\236\238\239][\128-\191][\128-\191]', '\224[\160-\191][\128-\191]', '\237[\128-\159][\128-\191]',
  '[\241-\243][\128-\191][\128-\191][\128-\191]', '\240[\144-\191][\128-\191][\128-\191]',
  '\244[\128-\143][\128-\191][\128-\191]',
}
local ASCII_RUN = '[%z\1-\127]+'
local function utf8_valid(s)
  s = string.gsub(s, ASCII_RUN, ' ')
  for _, p in ipairs(UTF8_SEQUENCES) do
    -- (Only ASCII left, the one-byte " " or none: valid. A lone byte of
    -- 0x80-0xFF is not, whatever the length.)
    if #s <= 1 and not string.find(s, '[\128-\255]') then return true end
    s = string.gsub(string.gsub(s, p, ' '), ASCII_RUN, ' ')
  end
  return not string.find(s, '[\128-\255]')
end

-- ========================================================================
-- 5. Deltas: format and checksums
-- ========================================================================

-- Deltas (docs/PROTOCOL.md, "Deltas"): Fossil's delta format. A delta is
-- "<target length>\n", then commands "<n>@<offset>," (copy n bytes of the
-- base from offset), "<n>:<n bytes>" (insert them), and "<checksum>;"
-- last. Numbers are written in Fossil's base-64 digits.
local DELTA_DIGITS = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~'
-- Byte -> value of each digit of DELTA_DIGITS (the string library is not
-- available while the library loads).
local DIGIT = {
  [48] = 0, [49] = 1, [50] = 2, [51] = 3, [52] = 4, [53] = 5, [54] = 6, [55] = 7, [56] = 8, [57] = 9,
  [65] = 10, [66] = 11, [67] = 12, [68] = 13, [69] = 14, [70] = 15, [71] = 16, [72] = 17, [73] = 18,
  [74] = 19, [75] = 20, [76] = 21, [77] = 22, [78] = 23, [79] = 24, [80] = 25, [81] = 26, [82] = 27,
  [83] = 28, [84] = 29, [85] = 30, [86] = 31, [87] = 32, [88] = 33, [89] = 34, [90] = 35, [95] = 36,
  [97] = 37, [98] = 38, [99] = 39, [100] = 40, [101] = 41, [102] = 42, [103] = 43, [104] = 44, [105] = 45,
  [106] = 46, [107] = 47, [108] = 48, [109] = 49, [110] = 50, [111] = 51, [112] = 52, [113] = 53, [114] = 54,
  [115] = 55, [116] = 56, [117] = 57, [118] = 58, [119] = 59, [120] = 60, [121] = 61, [122] = 62, [126] = 63
}

-- A number at pos (1 to 6 digits: 2^36 covers every length and checksum);
-- returns it and the next position, or nil.
local function delta_int(d, pos)
  local v, start = 0, pos
  while true do
    local x = DIGIT[string.byte(d, pos) or 0]
    if not x then break end
    if pos - start >= 6 then return nil end
    v = v * 64 + x
    pos = pos + 1
  end
  if pos == start then return nil end
  return v, pos
end

-- Fossil's checksum (docs/PROTOCOL.md, "Deltas") is the sum modulo 2^32 of
-- the bytes, each weighted by its position modulo 4 (big-endian 32-bit
-- words, the last padded with zero bytes). So it follows from the four
-- "residue sums" of a string: the sums of its bytes at positions 0, 1, 2
-- and 3 modulo 4, exact in doubles (8 MiB of 255 is below 2^31).

-- The residue sums of the bytes of s at 0-based positions [a, b): a table
-- {r0, r1, r2, r3}. 64 bytes per string.byte call: ~9 ms per MiB.
local function residue_sums(s, a, b)
  local r = { 0, 0, 0, 0 }
  local byte = string.byte
  local i = a
  while i < b and i % 4 ~= 0 do
    local k = i % 4 + 1
    r[k] = r[k] + byte(s, i + 1)
    i = i + 1
  end
  local s0, s1, s2, s3 = 0, 0, 0, 0
  while i + 64 <= b do
    local v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15, v16, v17, v18, v19, v20, v21,
      v22, v23, v24, v25, v26, v27, v28, v29, v30, v31, v32, v33, v34, v35, v36, v37, v38, v39, v40, v41,
      v42, v43, v44, v45, v46, v47, v48, v49, v50, v51, v52, v53, v54, v55, v56, v57, v58, v59, v60, v61,
      v62, v63 = byte(s, i + 1, i + 64)
    s0 = s0 + v0 + v4 + v8 + v12 + v16 + v20 + v24 + v28
      + v32 + v36 + v40 + v44 + v48 + v52 + v56 + v60
    s1 = s1 + v1 + v5 + v9 + v13 + v17 + v21 + v25 + v29
      + v33 + v37 + v41 + v45 + v49 + v53 + v57 + v61
    s2 = s2 + v2 + v6 + v10 + v14 + v18 + v22 + v26 + v30
      + v34 + v38 + v42 + v46 + v50 + v54 + v58 + v62
    s3 = s3 + v3 + v7 + v11 + v15 + v19 + v23 + v27 + v31
      + v35 + v39 + v43 + v47 + v51 + v55 + v59 + v63
    i = i + 64
  end
  while i + 4 <= b do
    local c0, c1, c2, c3 = byte(s, i + 1, i + 4)
    s0, s1, s2, s3 = s0 + c0, s1 + c1, s2 + c2, s3 + c3
    i = i + 4
  end
  r[1], r[2], r[3], r[4] = r[1] + s0, r[2] + s1, r[3] + s2, r[4] + s3
  while i < b do
    local k = i % 4 + 1
    r[k] = r[k] + byte(s, i + 1)
    i = i + 1
  end
  return r
end

-- The checksum of a string of residue sums r.
local function checksum_of(r)
  return (r[4] + (r[3] % 16777216) * 256 + (r[2] % 65536) * 65536 + (r[1] % 256) * 16777216) % 4294967296
end

-- Adds the residue sums d of bytes moved by `shift` positions to r.
local function add_shifted(r, d, shift)
  for c = 0, 3 do
    local k = (c + shift) % 4 + 1
    r[k] = r[k] + d[c + 1]
  end
end

-- Most commands a delta may have: the work of applying one grows with
-- its commands, not only with its bytes (a million one-byte copies would
-- keep Redis busy for seconds). The library's deltas have a handful.
local MAX_DELTA_COMMANDS = 2048

-- ========================================================================
-- 6. Kept states (ropes)
-- ========================================================================

-- States as ropes. A delta is verified against the newest state (its
-- checksum is that of the result); in Redis' Lua every string made costs
-- ~1.2 ms per MiB (each byte is hashed), so assembling the newest state
-- from the record and cutting it up at every update would cost far more
-- than the delta. The functions therefore keep the newest state of the
-- streams they published last (or read last) in this Lua VM, cut into
-- pieces, each with its residue sums once known: a delta reuses the
-- pieces it copies whole and makes only the pieces it cuts or inserts;
-- they are joined into one string only for a compaction (section 7) or a
-- snapshot. A piece is a byte range of a string ({ s = string, o = offset,
-- n = length }), so that the state of a full publish is kept as the
-- request's body itself, after its "r <publish id>\n" prefix, and no
-- string of the state's size is made to strip the prefix; the parts of a
-- cut piece are ranges of the same string. A kept state is
-- used only while the record still holds it (same channel, seq and
-- publish id: a publish id names one state); else it is assembled from
-- the record again. The cache holds states of MIN_KEPT bytes or more, up to
-- ROPE_BUDGET bytes with their tables (Lua memory of Redis, besides the
-- records); FUNCTION LOAD or a restart empties it.
local ropes, rope_bytes = {}, 0
local ROPE_BUDGET = 64 * 1024 * 1024
-- States shorter than this are not kept.
local MIN_KEPT = 8 * 1024
-- A piece holds up to about piece_size(state length) bytes: 1/PIECES of
-- the state, at least MIN_PIECE (a cut reads at most half a piece for
-- residue sums, or GRID / 2 bytes in a piece with a grid, see piece_sums).
-- A cut leaves the two parts of a piece as ranges of its string and joins
-- only the small pieces around the edit; a state of more than
-- 2 * PIECES + 1 pieces has its adjacent pieces gathered in runs while
-- they fit in one (merge_pieces, run_of: a run is a list of pieces, no
-- string made, so the list has two levels). Every delta walks the list
-- of pieces and the runs it cuts, so fewer and larger ones are cheaper
-- while cuts read little (24 against 48: ~25 % less Redis time per delta
-- at 1 MiB; 12 made as many small strings around the edits as it saved
-- in walks). join100 below joins up to 100 into one string at once.
local MIN_PIECE = 4 * 1024
local PIECES = 24

-- Joins up to 100 strings into one, making one string only (a chain of
-- ".." is one concatenation; table.concat makes intermediate strings).
local function join100(
  a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16, a17, a18, a19, a20, a21, a22, a23,
  a24, a25, a26, a27, a28, a29, a30, a31, a32, a33, a34, a35, a36, a37, a38, a39, a40, a41, a42, a43, a44,
  a45, a46, a47, a48, a49, a50, a51, a52, a53, a54, a55, a56, a57, a58, a59, a60, a61, a62, a63, a64, a65,
  a66, a67, a68, a69, a70, a71, a72, a73, a74, a75, a76, a77, a78, a79, a80, a81, a82, a83, a84, a85, a86,
  a87, a88, a89, a90, a91, a92, a93, a94, a95, a96, a97, a98, a99, a100)
  return
    a1 .. a2 .. a3 .. a4 .. a5 .. a6 .. a7 .. a8 .. a9 .. a10 .. a11 .. a12 .. a13 .. a14 .. a15 .. a16 ..
    a17 .. a18 .. a19 .. a20 .. a21 .. a22 .. a23 .. a24 .. a25 .. a26 .. a27 .. a28 .. a29 .. a30 ..
    a31 .. a32 .. a33 .. a34 .. a35 .. a36 .. a37 .. a38 .. a39 .. a40 .. a41 .. a42 .. a43 .. a44 ..
    a45 .. a46 .. a47 .. a48 .. a49 .. a50 .. a51 .. a52 .. a53 .. a54 .. a55 .. a56 .. a57 .. a58 ..
    a59 .. a60 .. a61 .. a62 .. a63 .. a64 .. a65 .. a66 .. a67 .. a68 .. a69 .. a70 .. a71 .. a72 ..
    a73 .. a74 .. a75 .. a76 .. a77 .. a78 .. a79 .. a80 .. a81 .. a82 .. a83 .. a84 .. a85 .. a86 ..
    a87 .. a88 .. a89 .. a90 .. a91 .. a92 .. a93 .. a94 .. a95 .. a96 .. a97 .. a98 .. a99 .. a100
end

local function piece_size(len)
  return math.max(MIN_PIECE, math.ceil(len / PIECES))
end

-- A piece of the whole string s.
local function piece_of(s)
  return { s = s, o = 0, n = #s }
end

-- Large pieces keep the residue sums of their string at a grid of
-- positions, every GRID bytes from the piece's start (made in the same pass
-- as the piece's own sums), so that a cut anywhere in them, or in the
-- parts cut from them (ranges of the same string), reads at most GRID / 2
-- bytes on either side of the grid point nearest to it.
local GRID = 1024

-- The grid of the bytes [o, o + n) of s, and their sums (at the string's
-- positions).
local function grid_of(s, o, n)
  local c1, c2, c3, c4 = { 0 }, { 0 }, { 0 }, { 0 }
  local a1, a2, a3, a4 = 0, 0, 0, 0
  local j, pos, e = 1, o, o + n
  while pos < e do
    local q = math.min(pos + GRID, e)
    local r = residue_sums(s, pos, q)
    a1, a2, a3, a4 = a1 + r[1], a2 + r[2], a3 + r[3], a4 + r[4]
    j = j + 1
    c1[j], c2[j], c3[j], c4[j] = a1, a2, a3, a4
    pos = q
  end
  return { base = o, e = e, c1 = c1, c2 = c2, c3 = c3, c4 = c4 }, { a1, a2, a3, a4 }
end

-- The sums (at the string's positions) of the bytes [g.base, x) of s, from
-- the grid point of g nearest to x.
local function grid_at(g, s, x)
  local j = math.floor((x - g.base) / GRID)
  local lo = g.base + j * GRID
  local hi = math.min(lo + GRID, g.e)
  if x - lo <= hi - x then
    local r = residue_sums(s, lo, x)
    return { g.c1[j + 1] + r[1], g.c2[j + 1] + r[2], g.c3[j + 1] + r[3], g.c4[j + 1] + r[4] }
  end
  local r = residue_sums(s, x, hi)
  return { g.c1[j + 2] - r[1], g.c2[j + 2] - r[2], g.c3[j + 2] - r[3], g.c4[j + 2] - r[4] }
end

-- The residue sums of piece p (memoized: a piece never changes); a piece
-- of 4 grid steps or more gets its grid in the same pass.
local function piece_sums(p)
  if not p.r and p.c then
    -- (a run: from the sums of its pieces)
    local r, c, cs = { 0, 0, 0, 0 }, p.c, p.cs
    for m = 1, #c do add_shifted(r, piece_sums(c[m]), cs[m] % 4) end
    p.r = r
  end
  if not p.r then
    local r
    if p.n >= 4 * GRID then
      p.g, r = grid_of(p.s, p.o, p.n)
    else
      r = residue_sums(p.s, p.o, p.o + p.n)
    end
    if p.o % 4 ~= 0 then
      -- (sums of the string's positions, shifted to the piece's own)
      local x = { 0, 0, 0, 0 }
      add_shifted(x, r, -p.o % 4)
      r = x
    end
    p.r = r
  end
  return p.r
end

-- Joins the strings strs[1..] into one. Up to 100 at once (join100: each
-- byte copied once); more are first joined in runs of adjacent strings of
-- up to a fiftieth of their bytes (a longer string stands alone), so that
-- only the bytes of short strings are copied twice.
local function join_strs(strs)
  local n = #strs
  if n <= 100 then
    if n == 1 then return strs[1] end
    for k = n + 1, 100 do strs[k] = '' end
    return join100(unpack(strs, 1, 100))
  end
  local total = 0
  for k = 1, n do total = total + #strs[k] end
  local limit, out, run, len = total / 50, {}, {}, 0
  for k = 1, n + 1 do
    local x = strs[k]
    if #run > 0 and (not x or len + #x > limit or #run == 100) then
      out[#out + 1] = join_strs(run)
      run, len = {}, 0
    end
    if x then
      run[#run + 1] = x
      len = len + #x
    end
  end
  return join_strs(out)
end

-- The bytes of piece p as one string (made only when p is a part of a
-- longer string, or a run of pieces, see merge_pieces).
local function piece_str(p)
  if p.c then
    local strs = {}
    for k, q in ipairs(p.c) do strs[k] = piece_str(q) end
    return join_strs(strs)
  end
  if p.o == 0 and p.n == #p.s then return p.s end
  return string.sub(p.s, p.o + 1, p.o + p.n)
end

-- The residue sums, at the string's positions, of the bytes [0, x) of
-- piece p whose own sums are known: from the nearest of the piece's start,
-- its end and the last such x asked (memoized in p.px, p.pr), so that the
-- two cuts of an edit (its start, then its end a few bytes further) scan
-- at most half the piece between them.
local function prefix_sums(p, x)
  local s, o, n = p.s, p.o, p.n
  local g = p.g
  if g then
    if not p.g0 then p.g0 = grid_at(g, s, o) end
    local y, z = p.g0, grid_at(g, s, o + x)
    return { z[1] - y[1], z[2] - y[2], z[3] - y[3], z[4] - y[4] }
  end
  local r
  local dm = p.px and math.abs(x - p.px) or n
  if x <= n - x and x <= dm then
    r = residue_sums(s, o, o + x)
  elseif dm <= n - x then
    local y, m = p.pr, p.px
    if x >= m then
      local z = residue_sums(s, o + m, o + x)
      r = { y[1] + z[1], y[2] + z[2], y[3] + z[3], y[4] + z[4] }
    else
      local z = residue_sums(s, o + x, o + m)
      r = { y[1] - z[1], y[2] - z[2], y[3] - z[3], y[4] - z[4] }
    end
  else
    local full = { 0, 0, 0, 0 }
    add_shifted(full, p.r, o % 4)
    local z = residue_sums(s, o + x, o + n)
    r = { full[1] - z[1], full[2] - z[2], full[3] - z[3], full[4] - z[4] }
  end
  p.px, p.pr = x, r
  return r
end

-- A piece of the bytes [a, b) of piece p (0-based, in p): a range of the
-- same string (no string made). Its sums follow from p's (nil, computed
-- when needed, when p's are not known), reading at most half of p
-- (prefix_sums).
local function sub_piece(p, a, b)
  if a == 0 and b == p.n then return p end
  local r
  if p.r then
    local o = p.o
    local y, z
    if a == 0 then y = { 0, 0, 0, 0 } else y = prefix_sums(p, a) end
    if b == p.n then
      z = { 0, 0, 0, 0 }
      add_shifted(z, p.r, o % 4)
    else
      z = prefix_sums(p, b)
    end
    r = { 0, 0, 0, 0 }
    add_shifted(r, { z[1] - y[1], z[2] - y[2], z[3] - y[3], z[4] - y[4] }, -(o + a) % 4)
  end
  return { s = p.s, o = p.o + a, n = b - a, r = r, g = p.g }
end

-- Index of the piece of a rope holding byte x (0-based; starts: the
-- offset of each piece).
local function piece_at(starts, x)
  local lo, hi = 1, #starts
  while lo < hi do
    local mid = math.floor((lo + hi + 1) / 2)
    if starts[mid] <= x then lo = mid else hi = mid - 1 end
  end
  return lo
end

-- Appends the bytes [a, b) of piece p to pieces, cut to at most `size`
-- bytes a piece. A run (see merge_pieces) taken whole is appended as it
-- is; a part of one as the parts of its pieces it spans (the run is
-- undone there, and made again by merge_pieces).
local function add_piece(pieces, p, a, b, size)
  local c = p.c
  if c then
    if a == 0 and b == p.n then
      pieces[#pieces + 1] = p
      return
    end
    local cs = p.cs
    local k, last = piece_at(cs, a), piece_at(cs, b - 1)
    if k == last then
      add_piece(pieces, c[k], a - cs[k], b - cs[k], size)
      return
    end
    -- The pieces of the run it spans whole stay a run (its sums computed
    -- from theirs when needed, see piece_sums); those at its ends are cut.
    local lo, hi = k, last
    if a > cs[k] then
      add_piece(pieces, c[k], a - cs[k], c[k].n, size)
      lo = k + 1
    end
    local tail = b < cs[last] + c[last].n
    if tail then hi = last - 1 end
    if hi > lo then
      local at, rcs = cs[lo], {}
      for m = lo, hi do rcs[m - lo + 1] = cs[m] - at end
      pieces[#pieces + 1] = { c = { unpack(c, lo, hi) }, cs = rcs, n = cs[hi] + c[hi].n - at }
    elseif hi == lo then
      pieces[#pieces + 1] = c[lo]
    end
    if tail then add_piece(pieces, c[last], 0, b - cs[last], size) end
    return
  end
  local n = b - a
  if n <= 2 * size then
    if n > 0 then pieces[#pieces + 1] = sub_piece(p, a, b) end
    return
  end
  local k = math.ceil(n / size)
  for i = 0, k - 1 do
    pieces[#pieces + 1] = sub_piece(p, a + math.floor(n * i / k), a + math.floor(n * (i + 1) / k))
  end
end

-- Whether byte x (0-based) of a rope continues a multi-byte character
-- (false past the end); i: the piece holding it, when known.
local function continues(rope, starts, x, i)
  if x >= rope.len then return false end
  i = i or piece_at(starts, x)
  local p = rope.pieces[i]
  x = x - starts[i]
  if p.c then
    local k = piece_at(p.cs, x)
    p, x = p.c[k], x - p.cs[k]
  end
  local b = string.byte(p.s, p.o + x + 1)
  return b >= 128 and b < 192
end

-- Pieces i to j of `pieces` as one piece, appended to out (one string
-- made when there are several; its sums follow from theirs).
local function merge_run(out, pieces, i, j)
  if i == j then
    out[#out + 1] = pieces[i]
    return
  end
  local strs, r, pos = {}, { 0, 0, 0, 0 }, 0
  for k = i, j do
    local p = pieces[k]
    strs[#strs + 1] = piece_str(p)
    add_shifted(r, piece_sums(p), pos % 4)
    pos = pos + p.n
  end
  local s = join_strs(strs)
  out[#out + 1] = { s = s, o = 0, n = #s, r = r }
end

-- Pieces i to j of `pieces` as one run, appended to out: a piece of
-- pieces ({ c = its pieces, cs = the offset of each in it, n = length,
-- r = residue sums }, the pieces of a run in it taken as its pieces), so
-- that no string is made and no byte read: its sums follow from theirs,
-- and its pieces keep theirs and their grids (a cut in a run reads as
-- little as a cut in a piece). A run of more than MAX_RUN_PIECES pieces
-- is joined into a string instead, so that a cut in a run costs a bounded
-- number of table stores however a leader edits its state.
local MAX_RUN_PIECES = 64
local function run_of(out, pieces, i, j)
  if i == j then
    out[#out + 1] = pieces[i]
    return
  end
  local c, cs, r, pos = {}, {}, { 0, 0, 0, 0 }, 0
  for k = i, j do
    local p = pieces[k]
    local pc = p.c
    if pc then
      local pcs = p.cs
      for m = 1, #pc do
        c[#c + 1] = pc[m]
        cs[#cs + 1] = pos + pcs[m]
      end
    else
      c[#c + 1] = p
      cs[#cs + 1] = pos
    end
    add_shifted(r, piece_sums(p), pos % 4)
    pos = pos + p.n
  end
  if #c > MAX_RUN_PIECES then
    -- (a run crumbled into many pieces by edits: one string, as before)
    merge_run(out, pieces, i, j)
    return
  end
  out[#out + 1] = { c = c, cs = cs, n = pos, r = r }
end

-- Joins runs of adjacent small pieces (under size/8 each, up to size/4 a
-- run: the bytes around an edit), so that edits do not crumble a state
-- into ever smaller pieces at the cost of a few small strings; the large
-- parts of a cut piece stay ranges of their strings (joining them would
-- make a string of the piece's size at every edit). When a state has more
-- than 2 * PIECES + 1 pieces all the same (edits at many places), runs of
-- adjacent pieces are taken together as long as a run stays within `size`
-- bytes (run_of: a list of pieces, no string made), so that any two
-- adjacent pieces left hold more than `size` bytes together: the list
-- has two levels, the walks of a delta go over at most 2 * PIECES + 1
-- pieces and the pieces of the runs it cuts. Runs of states whose pieces
-- hold at most JOINED_RUNS bytes are joined into strings instead: so
-- small a string costs less to make, and to read half of at a cut, than
-- its pieces cost to walk.
local JOINED_RUNS = 8 * 1024
local function merge_pieces(pieces, size)
  local small, out, i, cnt = size / 8, {}, 1, #pieces
  -- (most often no two small pieces are adjacent: the pieces stand)
  local prev, joins = math.huge, false
  for k = 1, cnt do
    local n = pieces[k].n
    if n < small and prev < small and prev + n <= 2 * small then
      joins = true
      -- (the pieces before the first such pair stand: copied by unpack)
      i = k - 1
      if i > 1 then out = { unpack(pieces, 1, i - 1) } end
      break
    end
    prev = n
  end
  if not joins then
    if cnt <= 2 * PIECES + 1 then return pieces end
    i = cnt + 1
    out = pieces
  end
  while i <= cnt do
    local j, run = i, pieces[i].n
    if run < small then
      while j < cnt and pieces[j + 1].n < small and run + pieces[j + 1].n <= 2 * small do
        j = j + 1
        run = run + pieces[j].n
      end
    end
    if j == i then
      out[#out + 1] = pieces[i]
    else
      merge_run(out, pieces, i, j)
    end
    i = j + 1
  end
  if #out <= 2 * PIECES + 1 then return out end
  pieces, out, i, cnt = out, {}, 1, #out
  while i <= cnt do
    local j, run = i, pieces[i].n
    while j < cnt and run + pieces[j + 1].n <= size do
      j = j + 1
      run = run + pieces[j].n
    end
    if size <= JOINED_RUNS then
      merge_run(out, pieces, i, j)
    else
      run_of(out, pieces, i, j)
    end
    i = j + 1
  end
  return out
end

-- The string `prefix` followed by a rope's pieces (one string made: pieces
-- that are parts of longer strings are cut first; see join_strs past 100).
local function join(pieces, prefix)
  local strs = { prefix }
  for _, p in ipairs(pieces) do
    if p.c then
      for _, q in ipairs(p.c) do strs[#strs + 1] = piece_str(q) end
    else
      strs[#strs + 1] = piece_str(p)
    end
  end
  return join_strs(strs)
end

-- ========================================================================
-- 7. The record: a base and a log of the deltas since it
-- ========================================================================

-- The record keeps the newest state as a base and the deltas since it
-- (docs/PROTOCOL.md, "The record"):
--   field s of the record: the base as a state message, "r <publish id>\n"
--     and the state ("r -\n{}": the initial state of ms_start); a full
--     publish stores its request body here as received;
--   field b: "<seq> <updated_ms> <publish id> <chain id>" of the base
--     ("-" for no publish id); the chain id names the base and the log
--     written since (a kept state of an earlier entry of the same chain is
--     brought up to date from the log, see rope_of);
--   field p: the lead prefix (16 hex digits) of the newest entry's publish
--     id;
--   the log, key "msl:<name>": the deltas since the base, one after the
--     other, each followed by its trailer
--       " <seq> <ms since the base's updated_ms> <publish counter>\n"
--     (the counter in lowercase hex without leading zeros). A Fossil delta
--     ends with "<checksum>;" and a trailer holds no ";", so the newest
--     trailer is found at the end of the log, and entries parse forward.
--     Absent: the base is the newest state.
-- A delta publish appends one entry (APPEND: nothing else is written per
-- update, and, its message published on the primary only (section 3),
-- the APPEND is all the replicas and the append-only file get of it); a
-- full publish, or a compaction, writes the base and deletes
-- the log; a composition replaces the log by one entry.
local LOG_PREFIX = 'msl:'
-- Bytes at the end of the log that hold the newest trailer (a trailer is
-- at most 1 + 12 + 1 + 15 + 1 + 16 + 1 bytes), with the delta's ";".
local TAIL = 64

-- A state as segments: references to byte ranges of strings already made
-- (the record's base, the log), so that the deltas since the base apply
-- one after the other without making any string until the end, and at a
-- cost that grows with their commands and the segments they produce, not
-- with the state's bytes. The segments are kept in chunks of up to about
-- SEG_CHUNK, so that a copy takes the chunks it spans whole (shared with
-- the segments it copies from, never changed) and only the chunks at its
-- ends segment by segment: a delta costs about its commands, the chunks
-- and two chunks' segments, not all the segments of the state (thousands
-- after edits at many places). A chunk: parallel arrays s (strings), o
-- (0-based offsets), n (lengths), at (offset of each segment in the
-- chunk), and len (its bytes). The segments: c (the chunks), cat (offset
-- of each chunk in the state), len (the state's length), k (the number of
-- segments: the same as one list would hold, adjacent ranges of one
-- string being one segment wherever they meet). segs_of: the state that
-- is the bytes of s from offset o (0-based) on.
local SEG_CHUNK = 32

local function segs_of(s, o)
  o = o or 0
  if #s - o <= 0 then return { c = {}, cat = {}, len = 0, k = 0 } end
  return { c = { { s = { s }, o = { o }, n = { #s - o }, at = { 0 }, len = #s - o } }, cat = { 0 }, len = #s - o, k = 1 }
end

-- The segments being made by a delta (apply_segs): closed chunks (c, cat),
-- the open chunk (S, O, N, AT: m segments, clen bytes), len and k.
local function seg_builder()
  return { c = {}, cat = {}, len = 0, k = 0, S = {}, O = {}, N = {}, AT = {}, m = 0, clen = 0 }
end

-- Closes the open chunk of builder B.
local function seg_close(B)
  if B.m == 0 then return end
  local j = #B.c + 1
  B.c[j] = { s = B.S, o = B.O, n = B.N, at = B.AT, len = B.clen }
  B.cat[j] = B.len - B.clen
  B.S, B.O, B.N, B.AT, B.m, B.clen = {}, {}, {}, {}, 0, 0
end

-- Appends n > 0 bytes of str from offset o to builder B: to its last
-- segment when they follow it in the same string.
local function seg_push(B, str, o, n)
  local m = B.m
  if m > 0 then
    if B.S[m] == str and B.O[m] + B.N[m] == o then
      B.N[m] = B.N[m] + n
      B.clen, B.len = B.clen + n, B.len + n
      return
    end
  else
    local j = #B.c
    local last = B.c[j]
    if last then
      local lk = #last.s
      if last.s[lk] == str and last.o[lk] + last.n[lk] == o then
        -- (the last chunk, maybe shared, opened again as a copy)
        B.c[j], B.cat[j] = nil, nil
        B.S, B.O, B.N, B.AT = { unpack(last.s) }, { unpack(last.o) }, { unpack(last.n) }, { unpack(last.at) }
        B.m, B.clen = lk, last.len
        B.N[lk] = B.N[lk] + n
        B.clen, B.len = B.clen + n, B.len + n
        return
      end
    end
  end
  m = m + 1
  B.S[m], B.O[m], B.N[m], B.AT[m] = str, o, n, B.clen
  B.m, B.k = m, B.k + 1
  B.clen, B.len = B.clen + n, B.len + n
  if m >= SEG_CHUNK then seg_close(B) end
end

-- Appends the bytes [a, b) (a < b) of chunk ch to builder B. All of a
-- chunk is taken as it is, unless its first segment continues B's last,
-- or it fits in B's open chunk with it and one of the two is short (short
-- chunks are put together, so that edits do not crumble the chunks); else
-- the segments, at a few table stores each.
local function seg_chunk(B, ch, a, b)
  local S, O, N, AT = ch.s, ch.o, ch.n, ch.at
  local cnt = #S
  if a == 0 and b == ch.len and (B.m + cnt > SEG_CHUNK or (B.m == 0 and cnt >= SEG_CHUNK / 2)) then
    local m, str, o = B.m, S[1], O[1]
    local joins
    if m > 0 then
      joins = B.S[m] == str and B.O[m] + B.N[m] == o
    else
      local last = B.c[#B.c]
      joins = last and last.s[#last.s] == str and last.o[#last.s] + last.n[#last.s] == o
    end
    if not joins then
      seg_close(B)
      local j = #B.c + 1
      B.c[j], B.cat[j] = ch, B.len
      B.len, B.k = B.len + ch.len, B.k + cnt
      return
    end
  end
  local i, last = 1, cnt
  if a > 0 then i = piece_at(AT, a) end
  if b < ch.len then last = piece_at(AT, b - 1) end
  -- (the first segment may continue B's last; the others follow segments
  -- of ch, which continue none)
  local x, y = AT[i], AT[i] + N[i]
  if x < a then x = a end
  if y > b then y = b end
  seg_push(B, S[i], O[i] + x - AT[i], y - x)
  if last == i then return end
  local BS, BO, BN, BAT, m, clen = B.S, B.O, B.N, B.AT, B.m, B.clen
  for j = i + 1, last - 1 do
    m = m + 1
    BS[m], BO[m], BN[m], BAT[m] = S[j], O[j], N[j], clen
    clen = clen + N[j]
  end
  y = b - AT[last]
  if y > N[last] then y = N[last] end
  m = m + 1
  BS[m], BO[m], BN[m], BAT[m] = S[last], O[last], y, clen
  clen = clen + y
  B.k, B.len = B.k + m - B.m, B.len + clen - B.clen
  B.m, B.clen = m, clen
  if m >= SEG_CHUNK then seg_close(B) end
end

-- Applies the delta at position pos of string d (1-based; 1 when nil),
-- verified against the state segs holds when it was published, to segs.
-- Returns the segments of the result, the work it took (commands and
-- segments made: what reading the record costs per delta) and the
-- position after the delta's ";"; nil when d does not fit segs after all
-- (a record edited by hand), checked at the cost of a few comparisons a
-- command.
local function apply_segs(segs, d, pos)
  local limit
  limit, pos = delta_int(d, pos or 1)
  if not limit then return nil end
  pos = pos + 1
  local C, CAT, slen = segs.c, segs.cat, segs.len
  local B = seg_builder()
  local commands = 0
  local byte = string.byte
  while true do
    commands = commands + 1
    local n
    n, pos = delta_int(d, pos)
    if not n then return nil end
    local op = byte(d, pos)
    pos = pos + 1
    if op == 64 then -- '@': copy
      local off
      off, pos = delta_int(d, pos)
      if not off or off + n > slen then return nil end
      pos = pos + 1
      if n > 0 then
        -- The chunks holding bytes off and e - 1; those between are taken
        -- whole (from the start of the state to the start of the result:
        -- the chunks as they are, copied by unpack in C).
        local e = off + n
        local i, last = piece_at(CAT, off), piece_at(CAT, e - 1)
        if i < last and off == 0 and B.len == 0 and last - 1 <= 7000 then
          B.c, B.cat = { unpack(C, 1, last - 1) }, { unpack(CAT, 1, last - 1) }
          local k = 0
          for j = 1, last - 1 do k = k + #C[j].s end
          B.k, B.len = k, CAT[last]
          i, off = last, CAT[last]
        elseif i < last then
          seg_chunk(B, C[i], off - CAT[i], C[i].len)
          if i + 1 < last then
            -- (the first of the chunks between may join the open chunk;
            -- those after it continue none: taken as they are)
            seg_chunk(B, C[i + 1], 0, C[i + 1].len)
            if i + 2 < last then
              seg_close(B)
              local BC, BCAT, blen, bk, x = B.c, B.cat, B.len, B.k, #B.c
              for j = i + 2, last - 1 do
                local ch = C[j]
                x = x + 1
                BC[x], BCAT[x] = ch, blen
                blen, bk = blen + ch.len, bk + #ch.s
              end
              B.len, B.k = blen, bk
            end
          end
          i = last
          off = CAT[last]
        end
        seg_chunk(B, C[i], off - CAT[i], e - CAT[i])
      end
    elseif op == 58 then -- ':': literal
      if pos + n - 1 > #d then return nil end
      if n > 0 then seg_push(B, d, pos - 1, n) end
      pos = pos + n
    elseif op == 59 and B.len == limit then -- ';': the end
      break
    else
      return nil
    end
  end
  seg_close(B)
  return { c = B.c, cat = B.cat, len = B.len, k = B.k }, commands + B.k, pos
end

-- Calls f(str, o, n) for each segment of segs in turn.
local function each_seg(segs, f)
  for _, ch in ipairs(segs.c) do
    local S, O, N = ch.s, ch.o, ch.n
    for i = 1, #S do f(S[i], O[i], N[i]) end
  end
end

-- The string `prefix` followed by the state of segs: one string made (the
-- base itself when segs are its state and it starts with prefix).
local function join_segs(segs, prefix)
  if segs.k == 0 then return prefix end
  local ch = segs.c[1]
  local s1 = ch.s[1]
  if segs.k == 1 and ch.o[1] == #prefix and ch.n[1] == #s1 - #prefix and string.sub(s1, 1, #prefix) == prefix then
    return s1
  end
  local pieces = {}
  each_seg(segs, function(str, o, n) pieces[#pieces + 1] = { s = str, o = o, n = n } end)
  return join(pieces, prefix)
end

-- The trailer of the entry whose delta ends before position pos of log:
-- its seq, ms since the base, counter, and the position after it; nil
-- when there is none.
local function trailer_at(log, pos)
  local _, e, seq, ms, ctr = string.find(log, '^ (%d+) (%d+) (%x+)\n', pos)
  if not e then return nil end
  return tonumber(seq), tonumber(ms), ctr, e + 1
end

-- The publish counter of a publish id (its last 16 hex digits), as a
-- trailer writes it; and back, with the lead prefix p.
local function counter_of(id)
  local c = string.gsub(string.sub(id, 17), '^0+', '')
  if c == '' then return '0' end
  return c
end
local function id_of(p, ctr)
  return p .. string.rep('0', 16 - #ctr) .. ctr
end

-- The entry of a delta: the delta and its trailer.
local function log_entry(delta, seq, ms, id)
  return delta .. ' ' .. seq .. ' ' .. ms .. ' ' .. counter_of(id) .. '\n'
end

-- Applies the entries of the string log (the log, or its part after the
-- entries already applied) to segs in turn. Returns the segments, the
-- work added to `work` and the entries added to `n`; nil when an entry
-- does not fit (a log edited by hand).
local function apply_log(segs, log, work, n)
  local pos = 1
  while pos <= #log do
    local s2, w, e = apply_segs(segs, log, pos)
    if not s2 then return nil end
    local seq, _, _, nxt = trailer_at(log, e)
    if not seq then return nil end
    segs, work, n, pos = s2, work + w, n + 1, nxt
  end
  return segs, work, n
end

-- A compaction writes the newest state whole as the new base when the
-- log holds more bytes than the state (so the record holds at most about
-- twice the state, and the base written costs the AOF and the replicas at
-- most a delta's bytes again per update, amortised over the updates
-- between compactions), or when applying it would take more than
-- MAX_WORK (commands and segments; a unit costs Redis ~0.1-0.5 us: a
-- copy takes the segments it spans as a run, see apply_segs).
local MAX_WORK = 50000
-- Before that, once the work passes RECOMPOSE_WORK, the log is replaced
-- by the one delta its entries make together (compose below): a write of
-- the pieces the state is made of (a copy command for each piece of the
-- base, the bytes of the others), not of the state, after which reading
-- costs about that one delta. States of more than MAX_COMPOSED pieces are
-- compacted instead. (At 20,000, row 13 of the benchmark composed every
-- ~58 updates, ~110 bytes an update of AOF; 40,000 halves that, and a cold
-- read of MAX_WORK takes less time than 20,000 did before copies were
-- taken as runs.)
local RECOMPOSE_WORK = 40000
local MAX_COMPOSED = 4096

-- A number in Fossil's base-64 digits.
local function delta_digits(v)
  if v == 0 then return '0' end
  local out = {}
  while v > 0 do
    local x = v % 64
    table.insert(out, 1, string.sub(DELTA_DIGITS, x + 1, x + 1))
    v = (v - x) / 64
  end
  return table.concat(out)
end

-- The one delta from the base (the string `base`, whose state starts at
-- offset `off`) to the state of segs, whose checksum is `sum`: a copy for
-- each segment of the base, a literal for each of the deltas'.
local function compose(segs, base, off, sum)
  local parts = { delta_digits(segs.len), '\n' }
  each_seg(segs, function(str, o, n)
    if str == base then
      parts[#parts + 1] = delta_digits(n) .. '@' .. delta_digits(o - off) .. ','
    else
      parts[#parts + 1] = delta_digits(n) .. ':' .. string.sub(str, o + 1, o + n)
    end
  end)
  parts[#parts + 1] = delta_digits(sum) .. ';'
  return table.concat(parts)
end

-- The offset (0-based) at which the state of a state message starts:
-- after "r <publish id>\n" (35 bytes) or "r -\n" (4).
local function state_at(msg)
  return string.find(msg, '\n', 1, true) or #msg
end

-- The kept state of the record at key (rec: its fields, read with the
-- log's tail; log: the log's key): the one kept, while the record still
-- holds it; else the one kept of an earlier entry of the same chain,
-- brought up to date with the entries appended since; else assembled from
-- the record and the log. An entry: channel, seq, pub, len, base (the
-- chain id), n (entries applied to the base), log_at (the log's bytes
-- applied), work (of applying them), base_str (the record's s), base_off
-- (where its state starts), segs, pieces (the rope), joined (the state
-- message "r <pub>\n<state>", once made).
local function rope_of(key, log, rec)
  local e = ropes[key]
  local pub = rec.pub or '-'
  if e and e.channel == rec.channel and e.seq == rec.seq and e.pub == pub then
    return e
  end
  local segs, base, off, n, work, at
  if e and rec.logged and e.channel == rec.channel and e.base == rec.chain and e.seq < rec.seq then
    local more = redis.call('GETRANGE', log, e.log_at, -1)
    segs, work, n = apply_log(e.segs, more, e.work, e.n)
    if segs then base, off, at = e.base_str, e.base_off, e.log_at + #more end
  end
  if not segs then
    base = redis.call('HGET', key, 's') or 'r -\n{}'
    off = state_at(base)
    segs, work, n, at = segs_of(base, off), 0, 0, 0
    if rec.logged then
      local all = redis.call('GET', log) or ''
      segs, work, n = apply_log(segs, all, 0, 0)
      at = #all
      -- A log that does not fit its base (edited by hand): the base stands.
      if not segs then segs, work, n, at = segs_of(base, off), 0, 0, 0 end
    end
  end
  local prefix = 'r ' .. pub .. '\n'
  local s = join_segs(segs, prefix)
  return { channel = rec.channel, seq = rec.seq, pub = pub, len = segs.len, joined = s, base = rec.chain, n = n,
           log_at = at, work = work, base_str = base, base_off = off,
           pieces = segs.len > 0 and { { s = s, o = #prefix, n = segs.len } } or {}, segs = segs }
end

-- What a kept entry costs in the budget: its bytes (twice once joined),
-- an eighth of them for the grids of its pieces (piece_sums) and ~256
-- bytes of Lua tables a piece (the pieces of runs counted too), a segment
-- and an entry.
local function rope_cost(e)
  return e.len * (e.joined and 2 or 1) + math.floor(e.len / 8)
    + 256 * ((e.pieces.leaves or #e.pieces) + e.segs.k + 1)
end

local function forget_rope(key)
  local old = ropes[key]
  if old then
    rope_bytes = rope_bytes - rope_cost(old)
    ropes[key] = nil
  end
end

-- Keeps entry e (see rope_of) of the state just stored or read at key,
-- when it is worth keeping (a state of a few KiB is read again at little
-- cost); drops others (any) when the cache holds more than ROPE_BUDGET.
local function keep_rope(key, e)
  forget_rope(key)
  if e.len < MIN_KEPT then return end
  ropes[key] = e
  rope_bytes = rope_bytes + rope_cost(e)
  if rope_bytes > ROPE_BUDGET then
    for k, other in pairs(ropes) do
      if rope_bytes <= ROPE_BUDGET / 2 then break end
      if k ~= key then
        rope_bytes = rope_bytes - rope_cost(other)
        ropes[k] = nil
      end
    end
  end
end

-- ========================================================================
-- 8. Records of protocol 8 (read, and converted once)
-- ========================================================================

-- Protocol 8 kept the base in field "state", the deltas since it in
-- fields "d1" ... "d<n>", their account in "deltas" ("<n> <len> <bytes>
-- <work> <seq>", valid while its seq is the record's), and the newest
-- state's "seq", "updated_ms" and "pub" (its publish id). A record without
-- "b" and with "seq" is such a record: the read-only functions read it as
-- it is (v8_state), and the first call of this version that writes a
-- stream's record converts it once (v8_convert): its newest state becomes
-- the base ("s", "b"), and the fields of protocol 8 go.
local V8_FIELDS = { 'state', 'base', 'deltas', 'seq', 'updated_ms', 'pub', 'sums' }

-- The number of deltas of a record of protocol 8 (0 without deltas).
local function v8_count(rec)
  local a = rec.v8_deltas
  if a then
    local n, _, _, _, seq = string.match(a, '^(%d+) (%d+) (%d+) (%d+) (%d+)$')
    if n and tonumber(seq) == rec.seq and tonumber(n) > 0 then return tonumber(n) end
  end
  return 0
end

-- The newest state of a record of protocol 8 at key: its base, then its
-- deltas applied in turn (the base alone when one does not fit).
local function v8_state(key, rec)
  local base = redis.call('HGET', key, 'state') or ''
  local n = v8_count(rec)
  if n == 0 then return base end
  local segs = segs_of(base)
  local CHUNK = 500
  for first = 1, n, CHUNK do
    local names = {}
    for i = first, math.min(n, first + CHUNK - 1) do names[#names + 1] = 'd' .. i end
    for _, d in ipairs(redis.call('HMGET', key, unpack(names))) do
      segs = d and apply_segs(segs, d)
      if not segs then return base end
    end
  end
  return join_segs(segs, '')
end

-- Converts the record of protocol 8 at key (rec: its fields) to this
-- version's: one write of its newest state as the base; rec is updated.
local function v8_convert(key, log, rec)
  local n = v8_count(rec)
  local pub = rec.pub or '-'
  local msg = 'r ' .. pub .. '\n' .. v8_state(key, rec)
  rec.b_seq, rec.b_updated, rec.b_pub, rec.chain = rec.seq, rec.updated_ms, rec.pub, pub
  redis.call('HSET', key, 's', msg, 'b', rec.seq .. ' ' .. rec.updated_ms .. ' ' .. pub .. ' ' .. pub)
  local old = {}
  for _, f in ipairs(V8_FIELDS) do old[#old + 1] = f end
  for i = 1, n do
    old[#old + 1] = 'd' .. i
    if #old >= 1000 then
      redis.call('HDEL', key, unpack(old))
      old = {}
    end
  end
  if #old > 0 then redis.call('HDEL', key, unpack(old)) end
  if rec.logged ~= false then redis.call('DEL', log) end
  rec.v8, rec.logged = nil, false
end

-- ========================================================================
-- 9. Applying a delta
-- ========================================================================

-- Applies delta d (without NUL, checked by the caller) to the rope base of
-- a stored state (without NUL). Every copy must cover whole characters of
-- the base, so a delta of whole characters between UTF-8 states makes a
-- UTF-8 state. The checksum follows from the residue sums of the result's
-- pieces. Returns the pieces of the result, its length and its checksum,
-- or nil and an error text; base is left as it was.
local function apply_delta(base, d)
  local limit, pos = delta_int(d, 1)
  if not limit then return nil, 'the delta does not start with the target length' end
  if limit > MAX_STATE then return nil, 'the result of the delta would be larger than 8 MiB' end
  if string.byte(d, pos) ~= 10 then return nil, 'no newline after the target length' end
  pos = pos + 1
  local size = piece_size(limit)
  local starts = base.pieces.starts
  if not starts then
    local at = 0
    starts = {}
    for k, p in ipairs(base.pieces) do
      starts[k] = at
      at = at + p.n
    end
  end
  local pieces, total, commands = {}, 0, 0
  local lit = piece_of(d)
  while true do
    commands = commands + 1
    if commands > MAX_DELTA_COMMANDS + 1 then
      return nil, 'the delta has more than ' .. MAX_DELTA_COMMANDS .. ' commands'
    end
    local n
    n, pos = delta_int(d, pos)
    if not n then return nil, 'a delta command without a number' end
    local op = string.byte(d, pos)
    pos = pos + 1
    if op == 64 then -- '@': copy
      local off
      off, pos = delta_int(d, pos)
      if not off or string.byte(d, pos) ~= 44 then return nil, 'a malformed copy command' end
      pos = pos + 1
      if off + n > base.len then return nil, 'a copy reaches outside the base' end
      local x, e, bp = off, off + n, base.pieces
      local i = x < e and piece_at(starts, x)
      if n > 0 and (continues(base, starts, off, i) or continues(base, starts, off + n)) then
        return nil, 'a copy splits a character of the base'
      end
      if total + n > limit then return nil, 'the delta writes past its target length' end
      if x == 0 and x < e and #pieces == 0 and bp.starts then
        -- (a copy from the start of the state to the start of the result:
        -- the pieces before the one holding its last byte as they are,
        -- copied by unpack in C)
        local j = piece_at(starts, e - 1)
        if j > 1 and j <= 7000 then
          pieces = { unpack(bp, 1, j - 1) }
          x, i = starts[j], j
        end
      end
      while x < e do
        local p, at = bp[i], starts[i]
        local pn = p.n
        if x == at and at + pn <= e and pn <= 2 * size then
          -- (a piece taken whole)
          pieces[#pieces + 1] = p
          x = at + pn
        else
          local b = math.min(e - at, pn)
          add_piece(pieces, p, x - at, b, size)
          x = at + b
        end
        i = i + 1
      end
      total = total + n
    elseif op == 58 then -- ':': literal
      if pos + n - 1 > #d then return nil, 'a literal reaches past the end of the delta' end
      if total + n > limit then return nil, 'the delta writes past its target length' end
      add_piece(pieces, lit, pos - 1, pos - 1 + n, size)
      total = total + n
      pos = pos + n
    elseif op == 59 then -- ';': checksum, the end
      if pos <= #d then return nil, 'bytes after the checksum' end
      if total ~= limit then return nil, 'the result is shorter than the target length' end
      pieces = merge_pieces(pieces, size)
      -- (the sums of the pieces, each at its place, and where each starts,
      -- kept with them for the next delta)
      local s1, s2, s3, s4, at2, starts2, leaves = 0, 0, 0, 0, 0, {}, #pieces
      for k = 1, #pieces do
        local p = pieces[k]
        starts2[k] = at2
        if p.c then leaves = leaves + #p.c end
        local r = p.r or piece_sums(p)
        local sh = at2 % 4
        if sh == 0 then
          s1, s2, s3, s4 = s1 + r[1], s2 + r[2], s3 + r[3], s4 + r[4]
        elseif sh == 1 then
          s1, s2, s3, s4 = s1 + r[4], s2 + r[1], s3 + r[2], s4 + r[3]
        elseif sh == 2 then
          s1, s2, s3, s4 = s1 + r[3], s2 + r[4], s3 + r[1], s4 + r[2]
        else
          s1, s2, s3, s4 = s1 + r[2], s2 + r[3], s3 + r[4], s4 + r[1]
        end
        at2 = at2 + p.n
      end
      pieces.starts, pieces.leaves = starts2, leaves
      if checksum_of({ s1, s2, s3, s4 }) ~= n then return nil, 'the checksum of the result does not match' end
      return pieces, limit, n
    else
      return nil, 'the delta ends without a checksum or has an unknown command'
    end
  end
end


-- ========================================================================
-- 10. Arguments and the common entry
-- ========================================================================

-- A stream name: 1-256 bytes of UTF-8 without control characters (C0,
-- DEL, C1) or bidirectional formatting characters (Unicode's Bidi_Control:
-- U+061C, U+200E-U+200F, U+202A-U+202E, U+2066-U+2069), which could make
-- one name look like another on an operator's screen. Returns an error
-- text or nil.
local function bad_name(name)
  if #name < 1 or #name > MAX_NAME then return 'the stream name must be 1-256 bytes' end
  if not utf8_valid(name) then return 'the stream name is not valid UTF-8' end
  if string.find(name, '%c') or string.find(name, '\194[\128-\159]') then
    return 'the stream name contains a control character'
  end
  if string.find(name, '\216\156') or string.find(name, '\226\128[\142\143\170-\174]')
      or string.find(name, '\226\129[\166-\169]') then
    return 'the stream name contains a bidirectional formatting character'
  end
  return nil
end

local function is_hex(s, len)
  return type(s) == 'string' and #s == len and not string.find(s, '[^0-9a-f]')
end

-- A whole number in [lo, hi] written in decimal digits, or nil.
local function integer(s, lo, hi)
  if type(s) ~= 'string' or not string.match(s, '^%d+$') or #s > 12 then return nil end
  local v = tonumber(s)
  if v < lo or v > hi then return nil end
  return v
end

-- Common entry. Checks the protocol version, the request nonce, the
-- number of arguments, the keys (`shape.keys`: 'record' for a stream's
-- record "stream:<valid name>", 'index' for exactly "streams", 'log' for
-- the log "msl:<name>" of the record's name) and the body (`shape.fields`
-- fields, the last argument). Returns the nonce and the fields, or nil,
-- nil and an error reply; nothing is changed before.
local function enter(keys, args, shape)
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
  if #args ~= shape.args then
    return nil, nil, fail('MSARG', nonce, 'expected ' .. shape.args .. ' arguments, got ' .. #args)
  end
  if #keys ~= #shape.keys then
    return nil, nil, fail('MSARG', nonce, 'expected ' .. #shape.keys .. ' keys, got ' .. #keys)
  end
  for i, kind in ipairs(shape.keys) do
    local key = keys[i]
    if kind == 'index' then
      if key ~= INDEX then return nil, nil, fail('MSARG', nonce, 'key ' .. i .. ' must be "' .. INDEX .. '"') end
    elseif kind == 'log' then
      if key ~= LOG_PREFIX .. string.sub(keys[1], #RECORD_PREFIX + 1) then
        return nil, nil, fail('MSARG', nonce, 'key ' .. i .. ' must be "' .. LOG_PREFIX .. '<stream name>", the name of key 1')
      end
    else
      if string.sub(key, 1, #RECORD_PREFIX) ~= RECORD_PREFIX then
        return nil, nil, fail('MSARG', nonce, 'key ' .. i .. ' must be "' .. RECORD_PREFIX .. '<stream name>"')
      end
      local why = bad_name(string.sub(key, #RECORD_PREFIX + 1))
      if why then return nil, nil, fail('MSARG', nonce, why) end
    end
  end
  if not shape.fields then return nonce, {} end
  local f = fields(args[#args], shape.fields)
  if not f then return nil, nil, fail('MSARG', nonce, 'malformed request body') end
  return nonce, f
end

-- Checks a derived password key and a derived leader code key (64
-- lowercase hex digits each) and a lead token (32); any may be nil (not
-- in the request). Returns an error text or nil. (The limits of the
-- secrets themselves, password 0-1024 and leader code 1-1024 bytes, are
-- the client's: the functions never see a secret.)
local function bad_secrets(pw, code, token)
  if pw and not is_hex(pw, 64) then return 'the derived password key must be 64 lowercase hex digits' end
  if code and not is_hex(code, 64) then return 'the derived leader code key must be 64 lowercase hex digits' end
  if token and not is_hex(token, 32) then return 'the lead token must be 32 lowercase hex digits' end
  return nil
end

-- Checks a heartbeat interval in ms (50-3600000) and a TTL in seconds (0,
-- or at least two intervals). Returns hb, ttl or nil and an error text.
local function timing(hb_s, ttl_s)
  local hb = integer(hb_s, 50, 3600000)
  if not hb then return nil, 'the heartbeat interval must be 50-3600000 ms' end
  if ttl_s == nil then return hb end
  local ttl = integer(ttl_s, 0, 4294967295)
  if not ttl then return nil, 'the TTL must be 0-4294967295 s' end
  if ttl > 0 and ttl * 1000 < 2 * hb then return nil, 'the TTL is shorter than two heartbeat intervals' end
  return hb, ttl
end

-- ========================================================================
-- 11. Records and the throttling of guesses
-- ========================================================================

-- The newest state's seq, updated_ms and publish id (nil for none), the
-- base's (b: field b), and whether the log has entries, from field b, p
-- and the log's last TAIL bytes; nil when b is malformed.
local function newest_of(b, p, tail)
  local seq, updated, pub, chain = string.match(b or '', '^(%d+) (%d+) (%S+) (%S+)$')
  if not seq then return nil end
  local st = { b_seq = tonumber(seq), b_updated = tonumber(updated), b_pub = pub ~= '-' and pub or nil,
               chain = chain, logged = false }
  st.seq, st.updated_ms, st.pub = st.b_seq, st.b_updated, st.b_pub
  if tail and tail ~= '' then
    local s, ms, ctr = string.match(tail, '; (%d+) (%d+) (%x+)\n$')
    if s and p and #ctr <= 16 then
      st.seq, st.updated_ms, st.pub, st.logged = tonumber(s), st.b_updated + tonumber(ms), id_of(p, ctr), true
    else
      -- (a log that is not one: left to the writes to replace)
      st.logged = true
    end
  end
  return st
end

-- Loads the record at key (and, with log, the newest state's seq,
-- updated_ms and publish id from the log's tail); returns the fields
-- table or nil. A record of protocol 8 (section 8) is read as it is, with
-- rec.v8 set.
local function load(key, log)
  local v = redis.call('HMGET', key, 'pw', 'code', 'salt', 'channel', 'b', 'hb_ms', 'ttl', 'p', 'heard_ms',
    'fails', 'fail_at', 'locked_until', 'locks', 'kdf', 'iter', 'lead', 'seq', 'updated_ms', 'pub', 'deltas')
  -- A record without kdf (written by protocol 3), or with a channel the
  -- client chose (32 hex digits, protocols 4-6: not proven to be the
  -- stream's own), is no stream.
  if not v[1] or not v[14] or not v[4] or #v[4] ~= 40 then return nil end
  local rec = { pw = v[1], code = v[2], salt = v[3], channel = v[4],
                hb_ms = v[6], ttl = tonumber(v[7]) or 0, p = v[8], heard_ms = tonumber(v[9]) or 0,
                fails = tonumber(v[10]) or 0, fail_at = tonumber(v[11]) or 0,
                locked_until = tonumber(v[12]) or 0, locks = tonumber(v[13]) or 0,
                kdf = v[14], iter = tonumber(v[15]), lead = v[16] }
  if v[5] then
    local st = newest_of(v[5], v[8], log and redis.call('GETRANGE', log, -TAIL, -1))
    if not st then return nil end
    for k, x in pairs(st) do rec[k] = x end
  elseif v[17] then
    rec.v8, rec.seq, rec.updated_ms, rec.pub, rec.v8_deltas = true, tonumber(v[17]), tonumber(v[18]) or 0, v[19], v[20]
    if not rec.seq then return nil end
  else
    return nil
  end
  return rec
end

local function not_found(nonce)
  return fail('MSNOTFOUND', nonce, 'no such stream')
end

-- The expiry of a stream with a TTL: the record (and the log) expire
-- between ttl and 17/16 ttl after the leader was last heard (a publish, a
-- heartbeat, a reconnect), never earlier. The expiry is set to 17/16 ttl
-- only when less than ttl is left, so that most calls write nothing for it.
local function expiry_ms(ttl)
  return ttl * 1000 + math.floor(ttl * 1000 / 16)
end
local function touch(key, log, rec, new_log)
  if rec.ttl <= 0 then return end
  local left = redis.call('PTTL', key)
  if left < rec.ttl * 1000 then
    local ms = expiry_ms(rec.ttl)
    redis.call('PEXPIRE', key, ms)
    redis.call('PEXPIRE', log, ms)
  elseif new_log then
    -- A log just made takes the record's expiry.
    redis.call('PEXPIRE', log, left)
  end
end

-- Guessing is throttled per stream. Every wrong password or leader code is
-- counted in the record; the 5th within a second locks the stream's secret
-- checks for 250 ms, doubling with each lock up to 4 s (forgotten after a
-- minute without one). While locked, every check is refused with
-- MSTHROTTLED, right secrets included (else the lock would tell nothing
-- apart): one client guesses about one secret a second instead of
-- thousands, and a follower with the right password waits 4 s at most.
local THROTTLE_FAILS = 5
local THROTTLE_WINDOW_MS = 1000
local LOCK_FIRST_MS = 250
local LOCK_MAX_MS = 4000
local LOCK_FORGET_MS = 60000

-- Checks the derived key `secret` against the hash `stored` of record `rec` at
-- `key`; returns nil when it matches, else the error reply (`code`,
-- `text`) after counting the failure, or MSTHROTTLED while locked.
local function verify(nonce, key, rec, secret, stored, code, text)
  local now = now_ms()
  if now < rec.locked_until then
    return fail('MSTHROTTLED', nonce, 'too many wrong passwords or leader codes for this stream; retry in ' ..
      (rec.locked_until - now) .. ' ms')
  end
  if hash(secret) == stored then return nil end
  local fails, at = rec.fails, rec.fail_at
  if now - at > THROTTLE_WINDOW_MS then fails, at = 0, now end
  fails = fails + 1
  if fails >= THROTTLE_FAILS then
    local locks = rec.locks
    if now - rec.locked_until > LOCK_FORGET_MS then locks = 0 end
    local lock = math.min(LOCK_FIRST_MS * 2 ^ locks, LOCK_MAX_MS)
    redis.call('HSET', key, 'fails', 0, 'fail_at', now, 'locked_until', now + lock, 'locks', locks + 1)
  else
    redis.call('HSET', key, 'fails', fails, 'fail_at', at)
  end
  return fail(code, nonce, text)
end

-- Loads the record of a caller who knows the channel (given by
-- ms_connect to holders of the password): a 128-bit secret, so no guess
-- is worth throttling and the check needs no write (read-only, so it runs
-- on a replica too).
local function load_by_channel(nonce, key, channel, log)
  local rec = load(key, log)
  if not rec or rec.channel ~= channel then return nil, not_found(nonce) end
  return rec
end

local function not_leader(nonce)
  return fail('MSNOTLEADER', nonce, 'not the current lead token of this stream (taken over by a later ms_reconnect?)')
end

-- Loads the record of a leader and checks its channel, then its lead
-- token: a 128-bit secret, compared without throttling, so that nobody
-- guessing secrets can lock the leader out of its own stream. A record
-- of protocol 8 is converted (the leader's calls write the record).
local function load_leader(nonce, key, token, channel, log)
  local rec, e = load_by_channel(nonce, key, channel, log)
  if not rec then return nil, e end
  if hash(token) ~= rec.lead then return nil, not_leader(nonce) end
  if rec.v8 then v8_convert(key, log, rec) end
  return rec
end

-- ========================================================================
-- 12. The index of live streams and the quotas it counts
-- ========================================================================

-- The index "streams" is a hash: the name of each live stream -> the bytes
-- of its stored state, and the field TOTAL (a NUL byte: never a name) ->
-- their sum, so that the quotas cost one read. A name whose record expired
-- stays until ms_list or a quota check finds it gone.
local TOTAL = '\0'
-- Index entries a call of ms_list or ms_subscribers looks at (about: HSCAN's
-- COUNT), so that one call costs Redis about the same at any number of
-- streams; a client pages through with the cursor.
local LIST_PAGE = 200

-- Whether the index is this version's (a hash, or none yet). An index of
-- an earlier version (a set, whose names are records that are no stream to
-- this version) is dropped by a call that may write.
local function index_ready(index, writable)
  local t = redis.call('TYPE', index)['ok']
  if t == 'hash' or t == 'none' then return true end
  if writable then
    redis.call('DEL', index)
    return true
  end
  return false
end

-- The index counts a state's bytes rounded up to whole KiB, so that it is
-- written only when a state crosses a KiB (a delta that changes the
-- state's length by a few bytes writes nothing there); the quota of all
-- states errs by less than 1 KiB a stream.
local function counted(bytes)
  return math.ceil(bytes / 1024) * 1024
end

-- Counts `bytes` of state (rounded) for stream `name` in the index (nil:
-- removes the name), keeping the total.
local function count_bytes(index, name, bytes)
  local had = redis.call('HGET', index, name)
  local old = tonumber(had or 0)
  if bytes then bytes = counted(bytes) end
  -- (Written only when it changes.)
  if not bytes then
    if had then redis.call('HDEL', index, name) end
  elseif not had or old ~= bytes then
    redis.call('HSET', index, name, bytes)
  end
  local change = (bytes or 0) - old
  if change ~= 0 then redis.call('HINCRBY', index, TOTAL, change) end
end

-- Live streams and bytes of state counted in the index.
local function usage(index)
  local n = redis.call('HLEN', index) - redis.call('HEXISTS', index, TOTAL)
  return n, tonumber(redis.call('HGET', index, TOTAL) or 0)
end

-- Drops the names of one page of the index whose record expired; returns
-- the next cursor (kept here, so that pages come in turn).
local prune_cursor = '0'
local function prune(index)
  local page = redis.call('HSCAN', index, prune_cursor, 'COUNT', LIST_PAGE)
  prune_cursor = page[1]
  local kv = page[2]
  for i = 1, #kv, 2 do
    if kv[i] ~= TOTAL and redis.call('EXISTS', RECORD_PREFIX .. kv[i]) == 0 then
      count_bytes(index, kv[i], nil)
    end
  end
end

-- Whether stream `name` (`new`: not counted yet) may hold a state of
-- `bytes` within the quotas; nil, or why not. Over a quota, one page of
-- expired names is dropped first and the quota looked at again.
local function over_quota(index, name, bytes, new)
  if bytes > QUOTA_STATE_BYTES then
    return 'the state (' .. bytes .. ' bytes) is over the quota of one stream (' .. QUOTA_STATE_BYTES .. ' bytes)'
  end
  for attempt = 1, 2 do
    -- (The count of streams matters to a new stream only.)
    local n, total
    if new then
      n, total = usage(index)
    else
      n, total = 0, tonumber(redis.call('HGET', index, TOTAL) or 0)
    end
    local old = tonumber(redis.call('HGET', index, name) or 0)
    local streams_ok = not new or old > 0 or n < QUOTA_STREAMS
    local bytes_ok = total - old + counted(bytes) <= QUOTA_TOTAL_BYTES
    if streams_ok and bytes_ok then return nil end
    if attempt == 2 then
      if not streams_ok then return 'the deployment holds its most streams (quota: ' .. QUOTA_STREAMS .. ')' end
      return 'the states of all streams would be over their quota (' .. QUOTA_TOTAL_BYTES .. ' bytes)'
    end
    prune(index)
  end
end

-- ========================================================================
-- 13. The functions of a stream
-- ========================================================================

-- The state of a stream before its first publish, as a state message.
local INITIAL = 'r -\n{}'
-- Length of a full publish's "r <publish id>\n".
local PREFIX_LEN = 35

-- ms_start KEYS: record, index, log  ARGV: version, nonce, hb_ms, ttl, kdf, iterations,
--   body[pw key, code key, salt, channel seed, lead token] -> [nonce]
-- The channel is channel_of(seed, name): the client computes it too.
redis.register_function('ms_start', function(keys, args)
  local nonce, f, err = enter(keys, args, { keys = { 'record', 'index', 'log' }, args = 7, fields = 5 })
  if not nonce then return err end
  local why = bad_secrets(f[1], f[2], f[5])
  if why then return fail('MSARG', nonce, why) end
  if not is_hex(f[3], 32) or not is_hex(f[4], 32) then
    return fail('MSARG', nonce, 'the salt and the channel seed must be 32 lowercase hex digits')
  end
  local hb, ttl = timing(args[3], args[4])
  if not hb then return fail('MSARG', nonce, ttl) end
  if args[5] ~= KDF then return fail('MSARG', nonce, 'the key derivation must be ' .. KDF) end
  local iter = integer(args[6], MIN_ITERATIONS, MAX_ITERATIONS)
  if not iter then
    return fail('MSARG', nonce, 'the key derivation needs ' .. MIN_ITERATIONS .. '-' .. MAX_ITERATIONS .. ' iterations')
  end
  local key = keys[1]
  if redis.call('EXISTS', key) == 1 then return fail('MSEXISTS', nonce, 'the stream name is taken') end
  local name = string.sub(key, #RECORD_PREFIX + 1)
  index_ready(keys[2], true)
  local over = over_quota(keys[2], name, #INITIAL - 4, true)
  if over then return fail('MSQUOTA', nonce, over) end
  local now = now_ms()
  redis.call('HSET', key, 'name', name, 'kdf', KDF, 'iter', iter, 'salt', f[3], 'pw', hash(f[1]),
    'code', hash(f[2]), 'lead', hash(f[5]), 'channel', channel_of(f[4], name), 's', INITIAL, 'b', '0 ' .. now .. ' - -',
    'hb_ms', hb, 'ttl', ttl, 'heard_ms', now)
  -- A log left of an earlier stream of this name (whose record's expiry
  -- was edited by hand) is no part of this one. (A DEL that deletes
  -- nothing writes nothing.)
  redis.call('DEL', keys[3])
  if ttl > 0 then redis.call('PEXPIRE', key, expiry_ms(ttl)) end
  forget_rope(key)
  count_bytes(keys[2], name, #INITIAL - 4)
  return { nonce }
end)

-- ms_reconnect KEYS: record, index, log  ARGV: version, nonce, hb_ms, ttl,
--   body[pw key, code key, lead token] -> [nonce, sealed channel, seq]
-- The new lead token replaces the previous lead's. The channel is sealed
-- with the leader code's key.
redis.register_function('ms_reconnect', function(keys, args)
  local nonce, f, err = enter(keys, args, { keys = { 'record', 'index', 'log' }, args = 5, fields = 3 })
  if not nonce then return err end
  local why = bad_secrets(f[1], f[2], f[3])
  if why then return fail('MSARG', nonce, why) end
  local hb, ttl = timing(args[3], args[4])
  if not hb then return fail('MSARG', nonce, ttl) end
  local key, log = keys[1], keys[3]
  local rec = load(key, log)
  if not rec then return not_found(nonce) end
  local e = verify(nonce, key, rec, f[1], rec.pw, 'MSBADPASSWORD', 'wrong password')
    or verify(nonce, key, rec, f[2], rec.code, 'MSBADCODE', 'wrong leader code')
  if e then return e end
  if rec.v8 then v8_convert(key, log, rec) end
  rec.ttl = ttl
  redis.call('HSET', key, 'hb_ms', hb, 'ttl', rec.ttl, 'lead', hash(f[3]), 'heard_ms', now_ms())
  if rec.ttl > 0 then
    redis.call('PEXPIRE', key, expiry_ms(rec.ttl))
    redis.call('PEXPIRE', log, expiry_ms(rec.ttl))
  else
    redis.call('PERSIST', key)
    redis.call('PERSIST', log)
  end
  index_ready(keys[2], true)
  local name = string.sub(key, #RECORD_PREFIX + 1)
  -- The index's count stands while the name is there (every write of the
  -- state keeps it); a name dropped from it is counted again.
  if redis.call('HEXISTS', keys[2], name) == 0 then
    local kept = rope_of(key, log, rec)
    keep_rope(key, kept)
    count_bytes(keys[2], name, kept.len)
  end
  return { nonce, seal(rec.channel, f[2], nonce), rec.seq }
end)

-- ms_connect KEYS: record  ARGV: version, nonce, body[pw key]
--   -> [nonce, sealed channel, hb_ms, on_replicas]
-- A write (wrong passwords are counted), so FCALL, not FCALL_RO. The
-- channel is sealed with the password's key. on_replicas: 1 when replicas
-- carry the channel's messages (CHANNEL_ON_REPLICAS), 0 when only the
-- primary does (a follower then subscribes on the primary).
redis.register_function('ms_connect', function(keys, args)
  local nonce, f, err = enter(keys, args, { keys = { 'record' }, args = 3, fields = 1 })
  if not nonce then return err end
  local why = bad_secrets(f[1], nil, nil)
  if why then return fail('MSARG', nonce, why) end
  local rec = load(keys[1])
  if not rec then return not_found(nonce) end
  local e = verify(nonce, keys[1], rec, f[1], rec.pw, 'MSBADPASSWORD', 'wrong password')
  if e then return e end
  return { nonce, seal(rec.channel, f[1], nonce), tonumber(rec.hb_ms), CHANNEL_ON_REPLICAS and 1 or 0 }
end)

-- ms_params KEYS: record  ARGV: version, nonce -> [nonce, kdf, iterations, salt]
-- What a client needs to derive its keys before ms_connect or
-- ms_reconnect. Nothing secret (the salt only makes each stream's keys its
-- own), so it asks for no secret and counts nothing: read-only, it runs
-- on a replica too.
redis.register_function{ function_name = 'ms_params', flags = { 'no-writes' }, callback = function(keys, args)
  local nonce, _, err = enter(keys, args, { keys = { 'record' }, args = 2 })
  if not nonce then return err end
  local rec = load(keys[1])
  if not rec then return not_found(nonce) end
  return { nonce, rec.kdf, rec.iter, rec.salt }
end }

-- ms_snapshot KEYS: record, log  ARGV: version, nonce, have, body[channel]
--   -> [nonce, seq, updated_ms, hb_ms, updated_age_ms, heard_age_ms, state message or ""]
-- have: "-", or "<seq>:<updated_ms>" of the state the caller holds; when
-- that is the newest state, the state message is "" and the state is not
-- read. The state message is "r <publish id>\n<state>" ("r -\n{}" before
-- the first publish), the form of the channel's "r" message. The ages
-- are Redis' clock (TIME) minus updated_ms of the newest state, and
-- minus when the leader was last heard (its last heartbeat, start or
-- reconnect, or its newest state), at least 0: a caller places them on
-- its own clock without comparing clocks.
redis.register_function{ function_name = 'ms_snapshot', flags = { 'no-writes' }, callback = function(keys, args)
  local nonce, f, err = enter(keys, args, { keys = { 'record', 'log' }, args = 4, fields = 1 })
  if not nonce then return err end
  local have = args[3]
  if have ~= '-' and not string.match(have, '^%d%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?:%d%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?$') then
    return fail('MSARG', nonce, 'malformed have ("-" or "<seq>:<updated_ms>")')
  end
  local key, log = keys[1], keys[2]
  local rec, e = load_by_channel(nonce, key, f[1], log)
  if not rec then return e end
  local now = now_ms()
  local heard = math.max(rec.heard_ms, rec.updated_ms)
  local state
  if have == rec.seq .. ':' .. rec.updated_ms then
    state = ''
  elseif rec.v8 then
    state = 'r ' .. (rec.pub or '-') .. '\n' .. v8_state(key, rec)
  else
    local kept = ropes[key]
    if not rec.logged and not (kept and kept.joined and kept.channel == rec.channel and kept.seq == rec.seq
        and kept.pub == (rec.pub or '-')) then
      -- The base is the newest state: answered as stored.
      state = redis.call('HGET', key, 's') or INITIAL
    else
      -- The newest state: kept (joined once for all the snapshots of this
      -- seq), else assembled from the record and the log and kept.
      kept = rope_of(key, log, rec)
      if not kept.joined then
        kept.joined = join(kept.pieces, 'r ' .. kept.pub .. '\n')
        if ropes[key] == kept then rope_bytes = rope_bytes + kept.len end
      end
      if ropes[key] ~= kept then keep_rope(key, kept) end
      state = kept.joined
    end
  end
  return { nonce, rec.seq, rec.updated_ms, tonumber(rec.hb_ms), math.max(0, now - rec.updated_ms),
           math.max(0, now - heard), state }
end }

-- ms_publish KEYS: record, index, log  ARGV: version, nonce, publish_id, floor, kind, base_seq, base_id,
--   tag, sealed lead, body -> [nonce, seq, stored publish id]
-- Stores the state and broadcasts it in one atomic call. The publish id is
-- 32 lowercase hex digits: a random token of the lead (16), then the
-- lead's publish counter (16, zero-padded). A publish whose id has the
-- token of the last stored one and is not greater (a repeat of a request
-- whose response was lost, or an abandoned older request arriving late)
-- answers the stored seq and id and stores and broadcasts nothing: a
-- stream never goes back to an older state of the same lead. The id in the
-- reply is that of the state now stored, so it is never below the request's.
-- The floor is the highest seq a follower may have seen from this lead: the
-- state is stored with a seq above both the record's and the floor, so that
-- after a failover that lost writes, seq still never goes back.
-- tag: channel_tag of the stream's channel; sealed lead: the lead token,
-- sealed for this request (open_lead). The body is not framed:
-- kind "full" (base_seq and base_id "-"): "r <publish id>\n<state>", stored
-- as the base and broadcast as received after the header
-- "s <seq> <updated_ms> <publish id>" (no string of the state's size is
-- made). Kind "delta": a delta against the stored state, applied only when
-- that is the state of seq base_seq and publish id base_id (else MSBASE:
-- the leader sends the state in full); the delta is appended to the log
-- (section 7: its result is verified, the state is written whole only by
-- a compaction) and broadcast as "d <seq> <base_seq> <updated_ms>\n<delta>".
redis.register_function('ms_publish', function(keys, args)
  local nonce, _, err = enter(keys, args, { keys = { 'record', 'index', 'log' }, args = 10 })
  if not nonce then return err end
  local id = args[3]
  if not is_hex(id, 32) then
    return fail('MSARG', nonce, 'malformed publish id (32 lowercase hex digits: lead token, then counter)')
  end
  local floor = integer(args[4], 0, MAX_SEQ)
  if not floor then return fail('MSARG', nonce, 'malformed seq floor (an integer, 0 to 999999999999)') end
  local kind, base_seq, base_id = args[5], nil, nil
  if kind == 'full' then
    if args[6] ~= '-' or args[7] ~= '-' then
      return fail('MSARG', nonce, 'a full publish takes "-" as base seq and base publish id')
    end
  elseif kind == 'delta' then
    base_seq = integer(args[6], 0, MAX_SEQ)
    base_id = args[7]
    if not base_seq or not (base_id == '-' or is_hex(base_id, 32)) then
      return fail('MSARG', nonce, 'malformed delta base (a seq, and a publish id or "-")')
    end
  else
    return fail('MSARG', nonce, 'the publish kind must be "full" or "delta"')
  end
  local tag, sealed, body = args[8], args[9], args[10]
  if not is_hex(tag, 16) then return fail('MSARG', nonce, 'malformed channel tag (16 lowercase hex digits)') end
  if not is_hex(sealed, 32) then return fail('MSARG', nonce, 'malformed sealed lead token (32 lowercase hex digits)') end
  local what = kind == 'full' and 'state' or 'delta'
  if #body - (kind == 'full' and PREFIX_LEN or 0) > MAX_STATE then
    return fail('MSARG', nonce, 'the ' .. what .. ' is larger than 8 MiB')
  end
  -- The credentials before any work in proportion to the body's size.
  local key, log = keys[1], keys[3]
  local rec = load(key, log)
  if not rec or channel_tag(rec.channel) ~= tag then return not_found(nonce) end
  if hash(open_lead(sealed, rec.lead, id, kind, args[6], args[7], args[4], #body)) ~= rec.lead then
    return not_leader(nonce)
  end
  if kind == 'full' and string.sub(body, 1, PREFIX_LEN) ~= 'r ' .. id .. '\n' then
    return fail('MSARG', nonce, 'the body of a full publish must start with "r <publish id>\\n", its own publish id')
  end
  if string.find(body, '\0', 1, true) then return fail('MSARG', nonce, 'the ' .. what .. ' contains a NUL character') end
  -- Not scanned for UTF-8 validity: any scan of a string in this Lua costs
  -- ~10 ns a byte (0.1 s for 8 MiB, several seconds the way utf8_valid
  -- works on mixed text) while every other client waits. Only the
  -- stream's leader gets here; a state it stores that is not UTF-8 can be
  -- read by no follower (Webdis drops it from channel messages and
  -- replies), which it could do to its stream anyway by stopping it.
  if rec.v8 then v8_convert(key, log, rec) end
  if rec.pub and string.sub(rec.pub, 1, 16) == string.sub(id, 1, 16) and id <= rec.pub then
    return { nonce, rec.seq, rec.pub }
  end
  local len, kept, pieces, sum = #body - PREFIX_LEN, nil, nil, nil
  if kind == 'delta' then
    if rec.seq ~= base_seq or (rec.pub or '-') ~= base_id then
      return fail('MSBASE', nonce, 'the stored state (seq ' .. rec.seq .. ') is not the base of the delta; send it in full')
    end
    kept = rope_of(key, log, rec)
    pieces, len, sum = apply_delta(kept, body)
    if not pieces then return fail('MSARG', nonce, 'malformed delta: ' .. len) end
  end
  index_ready(keys[2], true)
  local name = string.sub(key, #RECORD_PREFIX + 1)
  local over = over_quota(keys[2], name, len, false)
  if over then return fail('MSQUOTA', nonce, over) end
  count_bytes(keys[2], name, len)
  local seq = math.max(rec.seq, floor) + 1
  -- (Never before the base: a trailer counts ms since it.)
  local updated = math.max(now_ms(), rec.b_updated)
  local lead = string.sub(id, 1, 16)
  -- The record (docs/PROTOCOL.md, "The record"): a delta is appended to
  -- the log, unless a composition or a compaction is due; a full state,
  -- or a compaction, is written whole as the new base.
  local entry, new_log = nil, false
  if kind == 'delta' then
    local segs, w = apply_segs(kept.segs, body)
    local work, bytes = kept.work, kept.log_at
    local composed, cw
    if segs and work + w > RECOMPOSE_WORK and segs.k <= MAX_COMPOSED then
      -- The entries since the base, composed into one (see "The record").
      composed = compose(segs, kept.base_str, kept.base_off, sum)
      cw = select(2, apply_segs(segs_of(kept.base_str, kept.base_off), composed)) or MAX_WORK
    end
    local line = log_entry(composed or body, seq, updated - rec.b_updated, id)
    if not segs or (composed and (#composed > len or cw > RECOMPOSE_WORK / 2))
        or (not composed and (work + w > MAX_WORK or bytes + #line > len)) then
      -- Compaction: the newest state is the new base.
      local msg = join(pieces, 'r ' .. id .. '\n')
      redis.call('HSET', key, 's', msg, 'b', seq .. ' ' .. updated .. ' ' .. id .. ' ' .. id)
      if rec.logged then redis.call('DEL', log) end
      entry = { pieces = pieces, segs = segs_of(msg, PREFIX_LEN), joined = msg, base_str = msg, base_off = PREFIX_LEN,
                base = id, n = 0, log_at = 0, work = 0 }
    elseif composed then
      -- (A new chain: a kept state of an earlier entry no longer matches
      -- the log's bytes.)
      redis.call('SET', log, line, 'KEEPTTL')
      redis.call('HSET', key, 'b', rec.b_seq .. ' ' .. rec.b_updated .. ' ' .. (rec.b_pub or '-') .. ' ' .. id, 'p', lead)
      entry = { pieces = pieces, segs = segs, base = id, n = 1, log_at = #line, work = cw,
                base_str = kept.base_str, base_off = kept.base_off }
    else
      redis.call('APPEND', log, line)
      if rec.p ~= lead then redis.call('HSET', key, 'p', lead) end
      entry = { pieces = pieces, segs = segs, base = kept.base, n = kept.n + 1, log_at = bytes + #line,
                work = work + w, base_str = kept.base_str, base_off = kept.base_off }
      new_log = not rec.logged
    end
  else
    redis.call('HSET', key, 's', body, 'b', seq .. ' ' .. updated .. ' ' .. id .. ' ' .. id)
    if rec.logged then redis.call('DEL', log) end
    entry = { pieces = len > 0 and { { s = body, o = PREFIX_LEN, n = len } } or {}, segs = segs_of(body, PREFIX_LEN),
              joined = body, base_str = body, base_off = PREFIX_LEN, base = id, n = 0, log_at = 0, work = 0 }
  end
  entry.channel, entry.seq, entry.pub, entry.len = rec.channel, seq, id, len
  keep_rope(key, entry)
  touch(key, log, rec, new_log)
  if kind == 'delta' then
    broadcast(rec.channel, 'd ' .. seq .. ' ' .. rec.seq .. ' ' .. updated .. '\n' .. body)
  else
    -- The header, then the body as received: followers pair them by the
    -- publish id, in either order.
    broadcast(rec.channel, 's ' .. seq .. ' ' .. updated .. ' ' .. id)
    broadcast(rec.channel, body)
  end
  return { nonce, seq, id }
end)

-- ms_heartbeat KEYS: record, log  ARGV: version, nonce, hb_ms, body[lead token, channel]
--   -> [nonce, seq, stored publish id ("" before the first publish)]
-- The leader compares them with its last stored publish: after a failover
-- that lost it, the leader publishes its newest state again.
redis.register_function('ms_heartbeat', function(keys, args)
  local nonce, f, err = enter(keys, args, { keys = { 'record', 'log' }, args = 4, fields = 2 })
  if not nonce then return err end
  local hb, why = timing(args[3], nil)
  why = why or bad_secrets(nil, nil, f[1])
  if why then return fail('MSARG', nonce, why) end
  local rec, e = load_leader(nonce, keys[1], f[1], f[2], keys[2])
  if not rec then return e end
  -- The leader was heard: its time is kept for ms_list and snapshots (is
  -- the leader there?), and the TTL starts again.
  redis.call('HSET', keys[1], 'heard_ms', now_ms())
  touch(keys[1], keys[2], rec)
  broadcast(rec.channel, 'h ' .. hb)
  return { nonce, rec.seq, rec.pub or '' }
end)

-- ms_probe KEYS: record  ARGV: version, nonce, probe, body[channel] -> [nonce, receivers]
-- Lets a follower check that its subscription works: "p <probe>" is
-- published on the channel; receivers is the number of subscriptions of
-- this node (the primary) Redis delivered it to (0: the caller's own
-- subscription, when it is on the primary, is not there).
redis.register_function('ms_probe', function(keys, args)
  local nonce, f, err = enter(keys, args, { keys = { 'record' }, args = 4, fields = 1 })
  if not nonce then return err end
  local token = args[3]
  if #token < 1 or #token > 64 or string.find(token, '[^%w]') then
    return fail('MSARG', nonce, 'malformed probe token (1-64 letters and digits)')
  end
  local rec, e = load_by_channel(nonce, keys[1], f[1])
  if not rec then return e end
  local n = broadcast(rec.channel, 'p ' .. token)
  return { nonce, n }
end)

-- ms_stop KEYS: record, index, log  ARGV: version, nonce, body[lead token, channel] -> [nonce]
redis.register_function('ms_stop', function(keys, args)
  local nonce, f, err = enter(keys, args, { keys = { 'record', 'index', 'log' }, args = 3, fields = 2 })
  if not nonce then return err end
  local why = bad_secrets(nil, nil, f[1])
  if why then return fail('MSARG', nonce, why) end
  local rec, e = load_by_channel(nonce, keys[1], f[2])
  if not rec then return e end
  if hash(f[1]) ~= rec.lead then return not_leader(nonce) end
  redis.call('DEL', keys[1], keys[3])
  forget_rope(keys[1])
  index_ready(keys[2], true)
  count_bytes(keys[2], string.sub(keys[1], #RECORD_PREFIX + 1), nil)
  broadcast(rec.channel, 'e')
  return { nonce }
end)

-- ========================================================================
-- 14. The functions of the index
-- ========================================================================

-- One page of the index from `cursor` (HSCAN's, decimal): the next cursor
-- and the names on the page; nil and an error reply for a bad cursor.
local function list_page(nonce, index, cursor, writable)
  if type(cursor) ~= 'string' or not string.match(cursor, '^%d+$') or #cursor > 20 then
    return nil, fail('MSARG', nonce, 'malformed list cursor (decimal digits, "0" to begin)')
  end
  if not index_ready(index, writable) then return { '0', {} } end
  local page = redis.call('HSCAN', index, cursor, 'COUNT', LIST_PAGE)
  local names = {}
  for i = 1, #page[2], 2 do
    if page[2][i] ~= TOTAL then names[#names + 1] = page[2][i] end
  end
  return { page[1], names }
end

-- ms_list KEYS: index  ARGV: version, nonce, cursor
--   -> flat [nonce, next cursor, skipped, now_ms,
--            name, seq, followers, updated_ms, heard_ms, hb_ms, name, ...]
-- (now_ms: Redis' clock, TIME, when the page was read, so that a client
-- computes ages on one clock; heard_ms: when the leader was last heard,
-- the later of its last heartbeat, start or reconnect and its newest
-- state's updated_ms; hb_ms: the heartbeat interval it announced)
-- (skipped: entries of the page not listed because their name is not one
-- this version accepts, or their record is of an earlier version)
-- One page of the live streams: call again with the next cursor until it
-- is "0" (a name may come twice; Redis' HSCAN guarantees every name in the
-- index from start to end comes at least once). Names whose record
-- expired are dropped from the index on the way. (The records and logs of
-- the names are read, not declared: the names come from the index.)
redis.register_function('ms_list', function(keys, args)
  local nonce, _, err = enter(keys, args, { keys = { 'index' }, args = 3 })
  if not nonce then return err end
  local page, e = list_page(nonce, keys[1], args[3], true)
  if not page then return e end
  local out = { nonce, page[1], 0, now_ms() }
  for _, name in ipairs(page[2]) do
    -- A name that is not one of this library's (put there by hand, or
    -- before this version refused it) is left alone, not listed and
    -- counted: Webdis would drop a string that is not UTF-8 and put the
    -- flat reply out of step.
    local v = not bad_name(name) and redis.call('HMGET', RECORD_PREFIX .. name, 'b', 'p', 'channel',
      'heard_ms', 'hb_ms', 'seq', 'updated_ms')
    local st
    if v and v[1] then
      st = newest_of(v[1], v[2], redis.call('GETRANGE', LOG_PREFIX .. name, -TAIL, -1))
    elseif v and v[6] then
      -- a record of protocol 8 (section 8)
      st = { seq = tonumber(v[6]), updated_ms = tonumber(v[7]) or 0 }
    end
    if not v then
      out[3] = out[3] + 1
    elseif (v[1] or v[6]) and not (st and st.seq and v[3] and #v[3] == 40) then
      -- a record of an earlier protocol (load() refuses it): not listed
      out[3] = out[3] + 1
    elseif st then
      local subs = redis.call('PUBSUB', 'NUMSUB', v[3])
      out[#out + 1] = name
      out[#out + 1] = st.seq
      out[#out + 1] = tonumber(subs[2])
      out[#out + 1] = st.updated_ms
      out[#out + 1] = math.max(tonumber(v[4]) or 0, st.updated_ms)
      out[#out + 1] = tonumber(v[5]) or 0
    else
      count_bytes(keys[1], name, nil)
    end
  end
  return out
end)

-- ms_subscribers KEYS: index  ARGV: version, nonce, cursor
--   -> flat [nonce, next cursor, name, followers, name, ...] (paged as ms_list)
-- The followers subscribed on this node, per live stream. Read-only, so it
-- runs on a replica: PUBSUB NUMSUB counts only the node's own subscribers,
-- so a client of a replicated deployment sums ms_list on the primary and
-- ms_subscribers on every replica.
redis.register_function{ function_name = 'ms_subscribers', flags = { 'no-writes' }, callback = function(keys, args)
  local nonce, _, err = enter(keys, args, { keys = { 'index' }, args = 3 })
  if not nonce then return err end
  local page, e = list_page(nonce, keys[1], args[3], false)
  if not page then return e end
  local out = { nonce, page[1] }
  for _, name in ipairs(page[2]) do
    local channel = not bad_name(name) and redis.call('HGET', RECORD_PREFIX .. name, 'channel')
    if channel and #channel == 40 then
      local subs = redis.call('PUBSUB', 'NUMSUB', channel)
      out[#out + 1] = name
      out[#out + 1] = tonumber(subs[2])
    end
  end
  return out
end }

-- ms_limits KEYS: index  ARGV: version, nonce
--   -> [nonce, quota of streams, quota of one state's bytes, quota of all
--       states' bytes, streams counted, bytes counted]
-- The deployment's quotas (QUOTAS above) and what the index counts now
-- (names of expired streams included until they are dropped).
redis.register_function{ function_name = 'ms_limits', flags = { 'no-writes' }, callback = function(keys, args)
  local nonce, _, err = enter(keys, args, { keys = { 'index' }, args = 2 })
  if not nonce then return err end
  local n, total = 0, 0
  if index_ready(keys[1], false) then n, total = usage(keys[1]) end
  return { nonce, QUOTA_STREAMS, QUOTA_STATE_BYTES, QUOTA_TOTAL_BYTES, n, total }
end }
