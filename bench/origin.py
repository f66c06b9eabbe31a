#!/usr/bin/env python3
"""Benchmark origin: answers like Magento for /product-N.html (about 40 KB of HTML,
tags, Cache-Control, Set-Cookie), counts requests per URL, and can be slow on purpose.

  GET /product-N.html        cacheable page (s-maxage 86400)
  GET /stampede-X.html       cacheable page that takes 1 s to render
  GET /expiring-X.html       like stampede, but s-maxage=1 (for expiry stampedes)
  GET /health_check.php      200
  GET /__count?url=/path     requests seen for that URL (not counted itself)
"""
import http.server
import json
import socketserver
import sys
import threading
import time
import urllib.parse

COUNTS = {}
LOCK = threading.Lock()
FILLER = ("<div class=\"product-info\"><span class=\"price\">$19.99</span>"
          "<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit.</p></div>\n")


def page(n):
    head = f"<html><head><title>Product {n}</title></head><body><h1>Product {n}</h1>\n"
    body = FILLER * (40_000 // len(FILLER))
    return (head + body + "</body></html>\n").encode()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        parsed = urllib.parse.urlparse(self.path)
        if parsed.path == "/__count":
            url = urllib.parse.parse_qs(parsed.query).get("url", [""])[0]
            with LOCK:
                body = json.dumps({"count": COUNTS.get(url, 0)}).encode()
            return self.reply(200, body, {"Cache-Control": "no-store"})
        with LOCK:
            COUNTS[self.path] = COUNTS.get(self.path, 0) + 1
        if parsed.path in ("/health_check.php", "/pub/health_check.php"):
            return self.reply(200, b"OK", {"Cache-Control": "no-store"})
        ttl = 86400
        if parsed.path.startswith("/stampede-") or parsed.path.startswith("/expiring-"):
            time.sleep(1.0)
            if parsed.path.startswith("/expiring-"):
                ttl = 1
        n = parsed.path.strip("/").split("-")[-1].split(".")[0]
        self.reply(200, page(n), {
            "Content-Type": "text/html; charset=UTF-8",
            "Cache-Control": f"public, max-age={ttl}, s-maxage={ttl}",
            "Pragma": "cache",
            "X-Magento-Tags": f"cat_p_{n},cat_p,store",
            "Set-Cookie": "PHPSESSID=bench; path=/",
        })

    def reply(self, status, body, headers):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 1024


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 6092
    Server(("127.0.0.1", port), Handler).serve_forever()
