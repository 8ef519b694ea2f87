-- KEYS: hosts zset, members hash, owners hash. Returns host, JSON, host, JSON...
-- @include prune_hosts
local out = {}
for _, host in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local members = redis.call('HGET', KEYS[2], host)
  if members then
    table.insert(out, host)
    table.insert(out, members)
  end
end
return out
