-- Registry: a sorted set host -> heartbeat deadline (server ms), a hash host -> members JSON and a hash host ->
-- the instance that published it (KEYS[3]).
-- @include now
local now = now_ms()
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, host in ipairs(gone) do
  redis.call('HDEL', KEYS[2], host)
  redis.call('HDEL', KEYS[3], host)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
