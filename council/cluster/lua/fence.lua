-- KEYS: leases hash. ARGV: token.
-- @include now
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if entry and tonumber(string.match(entry, '^(%d+) ')) > now_ms() then
  return 1
end
return 0
