"""
The Lua script that counts a request and decides, atomically, inside Redis.

Key layout: one hash per client, C{<prefix><client>} (by default
C{balancebeam:rl:203.0.113.7}), with the fields C{w} (window number,
C{floor(time / window)}), C{c} (requests allowed in window C{w}) and C{p}
(requests allowed in window C{w - 1}). Each allowed request sets a TTL of two
windows on it; denied requests do not write at all.
"""

from __future__ import annotations

SCRIPT = """\
-- balancebeam: count one request for one client and decide, atomically.
-- KEYS[1]: the client's hash {w = window number, c = count in w, p = count in w - 1}
-- ARGV: window seconds, limit, 'fixed' or 'sliding', current time ('' = Redis TIME)
-- Returns {allowed (0/1), remaining, reset_after in us, retry_after in us}.
if redis.replicate_commands then
  -- Redis < 5 replicates scripts verbatim and refuses writes after TIME otherwise.
  redis.replicate_commands()
end
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local sliding = ARGV[3] == 'sliding'
local now
if ARGV[4] ~= '' then
  now = tonumber(ARGV[4])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) + tonumber(time[2]) / 1000000
end
local index = math.floor(now / window)
local elapsed = now - index * window
local reset_after = window - elapsed
local state = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local stored = tonumber(state[1])
local current = 0
local previous = 0
if stored == index then
  current = tonumber(state[2]) or 0
  previous = tonumber(state[3]) or 0
elseif stored == index - 1 then
  previous = tonumber(state[2]) or 0
end
if not sliding then
  previous = 0
end
local estimate = current
if previous > 0 then
  estimate = previous * (reset_after / window) + current
end
local epsilon = 1e-9
if estimate + 1 <= limit + epsilon then
  redis.call('HSET', KEYS[1], 'w', index, 'c', current + 1, 'p', previous)
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 2000))
  local remaining = math.max(0, math.floor(limit - estimate - 1 + epsilon))
  return {1, remaining, math.ceil(reset_after * 1000000), 0}
end
local retry_after
if not sliding then
  retry_after = reset_after
elseif current < limit and previous > 0 then
  retry_after = math.max(0, reset_after - (limit - 1 - current) * window / previous)
else
  retry_after = reset_after + window - (limit - 1) * window / current
end
return {0, 0, math.ceil(reset_after * 1000000), math.ceil(retry_after * 1000000)}
"""
"""
The decision script. It needs Redis 4 or later (C{HSET} with several fields).
"""
