-- KEYS: leases hash. ARGV: token, holder, ttl_ms. Returns 1 if renewed, 0 if stale.
-- @include lease_entry
local now = now_ms()
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then
  return 0
end
local expires, size, holder = lease_entry(entry)
if expires <= now then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
if size == nil or holder ~= ARGV[2] then
  return 0
end
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d %dB %s', now + ttl, size, holder))
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
