#!/usr/bin/env python3
"""Soak traffic: RATE requests a second for DURATION seconds over PAGES product pages,
Zipf-like (the head is hit, the tail misses), on 32 kept-alive connections, open loop.
Every answer is recorded with the second it was sent in, so the script that drives the
faults can tell the 503s it caused (origin down) from any other.

  soak.py HOST:PORT PAGES RATE DURATION OUT
writes OUT: one line per answer, "second status" (status -1: no answer, an error)
"""
import http.client
import itertools
import queue
import random
import sys
import threading
import time

host, port = sys.argv[1].split(":")
pages, rate, duration, out = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
weights = list(itertools.accumulate(1.0 / r for r in range(1, pages + 1)))
rng = random.Random(11)
work = queue.Queue()
lock = threading.Lock()
lines = []


def visitor():
    conn = None
    while True:
        item = work.get()
        if item is None:
            return
        second, url = item
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.request("GET", url, headers={"Accept-Encoding": "gzip"})
            r = conn.getresponse()
            r.read()
            status = r.status
            if r.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except Exception:
            if conn is not None:
                conn.close()
            conn = None
            status = -1
        with lock:
            lines.append(f"{second} {status}\n")


threads = [threading.Thread(target=visitor, daemon=True) for _ in range(32)]
for t in threads:
    t.start()
start = time.monotonic()
sent = 0
while True:
    elapsed = time.monotonic() - start
    if elapsed >= duration:
        break
    due = int(elapsed * rate)
    while sent < due:
        n = rng.choices(range(1, pages + 1), cum_weights=weights)[0]
        work.put((int(elapsed), f"/product-{n}.html"))
        sent += 1
    time.sleep(0.005)
for _ in threads:
    work.put(None)
for t in threads:
    t.join()
with open(out, "w") as f:
    f.writelines(lines)
