-- KEYS: leases hash. ARGV: token, holder.
-- @include lease_entry
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if entry then
  local _, size, holder = lease_entry(entry)
  if size and holder == ARGV[2] then
    redis.call('HDEL', KEYS[1], ARGV[1])
    return 1
  end
end
return 0
