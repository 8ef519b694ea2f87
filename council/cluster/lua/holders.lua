-- KEYS: leases hash. Read only. Returns holder, MiB, holder, MiB... of the live leases (a holder's summed); an
-- older council's lease (in slots) is left out: its router's members then stay counted as others' memory.
-- @include lease_entry
local now = now_ms()
local mib_of = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 2, #entries, 2 do
  local expires, mib, holder = lease_entry(entries[i])
  if expires > now and mib then
    mib_of[holder] = (mib_of[holder] or 0) + mib
  end
end
local out = {}
for holder, mib in pairs(mib_of) do
  table.insert(out, holder)
  table.insert(out, mib)
end
return out
