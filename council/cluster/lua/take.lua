-- Token bucket in a hash {tokens, ts}. KEYS: bucket. ARGV: rate per s, burst. Returns nil if allowed, else
-- the wait in seconds as a string (Lua numbers returned to Redis are truncated to integers).
-- @include now
local now = now_ms()
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local stamp = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - stamp) / 1000 * rate)
local wait = nil
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%d', now))
-- Once it would have refilled to full, a missing key means the same thing: let Redis drop it.
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
if wait then
  return string.format('%.17g', wait)
end
return false
