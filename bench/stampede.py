#!/usr/bin/env python3
"""Sends N requests for one URL at the same instant (N threads behind a barrier) and
prints how many got 200."""
import sys
import threading
import urllib.request

url, n = sys.argv[1], int(sys.argv[2])
barrier = threading.Barrier(n)
ok = [0]
lock = threading.Lock()


def one():
    barrier.wait()
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            r.read()
            if r.status == 200:
                with lock:
                    ok[0] += 1
    except Exception:
        pass


threads = [threading.Thread(target=one) for _ in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(ok[0])
