#!/usr/bin/env python3
"""Benchmark origin: answers like Magento for /product-N.html (about 40 KB of HTML,
tags, Cache-Control, Set-Cookie), counts requests per URL, and can be slow on purpose.

  GET /product-N.html        cacheable page (s-maxage 86400)
  GET /page-N.html           cacheable page of varied text that gzips about 3:1, like
                             real HTML (for the memory measurement)
  GET /stampede-X.html       cacheable page that takes 1 s to render
  GET /expiring-X.html       like stampede, but s-maxage=1 (for expiry stampedes)
  GET /new-X.html            cacheable page
  GET /esi-N.html            product N with Magento's top menu as an ESI include
  GET /esipage-N.html        /page-N.html with the top menu as an ESI include (memory)
  GET /page_cache/block/esi/blocks/topnav/
                             the top menu fragment (about 6 KB, ttl 3600, tagged cat_c)
  GET /old-N.html            cacheable page with s-maxage=1 (expires at once)
  GET /health_check.php      200
  GET /__count?url=/path     requests seen for that URL (not counted itself)
  GET /__sum?first=A&last=B  requests seen for /product-A.html .. /product-B.html

With --gzip, a client that accepts gzip gets the page gzipped (Content-Encoding: gzip,
Vary: Accept-Encoding), as Magento's nginx with `gzip on` sends it (for bench/tls.sh,
where every proxy then stores and serves the same gzip bytes).

PHP-FPM mode (for bench/overload.sh): `origin.py PORT --pool 8 --backlog 64` renders
at most 8 pages at once, like pm.max_children; up to 64 more wait, like FPM's listen
backlog; beyond that the page gets 502 at once, as nginx answers when it cannot hand a
request to PHP-FPM.
  GET /__delay?ms=200        render time of every page from now on
  GET /__stats               {"max_concurrency", "bad_gateway", "rendered", "requests"}
                             as JSON ("requests": every page asked for, in any mode)
  GET /__reset               zeroes those
"""
import gzip
import http.server
import json
import socketserver
import sys
import threading
import time
import urllib.parse

COUNTS = {}
LOCK = threading.Lock()
POOL = None          # threading.Semaphore in PHP-FPM mode
BACKLOG = 0
DELAY = [0.0]
GZIP = [False]
GZIP_LEVEL = [6]
GZIPPED = {}
STATS = {"concurrency": 0, "max_concurrency": 0, "bad_gateway": 0, "rendered": 0, "requests": 0}
FILLER = ("<div class=\"product-info\"><span class=\"price\">$19.99</span>"
          "<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit.</p></div>\n")


WORDS = ("shirt jacket cotton blue red green size small medium large price sale new "
         "stock delivery return review stars brand leather wool summer winter shoe boot "
         "sock hat bag belt watch ring gold silver steel glass table chair lamp sofa bed").split()


def varied_blob(seed, size_wanted):
    import random
    rng = random.Random(seed)
    parts, size = [], 0
    while size < size_wanted:
        w = rng.choice(WORDS) + (str(rng.randint(0, 9999)) if rng.random() < 0.3 else "")
        parts.append(w)
        size += len(w) + 1
    return " ".join(parts)


# Distinct bodies, built once: each response is compressed on its own, so reuse across
# pages does not help gzip, and serving stays cheap.
# (--page-bytes rebuilds them at another size.)
BLOBS = [varied_blob(i, 40_000) for i in range(64)]


def varied_page(n, menu=""):
    return (f"<html><body><h1>Page {n}</h1>{menu}<p>" + BLOBS[int(n) % 64] + "</p></body></html>\n").encode()


