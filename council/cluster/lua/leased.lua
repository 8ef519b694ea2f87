-- KEYS: leases hash. Read only: expired entries are skipped here and deleted by the next acquire. Returns the
-- live leases' bytes; an older council's lease (in slots) is not counted (acquire refuses while one is live).
-- @include lease_entry
local now = now_ms()
local used = 0
local entries = redis.call('HGETALL', KEYS[1])
for i = 2, #entries, 2 do
  local expires, size = lease_entry(entries[i])
  if expires > now and size then
    used = used + size
  end
end
return used
