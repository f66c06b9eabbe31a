#!/usr/bin/env bash
# Floodgate vs Varnish, side by side, in front of the same origin, in one run.
#
#   bench/run.sh [duration_secs]
#
# The servers under test share the first half of the cores (one core on a 2-core box)
# and the load generator runs on the other half, so neither proxy competes with wrk for
# CPU: sharing cores with the load generator measures the scheduler, not the proxy.
#
# Measures (1) cache-hit throughput and latency with wrk over 1,000 cached ~40 KB
# product pages (clients accept gzip, as browsers do), and (2) origin requests when 500
# clients ask for one cold page at once, and again for an expired one. Prints a
# Markdown table with Floodgate/Varnish ratios. Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-15}
CONNECTIONS=${CONNECTIONS:-64}
source bench/lib.sh

start_origin
start_floodgate
start_varnish
fill "$FG_PORT" product 1 1000 > /dev/null
fill "$VARNISH_PORT" product 1 1000 > /dev/null

# Alternate rounds, so neither always runs on a warmer machine; report the median round.
ROUNDS=${ROUNDS:-3}
: > "$work/fg.runs"; : > "$work/v.runs"
for _ in $(seq 1 "$ROUNDS"); do
  hits "$FG_PORT" >> "$work/fg.runs"
  hits "$VARNISH_PORT" >> "$work/v.runs"
done
median() { # file column
  sort -n -k"$2" "$1" | awk -v c="$2" '{ v[NR] = $c } END { print v[int((NR + 1) / 2)] }'
}
fg_rps=$(median "$work/fg.runs" 1); v_rps=$(median "$work/v.runs" 1)
fg_p50=$(median "$work/fg.runs" 2); v_p50=$(median "$work/v.runs" 2)
fg_p99=$(median "$work/fg.runs" 3); v_p99=$(median "$work/v.runs" 3)
fg_err=$(awk '{ s += $4 } END { print s }' "$work/fg.runs"); v_err=$(awk '{ s += $4 } END { print s }' "$work/v.runs")

origin_count() { curl -s "http://127.0.0.1:$ORIGIN_PORT/__count?url=$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['count'])"; }
stampede() { # port url -> origin requests caused
  local before; before=$(origin_count "$2")
  taskset -c "$LOAD_CPUS" python3 bench/stampede.py "http://127.0.0.1:$1$2" 500 > "$work/ok"
  sleep 0.5
  echo "$(( $(origin_count "$2") - before )) $(cat "$work/ok")"
}
read -r fg_cold fg_cold_ok < <(stampede "$FG_PORT" /stampede-fg.html)
read -r v_cold v_cold_ok < <(stampede "$VARNISH_PORT" /stampede-varnish.html)
curl -s -o /dev/null "http://127.0.0.1:$FG_PORT/expiring-fg.html"
curl -s -o /dev/null "http://127.0.0.1:$VARNISH_PORT/expiring-varnish.html"
sleep 2.2
read -r fg_exp fg_exp_ok < <(stampede "$FG_PORT" /expiring-fg.html)
read -r v_exp v_exp_ok < <(stampede "$VARNISH_PORT" /expiring-varnish.html)
sleep 1.5 # let background refreshes land in the counts
fg_exp=$(( $(origin_count /expiring-fg.html) - 1 )); v_exp=$(( $(origin_count /expiring-varnish.html) - 1 ))

# Memory: a fresh Floodgate filled with MEMORY_PAGES distinct pages of varied text;
# resident size against the bytes of the bodies it stores (gzipped, as served to gzip
# clients, so summed from what the fill downloaded).
MEMORY_PAGES=${MEMORY_PAGES:-50000}
kill "$FG_PID"; wait "$FG_PID" 2>/dev/null || true
start_floodgate "$(printf '[cache]\nmemory_bytes = 8589934592')"
fill "$FG_PORT" page 1 "$MEMORY_PAGES" > "$work/sizes"
stored_bytes=$(awk '{ s += $1 } END { print s }' "$work/sizes")
fetched=$(wc -l < "$work/sizes")
sleep 2
fg_rss=$(( $(awk '/VmRSS/ {print $2}' "/proc/$FG_PID/status") * 1024 ))
cat <<TABLE
Measured $(date -u +%Y-%m-%d) on $cores cores: proxies on CPU $SERVER_CPUS (Floodgate threads = $half), load on CPU $LOAD_CPUS; wrk -t$LOAD_THREADS -c$CONNECTIONS -d${DURATION}s, median of $ROUNDS alternating rounds each.

| measure | Floodgate | Varnish $(varnishd -V 2>&1 | grep -o 'varnish-[0-9.]*' | head -1 | cut -d- -f2) | Floodgate/Varnish |
|---|---|---|---|
| hit throughput, req/s (1,000 pages × ~40 KB, gzip) | $fg_rps | $v_rps | $(ratio "$fg_rps" "$v_rps") |
| hit latency p50, ms | $fg_p50 | $v_p50 | $(ratio "$fg_p50" "$v_p50") |
| hit latency p99, ms | $fg_p99 | $v_p99 | $(ratio "$fg_p99" "$v_p99") |
| non-2xx during the hit runs | $fg_err | $v_err | |
| origin requests, 500 clients on one cold page (200s) | $fg_cold ($fg_cold_ok/500) | $v_cold ($v_cold_ok/500) | |
| origin requests, 500 clients on one expired page (200s) | $fg_exp ($fg_exp_ok/500) | $v_exp ($v_exp_ok/500) | |
| Floodgate resident memory, $fetched pages cached | $((fg_rss / 1048576)) MiB for $((stored_bytes / 1048576)) MiB of stored bodies: $(ratio "$fg_rss" "$stored_bytes") × | | |
TABLE
