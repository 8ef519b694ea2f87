-- KEYS: hosts zset, members hash, owners hash, epoch. ARGV: host, members JSON, ttl_ms, instance, a new epoch.
-- Returns the other instance whose live entry holds `host` (nothing is written), or false once published.
-- A store that lost everything gets a new epoch from the first host to publish again (see members.lua).
redis.call('SET', KEYS[4], ARGV[5], 'NX')
-- @include prune_hosts
local owner = redis.call('HGET', KEYS[3], ARGV[1])
if owner and owner ~= ARGV[4] and redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return owner
end
redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[3])), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
return false
