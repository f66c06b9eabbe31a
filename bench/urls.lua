-- wrk script: cycles over the 1,000 product pages, as a browser would ask for them.
local n = 0
request = function()
  n = (n % 1000) + 1
  return wrk.format("GET", "/product-" .. n .. ".html", { ["Accept-Encoding"] = "gzip" })
end
