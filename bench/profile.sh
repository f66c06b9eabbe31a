#!/usr/bin/env bash
# Where a cache hit's CPU goes, Floodgate beside nginx proxy_cache and Varnish, in one run:
#
#   bench/profile.sh [duration_secs]        (default 8; LAYOUT=pinned as bench/run.sh)
#
# The hit load of bench/run.sh (wrk over 1,000 cached ~40 KB gzipped product pages), one
# warm-up round and one measured round per proxy, the measured round under `perf record`
# (CPU-clock sampling: the VMs this runs on expose no hardware counters). Prints each
# proxy's CPU time per hit split into the kernel's part (the system calls, the loopback
# TCP they drive, interrupts) and the process's own (its code, libc, the allocator), then
# Floodgate's hottest functions. The kernel's part is a floor no user-space change
# lowers: it is what sending a 40 KB answer and reading a request over TCP costs here.
# FG_BIN=path skips the production build; PERF_DATA=dir keeps the recordings.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-8}
ORIGIN_ARGS=${ORIGIN_ARGS---gzip}
source bench/lib.sh
need perf linux-perf
keep=${PERF_DATA:-$work}
mkdir -p "$keep"

start_origin
start_floodgate
start_varnish
V_PID=$(pgrep -n -x varnishd)
start_nginx
for port in "$FG_PORT" "$VARNISH_PORT" "$NGINX_PORT"; do fill "$port" product 1 1000 > /dev/null; done

# profiled NAME PORT PID: a warm-up round, then a measured one under perf ->
# "name rps cpu_us_per_hit kernel_share"
profiled() {
  local name=$1 port=$2 pid=$3 before after result targets
  hits "$port" > /dev/null
  # The process and its children (nginx's workers, Varnish's cache process).
  targets=$(echo "$pid" $(pgrep -P "$pid" || true) | tr ' ' ',')
  before=$(cpu_ticks "$pid")
  perf record -q -F 1999 -p "$targets" -o "$keep/$name.perf" -- sleep "$DURATION" 2>/dev/null &
  local perf_pid=$!
  result=$(hits "$port")
  wait "$perf_pid" || true
  # A perf that could not record (perf_event_paranoid, no permission) must not read as 0 % kernel.
  [ -s "$keep/$name.perf" ] || { echo "bench: perf recorded nothing for $name (run as root, or lower kernel.perf_event_paranoid)" >&2; exit 1; }
  after=$(cpu_ticks "$pid")
  local kernel
  kernel=$(perf report -i "$keep/$name.perf" --no-children --sort dso --stdio 2>/dev/null |
    awk '/\[kernel\.kallsyms\]/ { gsub("%", "", $1); print $1; found = 1 } END { if (!found) print 0 }')
  python3 -c "import os,sys; r=sys.argv[2].split(); t=(int(sys.argv[4])-int(sys.argv[3]))/os.sysconf('SC_CLK_TCK'); print(sys.argv[1], r[0], f'{t/(float(r[0])*float(sys.argv[5]))*1e6:.1f}', sys.argv[6])" \
    "$name" "$result" "$before" "$after" "$DURATION" "$kernel"
}

rows=$(
  profiled floodgate "$FG_PORT" "$FG_PID"
  profiled nginx "$NGINX_PORT" "$NGINX_PID"
  profiled varnish "$VARNISH_PORT" "$V_PID"
)
echo
echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores ($LAYOUT): servers on CPU $SERVER_CPUS, wrk on CPU $LOAD_CPUS, -t$LOAD_THREADS -c${CONNECTIONS:-64} -d${DURATION}s; perf over the measured round."
echo
echo "| hits, 1,000 pages × ~40 KB, gzip | req/s | proxy CPU per hit | in the kernel | in the process |"
echo "|---|---|---|---|---|"
while read -r name rps cpu kernel; do
  python3 -c "import sys; n,r,c,k=sys.argv[1],float(sys.argv[2]),float(sys.argv[3]),float(sys.argv[4]); print(f'| {n} | {r:,.0f} | {c:.1f} µs | {c*k/100:.1f} µs ({k:.0f} %) | {c*(100-k)/100:.1f} µs ({100-k:.0f} %) |')" \
    "$name" "$rps" "$cpu" "$kernel"
done <<< "$rows"
echo
echo "Floodgate's hottest functions (share of its samples, self time):"
perf report -i "$keep/floodgate.perf" --no-children --sort dso,symbol --stdio 2>/dev/null |
  grep -E '^ +[0-9.]+%' | head -25 | cut -c1-150
