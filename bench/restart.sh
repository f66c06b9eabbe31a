#!/usr/bin/env bash
# A restart with 50,000 pages cached: what shop-like visitors (Zipf) get in the first
# minute after it, Floodgate with its disk tier against Floodgate in memory only and
# Varnish (both of which come back empty: a restart of either is a cold start).
#
#   bench/restart.sh [pages, default 50000] [seconds measured, default 60]
#
# Floodgate with the disk tier fills the pages, is restarted as `systemctl restart` does
# (SIGTERM, graceful exit, a new process), and is measured from its first second; the
# other two are measured from a cold start. Prints a Markdown table: hit ratio (requests
# the origin did not see), origin requests in that minute, time from start to serving.
set -euo pipefail
cd "$(dirname "$0")/.."
export PAGES=${1:-50000}
MINUTE=${2:-60}
source bench/lib.sh
start_origin

disk_conf=$(printf '[cache]\nmemory_bytes = 4294967296\ndisk_dir = "%s"\ndisk_bytes = 8589934592' "$work/disk")
start_floodgate "$disk_conf"
echo "filling $PAGES pages..." >&2
fill "$FG_PORT" page 1 "$PAGES" > /dev/null
until_metric "$FG_PORT" floodgate_disk_objects "$PAGES"
syncs=$(metric "$FG_PORT" floodgate_disk_syncs_total)
until_metric "$FG_PORT" floodgate_disk_syncs_total $((syncs + 1))
disk_mib=$(( $(metric "$FG_PORT" floodgate_disk_bytes) / 1048576 ))
file_mib=$(( $(stat -c %s "$work/disk/cache.redb") / 1048576 ))

# systemctl restart: SIGTERM, wait for the exit, start again.
kill -TERM "$FG_PID"
t_stop=$(date +%s.%N)
while kill -0 "$FG_PID" 2>/dev/null; do sleep 0.05; done
t0=$(date +%s.%N)
start_floodgate "$disk_conf"
until curl -sf -o /dev/null "http://127.0.0.1:$FG_PORT/page-1.html"; do sleep 0.01; done
t_serving=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$t0" "$(date +%s.%N)")
t_exit=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t_stop" "$t0")
until_metric "$FG_PORT" floodgate_disk_open 1
recovery=$(curl -s "http://127.0.0.1:$((FG_PORT + 100))/metrics" | awk '$1 == "floodgate_disk_recovery_seconds" { print $2 }')
read -r d_req d_rps d_p99 d_origin d_ratio < <(zipf "$FG_PORT" "$MINUTE")
disk_hits=$(metric "$FG_PORT" 'floodgate_disk_lookups_total{result="hit"}')

MEM_PORT=$((FG_PORT + 2))
start_floodgate "$(printf '[cache]\nmemory_bytes = 4294967296')" "$MEM_PORT"
read -r m_req m_rps m_p99 m_origin m_ratio < <(zipf "$MEM_PORT" "$MINUTE")
start_varnish
read -r v_req v_rps v_p99 v_origin v_ratio < <(zipf "$VARNISH_PORT" "$MINUTE")

cat <<TABLE

Restart with $PAGES pages cached (${disk_mib} MiB of records, a ${file_mib} MiB file), then ${MINUTE} s of
Zipf visitors (s = ${ZIPF_S:-1}, $(nproc) cores, proxies pinned to CPUs $SERVER_CPUS):

| first ${MINUTE} s after the restart | hit ratio | origin requests | requests | req/s | p99 |
|---|---|---|---|---|---|
| Floodgate, disk tier | ${d_ratio} % | ${d_origin} | ${d_req} | ${d_rps} | ${d_p99} ms |
| Floodgate, memory only (starts empty) | ${m_ratio} % | ${m_origin} | ${m_req} | ${m_rps} | ${m_p99} ms |
| Varnish (starts empty) | ${v_ratio} % | ${v_origin} | ${v_req} | ${v_rps} | ${v_p99} ms |

Floodgate with the disk tier: the old process took ${t_exit} s to exit (graceful); the new one
served its first page ${t_serving} s after it was started and had the disk open (index of
$PAGES objects rebuilt) after ${recovery} s; ${disk_hits} requests were answered from disk
in that minute.
TABLE
