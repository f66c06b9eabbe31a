-- wrk script: bench/urls.lua's 1,000 product pages, each on a new connection
-- (Connection: close), so every request is a full TLS handshake.
local n = 0
local headers = { ["Accept-Encoding"] = "gzip", ["Connection"] = "close" }
request = function()
  n = (n % 1000) + 1
  return wrk.format("GET", "/product-" .. n .. ".html", headers)
end
