-- Ballots: a hash id -> JSON, a sorted set id -> sequence number (re-putting an id moves it to the end) and the
-- bytes the hash's values hold. The oldest go past `keep` ballots, or past `max bytes` (one larger than the budget
-- is kept alone), as the memory store's `BallotStore` keeps them: by count alone, 1,000 ballots of large replies
-- held hundreds of MB of Redis memory that leases share.
-- KEYS: ballots hash, order zset, sequence counter, bytes counter. ARGV: id, JSON, keep, max bytes.
if redis.call('EXISTS', KEYS[4]) == 0 then
  -- First put since this counter was kept (a store written before it): count what the hash holds once.
  local held = 0
  for _, id in ipairs(redis.call('HKEYS', KEYS[1])) do
    held = held + redis.call('HSTRLEN', KEYS[1], id)
  end
  redis.call('SET', KEYS[4], held)
end
local bytes = redis.call('INCRBY', KEYS[4], string.len(ARGV[2]) - redis.call('HSTRLEN', KEYS[1], ARGV[1]))
local seq = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], string.format('%d', seq), ARGV[1])
local keep, budget = tonumber(ARGV[3]), tonumber(ARGV[4])
local count = redis.call('ZCARD', KEYS[2])
while count > keep or (bytes > budget and count > 1) do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  bytes = redis.call('INCRBY', KEYS[4], -redis.call('HSTRLEN', KEYS[1], oldest))
  redis.call('HDEL', KEYS[1], oldest)
  redis.call('ZREM', KEYS[2], oldest)
  count = count - 1
end
if bytes < 0 then  -- a router of an earlier release put ballots it did not count: never below nothing
  redis.call('SET', KEYS[4], 0)
end
return 1
