#!/usr/bin/env python3
"""Purges the way Magento does: patterns of at most 7,680 bytes, each on a new connection.

  magento_purge.py HOST:PORT FIRST LAST
      purges cat_p_FIRST..cat_p_LAST once; prints "seconds objects_purged batches
      server_seconds" (objects and server time as Floodgate reports them in its
      answers; Varnish does not say, so 0)
  magento_purge.py HOST:PORT FIRST LAST --stream RATE TAGS
      until killed: RATE purges a second of TAGS tags each, cycling through the range
"""
import http.client
import re
import sys
import time

BATCH_BYTES = 7680


def batches(first, last):
    out, current = [], []
    for n in range(first, last + 1):
        part = f"((^|,)cat_p_{n}(,|$))"
        if current and len("|".join(current + [part])) > BATCH_BYTES:
            out.append("|".join(current))
            current = []
        current.append(part)
    if current:
        out.append("|".join(current))
    return out


def send(host, port, pattern):
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("PURGE", "/", headers={"X-Magento-Tags-Pattern": pattern})
    body = conn.getresponse().read().decode(errors="replace")
    conn.close()
    m = re.search(r"(?:purged|expired) (\d+) objects.* in ([\d.]+) ms", body)
    return (int(m.group(1)), float(m.group(2)) / 1000) if m else (0, 0.0)


def purge(host, port, first, last):
    start = time.monotonic()
    parts = batches(first, last)
    answers = [send(host, port, p) for p in parts]
    purged = sum(n for n, _ in answers)
    server_time = sum(t for _, t in answers)
    return time.monotonic() - start, purged, len(parts), server_time


if __name__ == "__main__":
    host, port = sys.argv[1].split(":")
    first, last = int(sys.argv[2]), int(sys.argv[3])
    if len(sys.argv) > 4 and sys.argv[4] == "--stream":
        rate, tags = float(sys.argv[5]), int(sys.argv[6])
        n, start, i = first, time.monotonic(), 0
        while True:
            send(host, port, "|".join(f"((^|,)cat_p_{k}(,|$))" for k in range(n, n + tags)))
            n = n + tags if n + 2 * tags <= last else first
            i += 1
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
    elapsed, purged, count, server = purge(host, port, first, last)
    print(f"{elapsed:.4f} {purged} {count} {server:.6f}")
