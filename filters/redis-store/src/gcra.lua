-- Cluster-wide GCRA on one key, with the caller's clock (managed Redis forbids TIME in scripts).
-- KEYS[1]: the key. ARGV: now (µs since the epoch), emission interval (µs), tolerance (µs,
-- burst x emission), count, check ("1": decide on the last of the count requests; "0": add
-- them all, they were admitted already).
-- Returns {allowed (1/0), the key's theoretical arrival time (µs)}.
local now = tonumber(ARGV[1])
local emission = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local count = tonumber(ARGV[4])
local check = ARGV[5] == '1'
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if count == 0 then
  return {1, tat}
end
if tat < now then
  tat = now
end
local allowed = 1
if check then
  tat = tat + (count - 1) * emission
  if tat + emission - now > tolerance then
    allowed = 0
  else
    tat = tat + emission
  end
else
  tat = tat + count * emission
end
local ttl = math.ceil((tat - now) / 1000)
if ttl < 1 then
  ttl = 1
end
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', ttl)
return {allowed, tat}
