-- wrk script: cycles over 1,000 product pages (from FIRST, default 1), as browsers ask.
local first = tonumber(os.getenv("FIRST") or "1")
local n = 0
request = function()
  n = (n % 1000) + 1
  return wrk.format("GET", "/product-" .. (first + n - 1) .. ".html", { ["Accept-Encoding"] = "gzip" })
end
