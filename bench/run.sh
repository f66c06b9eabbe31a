#!/usr/bin/env bash
# Floodgate vs Varnish vs nginx proxy_cache, side by side, in front of the same origin,
# in one run.
#
#   bench/run.sh [duration_secs]            (LAYOUT=pinned, the default)
#   LAYOUT=shared bench/run.sh [duration_secs]
#
# Pinned: the servers under test share the first half of the cores (one core on a
# 2-core box) and the load generator runs on the other half, so no proxy competes with
# wrk for CPU. Shared: servers and load on every core, each server with a thread or
# worker per core, as a one-box shop runs them. The origin gzips (as Magento's nginx
# does), so the three store and serve the same gzip bytes.
#
# Measures (1) cache-hit throughput and latency with wrk over 1,000 cached ~40 KB
# product pages (clients accept gzip, as browsers do) with each proxy's CPU time per
# hit, and (2) origin requests when 500 clients ask for one cold page at once, and again
# for an expired one. Prints a Markdown table with Floodgate/Varnish and Floodgate/nginx
# ratios. Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-15}
CONNECTIONS=${CONNECTIONS:-64}
ORIGIN_ARGS=${ORIGIN_ARGS---gzip}
source bench/lib.sh

start_origin
start_floodgate
start_varnish
V_PID=$(pgrep -n -x varnishd)
start_nginx
fill "$FG_PORT" product 1 1000 > /dev/null
fill "$VARNISH_PORT" product 1 1000 > /dev/null
fill "$NGINX_PORT" product 1 1000 > /dev/null

# measured PORT PID: hits, and the proxy's CPU per hit -> "rps p50 p99 non2xx cpu_us"
measured() {
  local before after result
  before=$(cpu_ticks "$2")
  result=$(hits "$1")
  after=$(cpu_ticks "$2")
  python3 -c "import os,sys; r=sys.argv[1].split(); t=(int(sys.argv[3])-int(sys.argv[2]))/os.sysconf('SC_CLK_TCK'); print(*r, f'{t/(float(r[0])*float(sys.argv[4]))*1e6:.1f}')" \
    "$result" "$before" "$after" "$DURATION"
}

# Alternate rounds, so none always runs on a warmer machine; report the median round.
ROUNDS=${ROUNDS:-3}
: > "$work/fg.runs"; : > "$work/v.runs"; : > "$work/n.runs"
for _ in $(seq 1 "$ROUNDS"); do
  measured "$FG_PORT" "$FG_PID" >> "$work/fg.runs"
  measured "$VARNISH_PORT" "$V_PID" >> "$work/v.runs"
  measured "$NGINX_PORT" "$NGINX_PID" >> "$work/n.runs"
done
median() { # file column
  sort -n -k"$2" "$1" | awk -v c="$2" '{ v[NR] = $c } END { print v[int((NR + 1) / 2)] }'
}
fg_rps=$(median "$work/fg.runs" 1); v_rps=$(median "$work/v.runs" 1); n_rps=$(median "$work/n.runs" 1)
fg_p50=$(median "$work/fg.runs" 2); v_p50=$(median "$work/v.runs" 2); n_p50=$(median "$work/n.runs" 2)
fg_p99=$(median "$work/fg.runs" 3); v_p99=$(median "$work/v.runs" 3); n_p99=$(median "$work/n.runs" 3)
fg_cpu=$(median "$work/fg.runs" 5); v_cpu=$(median "$work/v.runs" 5); n_cpu=$(median "$work/n.runs" 5)
errors() { awk '{ s += $4 } END { print s }' "$work/$1.runs"; }
fg_err=$(errors fg); v_err=$(errors v); n_err=$(errors n)

