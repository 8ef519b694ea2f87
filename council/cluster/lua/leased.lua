-- KEYS: leases hash. Read only: expired entries are skipped here and deleted by the next acquire. Returns the
-- live leases' MiB; an older council's lease (in slots) is not counted (acquire refuses while one is live).
-- @include lease_entry
local now = now_ms()
local used = 0
local entries = redis.call('HGETALL', KEYS[1])
for i = 2, #entries, 2 do
  local expires, mib = lease_entry(entries[i])
  if expires > now and mib then
    used = used + mib
  end
end
return used
