-- KEYS: leases hash, fence counter, this request's key. ARGV: capacity_bytes, keep_free_bytes, size, ttl_ms, holder,
-- then any tokens of the holder's own leases it is replacing (not counted: it releases them once it holds their
-- replacements). Returns the token; nil when the live leases and this one would leave less than keep_free_bytes of
-- capacity_bytes; -1 while an older council's lease (in slots, so of unknown size) is live on the GPU.
-- The request's key holds the token it was granted: the same request sent again (its reply lost with a broken
-- connection, and retried) gets the same lease, never a second one nobody knows of.
-- @include lease_entry
local granted = redis.call('GET', KEYS[3])
if granted then
  return granted
end
local now = now_ms()
local capacity, keep_free = tonumber(ARGV[1]), tonumber(ARGV[2])
local want, ttl, holder = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local replacing = {}
for i = 6, #ARGV do
  replacing[ARGV[i]] = true
end
local used, legacy = 0, false
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local expires, size, owner = lease_entry(entries[i + 1])
  if expires <= now then
    redis.call('HDEL', KEYS[1], entries[i])
  elseif size == nil then
    legacy = true
  elseif not (replacing[entries[i]] and owner == holder) then
    used = used + size
  end
end
if legacy then
  return -1
end
if used + want + keep_free > capacity then
  return false
end
-- Seed a missing counter from the clock so tokens keep increasing even if Redis lost the counter in a
-- restart without persistence: a token from before the restart can never be handed out again.
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], string.format('%d', now * 1000))
end
local token = string.format('%d', redis.call('INCR', KEYS[2]))
redis.call('HSET', KEYS[1], token, string.format('%d %dB %s', now + ttl, want, holder))
redis.call('SET', KEYS[3], token, 'PX', ttl)
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return token
