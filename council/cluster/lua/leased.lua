-- KEYS: leases hash. Read only: expired entries are skipped here and deleted by the next acquire.
-- @include now
local now = now_ms()
local used = 0
local entries = redis.call('HGETALL', KEYS[1])
for i = 2, #entries, 2 do
  local expires, slots = string.match(entries[i], '^(%d+) (%d+) ')
  if tonumber(expires) > now then
    used = used + tonumber(slots)
  end
end
return used
