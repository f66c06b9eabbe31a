#!/usr/bin/env bash
# What the fleet's Redis round trips cost a request: the same node, one after another,
#   - alone (no Redis),
#   - on Redis with the shared tier only (redis.coalesce = false, redis.shared_limit = false),
#   - on Redis as shipped (cross-node coalescing and the fleet's origin budget on),
# each asked for MISSES new pages one at a time (origin answers at once: what is left is
# Floodgate's own time) and then the same pages again (hits). Prints p50 / p99 per layout,
# and the admission round trip the fleet measured.
#
#   bench/miss_cost.sh [misses, default 2000]
set -euo pipefail
cd "$(dirname "$0")/.."
MISSES=${1:-2000}
REDIS_PORT=${REDIS_PORT:-6096}
source bench/lib.sh
need redis-server redis-server

start_origin
taskset -c "$LOAD_CPUS" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
  --appendonly no >"$work/redis.log" 2>&1 & pids+=($!)
wait_port "$REDIS_PORT"

measure() { # port prefix
  on_load_cpus python3 - "$1" "$2" "$MISSES" <<'PY'
import http.client, sys, time
port, prefix, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
def run():
    conn = http.client.HTTPConnection("127.0.0.1", port)
    took = []
    for i in range(n):
        t = time.perf_counter()
        conn.request("GET", f"/{prefix}-{i}.html", headers={"Accept-Encoding": "gzip"})
        conn.getresponse().read()
        took.append((time.perf_counter() - t) * 1000)
    took.sort()
    return took[len(took) // 2], took[int(len(took) * 0.99)]
miss, hit = run(), run()
print(f"miss p50 {miss[0]:.3f} ms p99 {miss[1]:.3f} ms | hit p50 {hit[0]:.3f} ms p99 {hit[1]:.3f} ms")
PY
}

redis="[redis]
url = \"redis://127.0.0.1:$REDIS_PORT\"
key_prefix = \"cost:\""
i=0
for layout in "alone|" \
              "Redis, shared tier only|$redis
coalesce = false
shared_limit = false" \
              "Redis as shipped (coalesce, fleet budget)|$redis"; do
  label=${layout%%|*}; extra=${layout#*|}
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  start_floodgate "$extra"
  sleep 5 # joins the fleet (a lease past its first renewal)
  echo "$label: $(measure "$FG_PORT" "cost$i")"
  [ -n "$extra" ] && echo "  fleet admission round trip: $(curl -s "http://127.0.0.1:$((FG_PORT + 100))/metrics" | python3 -c '
import sys
b = {}
for l in sys.stdin:
    if l.startswith("floodgate_fleet_admission_seconds_sum"): s = float(l.split()[1])
    if l.startswith("floodgate_fleet_admission_seconds_count"): c = float(l.split()[1])
print(f"{1000 * s / c:.3f} ms mean over {c:.0f}" if "c" in dir() and c else "none")' 2>/dev/null || echo none)"
  kill "$FG_PID"; wait "$FG_PID" 2>/dev/null || true
  i=$((i + 1))
done
