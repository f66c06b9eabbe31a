#!/usr/bin/env python3
"""Open-loop miss load for bench/overload.sh: RATE requests per second for DURATION
seconds, each a page the proxy must ask the origin for, whatever came back before.

  overload.py PORT RATE DURATION PREFIX OLD_PAGES OLD_SHARE

A share OLD_SHARE of the requests go to /old-N.html (N < OLD_PAGES, each once): pages
stored earlier and expired past grace, so a stale copy exists. The rest go to
/new-PREFIX-i.html, never seen before. Prints one JSON line: what the visitors got.
"""
import asyncio
import json
import sys
import time

port, rate, duration, prefix = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
old_pages, old_share = int(sys.argv[5]), float(sys.argv[6])
TIMEOUT = 65.0


async def one(path):
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept-Encoding: gzip\r\n"
                     f"Connection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(-1), TIMEOUT)
        writer.close()
    except Exception as e:  # a hung or refused connection is what we want to count
        return {"status": 0, "error": type(e).__name__, "secs": time.monotonic() - started}
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1]) if head and len(head[0].split()) > 1 else 0
    headers = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return {"status": status, "debug": headers.get("x-magento-cache-debug", ""),
            "grace": headers.get("grace", ""), "secs": time.monotonic() - started}


async def main():
    tasks, old_next, i = [], 0, 0
    start = time.monotonic()
    credit = 0.0
    while True:
        now = time.monotonic() - start
        if now >= duration:
            break
        due = int(now * rate) + 1
        while i < due:
            credit += old_share
            if credit >= 1.0 and old_next < old_pages:
                credit -= 1.0
                path = f"/old-{old_next}.html"
                old_next += 1
            else:
                path = f"/new-{prefix}-{i}.html"
            tasks.append(asyncio.create_task(one(path)))
            i += 1
        await asyncio.sleep(0.002)
    results = await asyncio.gather(*tasks)
    out = {"sent": len(results), "fresh": 0, "stale": 0, "shed_503": 0, "bad_gateway_502": 0,
           "other_5xx": 0, "failed": 0, "other": 0}
    answered = []
    for r in results:
        s = r["status"]
        if s == 200 and r.get("grace", "").startswith("unlimited"):
            out["stale"] += 1
        elif s == 200:
            out["fresh"] += 1
        elif s == 503:
            out["shed_503"] += 1
        elif s == 502:
            out["bad_gateway_502"] += 1
        elif s >= 500:
            out["other_5xx"] += 1
        elif s == 0:
            out["failed"] += 1
        else:
            out["other"] += 1
        if s:
            answered.append(r["secs"])
    answered.sort()
    pick = lambda q: answered[min(len(answered) - 1, int(q * len(answered)))] if answered else 0
    out["p50_secs"], out["p99_secs"], out["max_secs"] = pick(0.5), pick(0.99), answered[-1] if answered else 0
    print(json.dumps(out))


asyncio.run(main())
