-- Registry: a sorted set host -> heartbeat deadline (server ms) and a hash host -> members JSON.
-- @include now
local now = now_ms()
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, host in ipairs(gone) do
  redis.call('HDEL', KEYS[2], host)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
