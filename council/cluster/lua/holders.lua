-- KEYS: leases hash. Read only. Returns holder, slots, holder, slots... of the live leases (a holder's summed).
-- @include now
local now = now_ms()
local slots_of = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 2, #entries, 2 do
  local expires, slots, holder = string.match(entries[i], '^(%d+) (%d+) (.*)$')
  if tonumber(expires) > now then
    slots_of[holder] = (slots_of[holder] or 0) + tonumber(slots)
  end
end
local out = {}
for holder, slots in pairs(slots_of) do
  table.insert(out, holder)
  table.insert(out, slots)
end
return out
