-- The server's clock in integer milliseconds: every expiry is judged by Redis, never a router.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
