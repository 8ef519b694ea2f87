-- KEYS: hosts zset, members hash. ARGV: host, members JSON, ttl_ms.
-- @include prune_hosts
redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[3])), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
