-- KEYS: hosts zset, members hash, owners hash, epoch. Returns the epoch (false while none), then host, JSON, ...
-- A router that read one epoch and then another, or none, knows the store was emptied under it (hosts that left
-- leave the epoch as it was).
-- @include prune_hosts
local out = {redis.call('GET', KEYS[4])}
for _, host in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local members = redis.call('HGET', KEYS[2], host)
  if members then
    table.insert(out, host)
    table.insert(out, members)
  end
end
return out
