-- wrk script: shop-like visitors. Page n of PAGES (default 50,000) is asked for with a
-- probability proportional to 1/n^ZIPF_S (default 1: a few pages are hot, the catalogue
-- has a long tail); ZIPF_S=0 asks for every page alike. PREFIX: the page family (page).
local pages = tonumber(os.getenv("PAGES") or "50000")
local s = tonumber(os.getenv("ZIPF_S") or "1")
local prefix = os.getenv("PREFIX") or "page"
local headers = { ["Accept-Encoding"] = "gzip" }
local cdf = {}

init = function(args)
  local total = 0
  for i = 1, pages do
    total = total + 1 / (i ^ s)
    cdf[i] = total
  end
  for i = 1, pages do cdf[i] = cdf[i] / total end
  -- Each thread its own sequence.
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 100000)
end

request = function()
  local r = math.random()
  local lo, hi = 1, pages
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < r then lo = mid + 1 else hi = mid end
  end
  return wrk.format("GET", "/" .. prefix .. "-" .. lo .. ".html", headers)
end
