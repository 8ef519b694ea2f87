-- A lease is a field of the GPU's hash: token -> "EXPIRES_MS <BYTES>B HOLDER", e.g. "1700000000000 17179869184B h:42"
-- (bytes are exact in Lua's doubles up to 2^53).
-- Memory, not slots: routers with different slot sizes share a GPU. An older council wrote "EXPIRES_MS SLOTS
-- HOLDER" in its own slot size, which nobody else can compare: for such an entry `size` is nil. (Its scripts,
-- in turn, fail on an entry in bytes: that router refuses to lease rather than miscount.)
-- Returns expires (0 for an entry nothing can read: gone at once), size or nil, holder.
-- @include now
local function lease_entry(entry)
  local expires, rest = string.match(entry, '^(%d+) (.*)$')
  if not expires then
    return 0, nil, nil
  end
  local size, holder = string.match(rest, '^(%d+)B (.*)$')
  if size then
    return tonumber(expires), tonumber(size), holder
  end
  return tonumber(expires), nil, string.match(rest, '^%d+ (.*)$')
end
