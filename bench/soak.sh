#!/usr/bin/env bash
# Soak: mixed traffic for a long time while things break, as on a shop's worst day.
# Zipf visitors over 20,000 product pages at 300/s on 32 kept-alive connections, the
# catalogue filled first into a cache bounded below it (so the tail misses and evicts); a purge of a random product tag
# every 3 s (20 a minute); a config reload (SIGHUP) every minute; Redis (shared tier and
# purge bus) killed and restarted twice; the origin killed and restarted once.
# Prints requests by status (503s while the origin was down are expected and counted
# apart; any other 503, any 502, any error is not), Floodgate's resident memory at 5
# minutes and at the end, and its open file descriptors over the run.
#
#   bench/soak.sh [minutes, default 30]      e.g. bench/soak.sh 5 for a short run
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-30}
DURATION=$((MINUTES * 60))
RATE=${RATE:-300}
PAGES=${PAGES:-20000}
REDIS_PORT=${REDIS_PORT:-6099}
source bench/lib.sh
need redis-server redis-server

start_redis() {
  taskset -c "$LOAD_CPUS" redis-server --port "$REDIS_PORT" --save '' --appendonly no \
    >"$work/redis.log" 2>&1 & pids+=($!)
  REDIS_PID=$!
  wait_port "$REDIS_PORT"
}

start_origin; ORIGIN_PID=${pids[-1]}
start_redis
# The cache is bounded small (16 MiB, about a third of the catalogue) so that it is full,
# evicting, by the first sample: what a long-running node looks like. Resident memory
# must then stay flat.
start_floodgate "[cache]
memory_bytes = ${MEMORY_BYTES:-16777216}
[redis]
url = \"redis://127.0.0.1:$REDIS_PORT\"
shared_cache = true"
# The whole catalogue first: the cache is at its bound from the start, so the first
# memory sample is a full node's, not one still filling.
fill "$FG_PORT" product 1 "$PAGES" >/dev/null

sample() { # second -> "second rss_kb fds cache_bytes"
  echo "$1 $(awk '/^VmRSS/ {print $2}' "/proc/$FG_PID/status") $(ls "/proc/$FG_PID/fd" | wc -l)" \
    "$(curl -s "http://127.0.0.1:$((FG_PORT + 100))/metrics" | awk '/^floodgate_cache_bytes / {print $2}')"
}

on_load_cpus python3 bench/soak.py "127.0.0.1:$FG_PORT" "$PAGES" "$RATE" "$DURATION" "$work/answers" &
load=$!
start=$(date +%s)
redis_kills=($((DURATION * 25 / 100)) $((DURATION * 65 / 100)))
origin_kill=$((DURATION * 45 / 100))
origin_down="" origin_up="" last=-1
: > "$work/samples"
while kill -0 "$load" 2>/dev/null; do
  t=$(( $(date +%s) - start ))
  if [ "$t" -eq "$last" ]; then sleep 0.2; continue; fi
  last=$t
  [ $((t % 3)) -eq 0 ] && curl -s -o /dev/null -X PURGE -H "X-Magento-Tags-Pattern: ((^|,)cat_p_$((RANDOM % 2000 + 1))(,|\$))" "http://127.0.0.1:$FG_PORT/" || true
  [ $((t % 60)) -eq 30 ] && kill -HUP "$FG_PID"
  [ $((t % 60)) -eq 0 ] && sample "$t" >> "$work/samples"
  if [ "${#redis_kills[@]}" -gt 0 ] && [ "$t" -ge "${redis_kills[0]}" ]; then
    redis_kills=("${redis_kills[@]:1}")
    kill "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true
    echo "soak: t=${t}s Redis killed, back in 5 s"; sleep 5; start_redis
  fi
  if [ "$t" -ge "$origin_kill" ] && [ -z "$origin_down" ]; then
    origin_down=$t
    kill "$ORIGIN_PID"; wait "$ORIGIN_PID" 2>/dev/null || true
    echo "soak: t=${t}s origin killed, back in 5 s"; sleep 5
    start_origin; ORIGIN_PID=${pids[-1]}
    origin_up=$(( $(date +%s) - start ))
  fi
done
sample "$(( $(date +%s) - start ))" >> "$work/samples"
kill -0 "$FG_PID" || { echo "soak: Floodgate died" >&2; exit 1; }

python3 - "$work/answers" "$work/samples" "${origin_down:-0}" "${origin_up:-0}" <<'PY'
import collections, sys
answers, samples = sys.argv[1], sys.argv[2]
down, up = int(sys.argv[3]), int(sys.argv[4])
# 503s while the origin was down (from the second before: the load's clock starts up to
# 1 s before this script's), and until the health probe saw it back (10 s), are
# what an uncached page gets with no origin at all.
expected = lambda s: down - 1 <= s <= up + 10
by_status = collections.Counter()
unexpected_503 = 0
unexpected_at = collections.Counter()
for line in open(answers):
    second, status = map(int, line.split())
    by_status[status] += 1
    if status == 503 and not expected(second):
        unexpected_503 += 1
        unexpected_at[second] += 1
total = sum(by_status.values())
print("requests:", total, " by status:", dict(sorted(by_status.items())))
print(f"503 outside the origin's outage (+10 s): {unexpected_503}; 502: {by_status[502]}; no answer: {by_status[-1]}")
if unexpected_at:
    print("  at seconds:", dict(sorted(unexpected_at.items())))
print(f"origin down at {down} s, back at {up} s")
rows = [tuple(int(float(x)) for x in l.split()) for l in open(samples) if len(l.split()) == 4]
at5 = next((r for r in rows if r[0] >= 300), rows[0])
end = rows[-1]
print(f"RSS at {at5[0]} s: {at5[1] / 1024:.1f} MiB; at {end[0]} s: {end[1] / 1024:.1f} MiB "
      f"({100.0 * (end[1] - at5[1]) / at5[1]:+.1f} %); cache held then: "
      f"{float(at5[3]) / 2**20:.1f} and {float(end[3]) / 2**20:.1f} MiB")
print("samples (s, RSS MiB, fds, cache MiB):",
      " ".join(f"{r[0]}:{r[1] / 1024:.0f}/{r[2]}/{float(r[3]) / 2**20:.0f}" for r in rows))
fds = [r[2] for r in rows]
print(f"open fds: min {min(fds)}, max {max(fds)}, at the end {fds[-1]}")
PY
