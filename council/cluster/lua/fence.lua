-- KEYS: leases hash. ARGV: token.
-- @include lease_entry
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if entry and lease_entry(entry) > now_ms() then
  return 1
end
return 0