origin_count() { curl -s "http://127.0.0.1:$ORIGIN_PORT/__count?url=$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['count'])"; }
stampede() { # port url -> origin requests caused
  local before; before=$(origin_count "$2")
  taskset -c "$LOAD_CPUS" python3 bench/stampede.py "http://127.0.0.1:$1$2" 500 > "$work/ok"
  sleep 0.5
  echo "$(( $(origin_count "$2") - before )) $(cat "$work/ok")"
}
read -r fg_cold fg_cold_ok < <(stampede "$FG_PORT" /stampede-fg.html)
read -r v_cold v_cold_ok < <(stampede "$VARNISH_PORT" /stampede-varnish.html)
read -r n_cold n_cold_ok < <(stampede "$NGINX_PORT" /stampede-nginx.html)
curl -s -o /dev/null "http://127.0.0.1:$FG_PORT/expiring-fg.html"
curl -s -o /dev/null "http://127.0.0.1:$VARNISH_PORT/expiring-varnish.html"
curl -s -o /dev/null "http://127.0.0.1:$NGINX_PORT/expiring-nginx.html"
sleep 2.2
read -r fg_exp fg_exp_ok < <(stampede "$FG_PORT" /expiring-fg.html)
read -r v_exp v_exp_ok < <(stampede "$VARNISH_PORT" /expiring-varnish.html)
read -r n_exp n_exp_ok < <(stampede "$NGINX_PORT" /expiring-nginx.html)
sleep 1.5 # let background refreshes land in the counts
fg_exp=$(( $(origin_count /expiring-fg.html) - 1 )); v_exp=$(( $(origin_count /expiring-varnish.html) - 1 ))
n_exp=$(( $(origin_count /expiring-nginx.html) - 1 ))

# Memory: a fresh Floodgate filled with MEMORY_PAGES distinct pages of varied text;
# resident size against the bytes of the bodies it stores (gzipped, as served to gzip
# clients, so summed from what the fill downloaded).
MEMORY_PAGES=${MEMORY_PAGES:-50000}
kill "$FG_PID"; wait "$FG_PID" 2>/dev/null || true
start_floodgate "$(printf '[cache]\nmemory_bytes = 8589934592')"
fill "$FG_PORT" page 1 "$MEMORY_PAGES" > /dev/null
# Sized from hits: a miss goes out recompressed as it streams, a hit sends what is stored.
fill "$FG_PORT" page 1 "$MEMORY_PAGES" > "$work/sizes"
stored_bytes=$(awk '{ s += $1 } END { print s }' "$work/sizes")
fetched=$(wc -l < "$work/sizes")
sleep 2
fg_rss=$(( $(awk '/VmRSS/ {print $2}' "/proc/$FG_PID/status") * 1024 ))
cat <<TABLE
Measured $(date -u +%Y-%m-%d) on $cores cores, layout $LAYOUT: proxies on CPU $SERVER_CPUS (Floodgate threads = $half, nginx workers = $half), load on CPU $LOAD_CPUS; wrk -t$LOAD_THREADS -c$CONNECTIONS -d${DURATION}s, origin ${ORIGIN_ARGS:-without gzip}, median of $ROUNDS alternating rounds each.

| measure | Floodgate | Varnish $(varnishd -V 2>&1 | grep -o 'varnish-[0-9.]*' | head -1 | cut -d- -f2) | nginx $(nginx -v 2>&1 | grep -o '[0-9.]*$') proxy_cache | Floodgate/Varnish | Floodgate/nginx |
|---|---|---|---|---|---|
| hit throughput, req/s (1,000 pages × ~40 KB, gzip) | $fg_rps | $v_rps | $n_rps | $(ratio "$fg_rps" "$v_rps") | $(ratio "$fg_rps" "$n_rps") |
| hit latency p50, ms | $fg_p50 | $v_p50 | $n_p50 | $(ratio "$fg_p50" "$v_p50") | $(ratio "$fg_p50" "$n_p50") |
| hit latency p99, ms | $fg_p99 | $v_p99 | $n_p99 | $(ratio "$fg_p99" "$v_p99") | $(ratio "$fg_p99" "$n_p99") |
| proxy CPU per hit, µs | $fg_cpu | $v_cpu | $n_cpu | $(ratio "$fg_cpu" "$v_cpu") | $(ratio "$fg_cpu" "$n_cpu") |
| non-2xx during the hit runs | $fg_err | $v_err | $n_err | | |
| origin requests, 500 clients on one cold page (200s) | $fg_cold ($fg_cold_ok/500) | $v_cold ($v_cold_ok/500) | $n_cold ($n_cold_ok/500) | | |
| origin requests, 500 clients on one expired page (200s) | $fg_exp ($fg_exp_ok/500) | $v_exp ($v_exp_ok/500) | $n_exp ($n_exp_ok/500) | | |
| Floodgate resident memory, $fetched pages cached | $((fg_rss / 1048576)) MiB for $((stored_bytes / 1048576)) MiB of stored bodies: $(ratio "$fg_rss" "$stored_bytes") × | | | | |
TABLE
