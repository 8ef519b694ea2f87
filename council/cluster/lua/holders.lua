-- KEYS: leases hash. Read only. Returns holder, bytes, holder, bytes... of the live leases (a holder's summed); an
-- older council's lease (in slots) is left out: its router's members then stay counted as others' memory.
-- @include lease_entry
local now = now_ms()
local size_of = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 2, #entries, 2 do
  local expires, size, holder = lease_entry(entries[i])
  if expires > now and size then
    size_of[holder] = (size_of[holder] or 0) + size
  end
end
local out = {}
for holder, size in pairs(size_of) do
  table.insert(out, holder)
  table.insert(out, size)
end
return out