def page(n, menu=""):
    head = f"<html><head><title>Product {n}</title></head><body><h1>Product {n}</h1>\n"
    body = FILLER * (40_000 // len(FILLER))
    return (head + menu + body + "</body></html>\n").encode()


# What Magento 2.4 writes for the top navigation block (ttl="3600") under Varnish.
MENU_SRC = "http://shop.bench/page_cache/block/esi/blocks/topnav/"
MENU_INCLUDE = f'<nav><esi:include src="{MENU_SRC}" /></nav>\n'
MENU = ("<ul class=\"navigation\">"
        + "".join(f'<li class="level0 nav-{i}"><a href="/category-{i}.html">Category {i}</a></li>' for i in range(80))
        + "</ul>\n").encode()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Headers and body go out in two writes; without this, Nagle's algorithm and
        # delayed ACKs add 40 ms to every response on a kept-alive connection.
        import socket
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def do_GET(self):
        parsed = urllib.parse.urlparse(self.path)
        if parsed.path == "/__count":
            url = urllib.parse.parse_qs(parsed.query).get("url", [""])[0]
            with LOCK:
                body = json.dumps({"count": COUNTS.get(url, 0)}).encode()
            return self.reply(200, body, {"Cache-Control": "no-store"})
        if parsed.path == "/__sum":
            query = urllib.parse.parse_qs(parsed.query)
            first, last = int(query["first"][0]), int(query["last"][0])
            with LOCK:
                total = sum(COUNTS.get(f"/product-{n}.html", 0) for n in range(first, last + 1))
            return self.reply(200, json.dumps({"count": total}).encode(), {"Cache-Control": "no-store"})
        if parsed.path == "/__delay":
            DELAY[0] = int(urllib.parse.parse_qs(parsed.query).get("ms", ["0"])[0]) / 1000
            return self.reply(200, b"ok", {"Cache-Control": "no-store"})
        if parsed.path in ("/__stats", "/__reset"):
            with LOCK:
                if parsed.path == "/__reset":
                    for k in ("max_concurrency", "bad_gateway", "rendered", "requests"):
                        STATS[k] = 0
                body = json.dumps(STATS).encode()
            return self.reply(200, body, {"Cache-Control": "no-store"})
        with LOCK:
            COUNTS[self.path] = COUNTS.get(self.path, 0) + 1
        if parsed.path in ("/health_check.php", "/pub/health_check.php"):
            return self.reply(200, b"OK", {"Cache-Control": "no-store"})
        with LOCK:
            STATS["requests"] += 1
        if POOL is not None:
            return self.fpm(parsed)
        return self.render(parsed)

    def do_POST(self):
        # A cart POST (bench/rehearsal.py): rendered like a page, through the pool.
        length = int(self.headers.get("Content-Length", 0) or 0)
        if length:
            self.rfile.read(length)
        self.do_GET()

    def fpm(self, parsed):
        with LOCK:
            waiting = STATS["concurrency"] - POOL_SIZE
            if waiting >= BACKLOG:
                STATS["bad_gateway"] += 1
                full = True
            else:
                full = False
                STATS["concurrency"] += 1
                STATS["max_concurrency"] = max(STATS["max_concurrency"], STATS["concurrency"])
        if full:
            return self.reply(502, b"<h1>502 Bad Gateway</h1>", {"Content-Type": "text/html"})
        try:
            with POOL:
                time.sleep(DELAY[0])
                with LOCK:
                    STATS["rendered"] += 1
                self.render(parsed)
        finally:
            with LOCK:
                STATS["concurrency"] -= 1

    def render(self, parsed):
        ttl = 86400
        if parsed.path.startswith("/stampede-") or parsed.path.startswith("/expiring-"):
            time.sleep(1.0)
            if parsed.path.startswith("/expiring-"):
                ttl = 1
        if parsed.path.startswith("/old-"):
            ttl = 1
        if parsed.path.startswith("/page_cache/block/esi/"):
            return self.reply(200, MENU, {
                "Content-Type": "text/html; charset=UTF-8",
                "Cache-Control": "public, max-age=3600, s-maxage=3600",
                "X-Magento-Tags": "cat_c,cat_c_1,cat_c_2",
            })
        n = parsed.path.strip("/").split("-")[-1].split(".")[0]
        if parsed.path.startswith("/page-"):
            body = varied_page(n)
        elif parsed.path.startswith("/esipage-"):
            body = varied_page(n, MENU_INCLUDE)
        elif parsed.path.startswith("/esi-"):
            body = page(n, MENU_INCLUDE)
        else:
            body = page(n)
        self.reply(200, body, {
            "Content-Type": "text/html; charset=UTF-8",
            "Cache-Control": f"public, max-age={ttl}, s-maxage={ttl}",
            "Pragma": "cache",
            "X-Magento-Tags": f"cat_p_{n},cat_p,store",
            "Set-Cookie": "PHPSESSID=bench; path=/",
        })

    def reply(self, status, body, headers):
        if GZIP[0] and status == 200 and "gzip" in (self.headers.get("Accept-Encoding") or ""):
            key = (self.path, len(body))
            with LOCK:
                packed = GZIPPED.get(key)
            if packed is None:
                packed = gzip.compress(body, GZIP_LEVEL[0])
                with LOCK:
                    GZIPPED[key] = packed
            body = packed
            headers = dict(headers, **{"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
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
    import argparse
    args = argparse.ArgumentParser()
    args.add_argument("port", type=int, nargs="?", default=6092)
    args.add_argument("--pool", type=int, default=0, help="PHP-FPM mode: pm.max_children")
    args.add_argument("--backlog", type=int, default=64, help="PHP-FPM mode: listen backlog")
    args.add_argument("--gzip", action="store_true", help="gzip pages for clients that accept it")
    args.add_argument("--gzip-level", type=int, default=6,
                      help="with --gzip: 1 to fill hundreds of thousands of pages quickly")
    args.add_argument("--page-bytes", type=int, default=40_000,
                      help="text of each /page-N.html (40000 gzips to about 13 KB at level 6)")
    opts = args.parse_args()
    if opts.page_bytes != 40_000:
        BLOBS = [varied_blob(i, opts.page_bytes) for i in range(64)]
    GZIP[0] = opts.gzip
    GZIP_LEVEL[0] = opts.gzip_level
    if opts.pool:
        POOL = threading.Semaphore(opts.pool)
        POOL_SIZE = opts.pool
        BACKLOG = opts.backlog
    Server(("127.0.0.1", opts.port), Handler).serve_forever()
