#!/usr/bin/env python3
"""Cluster measurements for bench/cluster.sh, all requests with Host: shop.test (the
shop's own host, so every node computes the same keys).

  cluster.py fill PORT FIRST LAST
      GET /product-N.html for every N through one node.
  cluster.py fanout TARGET_PORT N ADMIN_PORT [ADMIN_PORT ...]
      N purges of one tag each, sent to TARGET; after each, polls every other node's
      floodgate_purge_bus_applied_total until it moved. Prints p50/p99/max in ms of
      the time until every node had applied it.
  cluster.py visit PORT PAGES RATE SECONDS
      Open-loop visitors (Zipf over PAGES product pages) for SECONDS; prints the share
      of requests that were cache hits (X-Magento-Cache-Debug: HIT).
"""
import http.client
import itertools
import random
import sys
import threading
import time

HOST = "shop.test"


def get(conn, path, method="GET", headers=None):
    h = {"Host": HOST, "Accept-Encoding": "gzip"}
    h.update(headers or {})
    conn.request(method, path, headers=h)
    r = conn.getresponse()
    r.read()
    return r


def fill(port, first, last):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for n in range(first, last + 1):
        get(conn, f"/product-{n}.html")


def applied(conn):
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    for line in text.splitlines():
        if line.startswith("floodgate_purge_bus_applied_total "):
            return float(line.split()[1])
    return 0.0


def fanout(target, n, admins):
    conn = http.client.HTTPConnection("127.0.0.1", target, timeout=10)
    watchers = [http.client.HTTPConnection("127.0.0.1", a, timeout=10) for a in admins]
    base = [applied(w) for w in watchers]
    took = []
    for i in range(n):
        pattern = f"((^|,)cat_p_{100000 + i}(,|$))"
        start = time.monotonic()
        get(conn, "/", method="PURGE", headers={"X-Magento-Tags-Pattern": pattern})
        pending = set(range(len(watchers)))
        while pending:
            for k in list(pending):
                if applied(watchers[k]) >= base[k] + i + 1:
                    pending.discard(k)
            if time.monotonic() - start > 5:
                raise SystemExit(f"purge {i} not applied everywhere within 5 s")
        took.append((time.monotonic() - start) * 1000)
        time.sleep(0.02)
    took.sort()
    pick = lambda q: took[min(len(took) - 1, int(q * len(took)))]
    print(f"p50={pick(0.5):.2f} p99={pick(0.99):.2f} max={took[-1]:.2f}")


def visit(port, pages, rate, seconds):
    weights = list(itertools.accumulate(1.0 / r for r in range(1, pages + 1)))
    rng = random.Random(11)
    results = []
    lock = threading.Lock()
    local = threading.local()

    def one(n):
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            r = get(local.conn, f"/product-{n}.html")
            hit = r.getheader("X-Magento-Cache-Debug") == "HIT"
        except Exception:
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            hit = None
        with lock:
            results.append(hit)

    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=32) as pool:
        start = time.monotonic()
        i = 0
        while time.monotonic() - start < seconds:
            due = int((time.monotonic() - start) * rate)
            while i < due:
                n = rng.choices(range(1, pages + 1), cum_weights=weights)[0]
                pool.submit(one, n)
                i += 1
            time.sleep(0.002)
    hits = sum(1 for r in results if r)
    failed = sum(1 for r in results if r is None)
    print(f"requests={len(results)} hits={hits} failed={failed} hit_ratio={hits / max(1, len(results)):.4f}")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "fill":
        fill(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    elif mode == "fanout":
        fanout(int(sys.argv[2]), int(sys.argv[3]), [int(a) for a in sys.argv[4:]])
    elif mode == "visit":
        visit(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
