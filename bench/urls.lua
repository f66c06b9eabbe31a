-- wrk script: cycles over 1,000 product pages (from FIRST, default 1), as browsers ask
-- (with gzip; GZIP=0 for clients that do not accept it). PREFIX=esi: the same pages
-- with the top menu as an ESI include.
local first = tonumber(os.getenv("FIRST") or "1")
local prefix = os.getenv("PREFIX") or "product"
local headers = {}
if os.getenv("GZIP") ~= "0" then headers["Accept-Encoding"] = "gzip" end
local n = 0
request = function()
  n = (n % 1000) + 1
  return wrk.format("GET", "/" .. prefix .. "-" .. (first + n - 1) .. ".html", headers)
end
