-- Token bucket in a hash {tokens, ts, req, said}. KEYS: bucket. ARGV: rate per s, burst, request id. Returns nil if
-- allowed, else the wait in seconds as a string (Lua numbers returned to Redis are truncated to integers).
-- `req` and `said` are the last request and its answer: the same request sent again (its reply lost with a broken
-- connection, and retried) gets that answer and spends no second token.
-- @include now
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'req', 'said')
if state[3] == ARGV[3] then
  if state[4] == '' then
    return false
  end
  return state[4]
end
local now = now_ms()
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens = tonumber(state[1]) or burst
local stamp = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - stamp) / 1000 * rate)
local wait = nil
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
local said = ''
if wait then
  said = string.format('%.17g', wait)
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%d', now), 'req', ARGV[3],
           'said', said)
-- Once it would have refilled to full, a missing key means the same thing: let Redis drop it.
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
if wait then
  return said
end
return false
