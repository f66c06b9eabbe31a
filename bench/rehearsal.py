#!/usr/bin/env python3
"""The start of a promotion, rehearsed: open-loop shop traffic against one proxy, and at
the switch one Magento purge of half the catalogue (the hottest pages included).

  rehearsal.py HOST:PORT PAGES DURATION SWITCH_AT

Traffic (requests are sent on schedule whatever the answers take, as visitors do):
  browse    BROWSE/s before the switch, BROWSE_AFTER/s after (env, default 300 and 600):
            /product-N.html, N in 1..PAGES, Zipf-like (rank r in proportion to 1/r)
  search    10/s, a new search page each time (/catalogsearch/result/?q=UNIQUE)
  crawler   15/s, every product page in turn
  checkout  5/s, POST /checkout/cart/add/ (passed to the origin)
At SWITCH_AT seconds: PURGE of cat_p_1..cat_p_{PAGES/2}, in Magento's batches.
Prints one line per class for the requests sent after the switch:
  class=browse sent=N ok=P% p50_ms=X p99_ms=Y s503=K other=E
"""
import asyncio
import itertools
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from magento_purge import batches, send as purge_batch  # noqa: E402

host, port = sys.argv[1].split(":")
port = int(port)
pages, duration, switch_at = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
browse_before = float(os.environ.get("BROWSE", 300))
browse_after = float(os.environ.get("BROWSE_AFTER", 600))
# Host as bench/lib.sh's fill sends it, so the filled pages are the ones visited.
TIMEOUT = 30.0

weights = list(itertools.accumulate(1.0 / r for r in range(1, pages + 1)))
rng = random.Random(7)
results = []  # (class, sent_at, status, seconds)


async def request(cls, sent_at, method, path, body=b""):
    status = 0
    try:
        async def go():
            reader, writer = await asyncio.open_connection(host, port)
            head = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept-Encoding: gzip\r\n"
                    f"Connection: close\r\nContent-Length: {len(body)}\r\n")
            if body:
                head += "Content-Type: application/x-www-form-urlencoded\r\n"
            writer.write(head.encode() + b"\r\n" + body)
            await writer.drain()
            line = await reader.readline()
            await reader.read()  # to the close
            writer.close()
            parts = line.split()
            return int(parts[1]) if len(parts) > 1 else 0
        status = await asyncio.wait_for(go(), TIMEOUT)
    except Exception:
        status = -1
    results.append((cls, sent_at, status, time.monotonic() - sent_at))


async def stream(cls, start, rate_at, make):
    """Sends `make(i)` on schedule: rate_at(t) requests a second at t seconds."""
    i, next_at = 0, start
    tasks = []
    while next_at - start < duration:
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        method, path, body = make(i)
        tasks.append(asyncio.create_task(request(cls, next_at, method, path, body)))
        i += 1
        next_at += 1.0 / rate_at(next_at - start)
    await asyncio.gather(*tasks)


async def purge_at(start):
    await asyncio.sleep(max(0.0, start + switch_at - time.monotonic()))
    began = time.monotonic()
    loop = asyncio.get_running_loop()
    total = 0
    for pattern in batches(1, pages // 2):
        objects, _ = await loop.run_in_executor(None, purge_batch, host, port, pattern)
        total += objects
    print(f"purge: cat_p_1..cat_p_{pages // 2} in {time.monotonic() - began:.2f} s, "
          f"{total} objects", flush=True)


async def main():
    start = time.monotonic() + 0.5
    await asyncio.gather(
        stream("browse", start,
               lambda t: browse_before if t < switch_at else browse_after,
               lambda i: ("GET", f"/product-{rng.choices(range(1, pages + 1), cum_weights=weights)[0]}.html", b"")),
        stream("search", start, lambda t: 10,
               lambda i: ("GET", f"/catalogsearch/result/?q=q{i}-{time.time_ns()}", b"")),
        stream("crawler", start, lambda t: 15,
               lambda i: ("GET", f"/product-{i % pages + 1}.html", b"")),
        stream("checkout", start, lambda t: 5,
               lambda i: ("POST", "/checkout/cart/add/", f"product={i % pages + 1}&qty=1".encode())),
        purge_at(start),
    )
    for cls in ("browse", "search", "crawler", "checkout"):
        after = [r for r in results if r[0] == cls and r[1] >= start + switch_at]
        if not after:
            continue
        ok = sum(1 for r in after if 200 <= r[2] < 300)
        s503 = sum(1 for r in after if r[2] == 503)
        times = sorted(r[3] for r in after)
        pct = lambda p: times[min(len(times) - 1, int(len(times) * p))] * 1000
        print(f"class={cls} sent={len(after)} ok={100.0 * ok / len(after):.1f}% "
              f"p50_ms={pct(0.50):.0f} p99_ms={pct(0.99):.0f} s503={s503} "
              f"other={len(after) - ok - s503}", flush=True)


asyncio.run(main())
