-- A lease is a field of the GPU's hash: token -> "EXPIRES_MS <MiB>MiB HOLDER", e.g. "1700000000000 16384MiB h:42".
-- Memory, not slots: routers with different slot sizes share a GPU. An older council wrote "EXPIRES_MS SLOTS
-- HOLDER" in its own slot size, which nobody else can compare: for such an entry `mib` is nil. (Its scripts,
-- in turn, fail on an entry in MiB: that router refuses to lease rather than miscount.)
-- Returns expires (0 for an entry nothing can read: gone at once), mib or nil, holder.
-- @include now
local function lease_entry(entry)
  local expires, rest = string.match(entry, '^(%d+) (.*)$')
  if not expires then
    return 0, nil, nil
  end
  local mib, holder = string.match(rest, '^(%d+)MiB (.*)$')
  if mib then
    return tonumber(expires), tonumber(mib), holder
  end
  return tonumber(expires), nil, string.match(rest, '^%d+ (.*)$')
end
