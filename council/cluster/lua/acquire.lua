-- A lease is a field of the GPU's hash: token -> "EXPIRES_MS SLOTS HOLDER".
-- KEYS: leases hash, fence counter. ARGV: total, slots, ttl_ms, holder. Returns the token, or nil when full.
-- @include now
local now = now_ms()
local total, want, ttl, holder = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local used = 0
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local expires, slots = string.match(entries[i + 1], '^(%d+) (%d+) ')
  if tonumber(expires) <= now then
    redis.call('HDEL', KEYS[1], entries[i])
  else
    used = used + tonumber(slots)
  end
end
if used + want > total then
  return false
end
-- Seed a missing counter from the clock so tokens keep increasing even if Redis lost the counter in a
-- restart without persistence: a token from before the restart can never be handed out again.
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], string.format('%d', now * 1000))
end
local token = string.format('%d', redis.call('INCR', KEYS[2]))
redis.call('HSET', KEYS[1], token, string.format('%d %d %s', now + ttl, want, holder))
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return token
