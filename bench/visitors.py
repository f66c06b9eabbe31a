#!/usr/bin/env python3
"""Open-loop visitors for the purge benchmark: RATE requests per second over PAGES
product pages starting at FIRST, popular as shop pages are (Zipf-like: the page of rank
r is visited in proportion to 1/r), for DURATION seconds. At PURGE_AT seconds all those
pages' tags are purged the way Magento purges after a mass update (batches of at most
7,680 bytes), then it reports what visitors got in the following WINDOW seconds.

  visitors.py HOST:PORT FIRST PAGES RATE DURATION PURGE_AT WINDOW
prints: requests_after=N misses_after=M miss_share=P
"""
import http.client
import itertools
import os
import queue
import random
import sys
import threading
import time

host, port = sys.argv[1].split(":")
first, pages, rate, duration, purge_at, window = (int(sys.argv[2]), int(sys.argv[3]),
    float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7]))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from magento_purge import purge  # noqa: E402

weights = list(itertools.accumulate(1.0 / r for r in range(1, pages + 1)))
rng = random.Random(7)

results = []
lock = threading.Lock()
work = queue.Queue()


def visitor():
    conn = None
    while True:
        item = work.get()
        if item is None:
            return
        sent_at, url = item
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.request("GET", url, headers={"Accept-Encoding": "gzip"})
            r = conn.getresponse()
            r.read()
            verdict = r.getheader("X-Magento-Cache-Debug", "-")
        except Exception:
            conn = None
            verdict = "ERROR"
        with lock:
            results.append((sent_at, verdict))


threads = [threading.Thread(target=visitor, daemon=True) for _ in range(32)]
for t in threads:
    t.start()

start = time.monotonic()
purged = False
i = 0
while True:
    now = time.monotonic() - start
    if now >= duration:
        break
    if not purged and now >= purge_at:
        purge(host, port, first, first + pages - 1)
        purged = True
    target = i / rate
    if target > now:
        time.sleep(min(target - now, 0.01))
        continue
    page = first + rng.choices(range(pages), cum_weights=weights)[0]
    work.put((target, f"/product-{page}.html"))
    i += 1
for _ in threads:
    work.put(None)
for t in threads:
    t.join()
after = [v for (t, v) in results if purge_at <= t < purge_at + window]
misses = sum(1 for v in after if v != "HIT")
print(f"requests_after={len(after)} misses_after={misses} miss_share={misses / max(len(after), 1):.4f}")
