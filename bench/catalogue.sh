#!/usr/bin/env bash
# A catalogue larger than memory: 200,000 pages with 128 MiB of memory and the disk tier,
# against the same Floodgate holding everything in memory.
#
#   bench/catalogue.sh [pages, default 200000] [memory bytes, default 134217728] [seconds, default 60]
#
# Measures, in one run: (1) the steady-state hit ratio of Zipf visitors (after a warm-up
# of half the measured time), disk tier vs all in memory; (2) disk-hit throughput: every
# page alike (ZIPF_S=0), so nearly every request misses memory and is read from disk,
# with the operating system's page cache warm, against memory hits on the all-memory
# Floodgate; (3) memory-hit throughput of both (1,000 pages held in memory by both).
set -euo pipefail
cd "$(dirname "$0")/.."
export PAGES=${1:-200000}
MEMORY=${2:-134217728}
SECONDS_MEASURED=${3:-60}
DURATION=${DURATION:-20}
source bench/lib.sh
# The origin gzips (fast): a fill of 200,000 pages then costs the proxies no compression.
ORIGIN_ARGS="--gzip --gzip-level 1" start_origin

DISK_PORT=$FG_PORT
MEM_PORT=$((FG_PORT + 2))
start_floodgate "$(printf '[cache]\nmemory_bytes = %s\ndisk_dir = "%s"\ndisk_bytes = 17179869184' "$MEMORY" "$work/disk")" "$DISK_PORT"
start_floodgate "$(printf '[cache]\nmemory_bytes = 17179869184')" "$MEM_PORT"
echo "filling $PAGES pages into each..." >&2
fill "$DISK_PORT" page 1 "$PAGES" > /dev/null
fill "$MEM_PORT" page 1 "$PAGES" > /dev/null
until_metric "$DISK_PORT" floodgate_disk_objects "$PAGES"
disk_mib=$(( $(metric "$DISK_PORT" floodgate_disk_bytes) / 1048576 ))
mem_objects=$(metric "$DISK_PORT" floodgate_cache_objects)
all_mib=$(( $(metric "$MEM_PORT" floodgate_cache_bytes) / 1048576 ))

# (1) Zipf, steady state: warm up, then measure; alternating, disk tier first.
zipf "$DISK_PORT" $((SECONDS_MEASURED / 2)) > /dev/null
zipf "$MEM_PORT" $((SECONDS_MEASURED / 2)) > /dev/null
read -r d_req d_rps d_p99 d_origin d_ratio < <(zipf "$DISK_PORT" "$SECONDS_MEASURED")
read -r m_req m_rps m_p99 m_origin m_ratio < <(zipf "$MEM_PORT" "$SECONDS_MEASURED")

# (2) Every page alike: from disk on one, from memory on the other.
hits_before=$(metric "$DISK_PORT" 'floodgate_disk_lookups_total{result="hit"}')
read -r u_req u_rps u_p99 _ _ < <(ZIPF_S=0 zipf "$DISK_PORT" "$DURATION")
hits_after=$(metric "$DISK_PORT" 'floodgate_disk_lookups_total{result="hit"}')
from_disk=$(python3 -c "import sys; print(f'{100 * int(sys.argv[1]) / max(int(sys.argv[2]), 1):.0f}')" $((hits_after - hits_before)) "$u_req")
read -r a_req a_rps a_p99 _ _ < <(ZIPF_S=0 zipf "$MEM_PORT" "$DURATION")

# (3) Memory hits: 1,000 pages both hold in memory, alternating rounds, median.
fill "$DISK_PORT" page 1 1000 > /dev/null
: > "$work/disk.runs"; : > "$work/mem.runs"
for _ in 1 2 3; do
  HITS_SCRIPT=bench/urls.lua PREFIX=page hits "$DISK_PORT" >> "$work/disk.runs"
  HITS_SCRIPT=bench/urls.lua PREFIX=page hits "$MEM_PORT" >> "$work/mem.runs"
done
median() { sort -n -k"$2" "$1" | awk -v c="$2" '{ v[NR] = $c } END { print v[int((NR + 1) / 2)] }'; }
dh_rps=$(median "$work/disk.runs" 1); mh_rps=$(median "$work/mem.runs" 1)
dh_p99=$(median "$work/disk.runs" 3); mh_p99=$(median "$work/mem.runs" 3)

cat <<TABLE

$PAGES pages: ${disk_mib} MiB of records on disk, $((MEMORY / 1048576)) MiB of memory holding ${mem_objects} of them; the
all-memory Floodgate holds ${all_mib} MiB. $(nproc) cores, proxies pinned to CPUs $SERVER_CPUS, load on $LOAD_CPUS.

| | disk tier, $((MEMORY / 1048576)) MiB memory | all in memory | ratio |
|---|---|---|---|
| Zipf visitors, steady state: hit ratio | ${d_ratio} % | ${m_ratio} % | $(ratio "$d_ratio" "$m_ratio") |
| … origin requests in ${SECONDS_MEASURED} s | ${d_origin} | ${m_origin} | |
| … req/s, p99 | ${d_rps}, ${d_p99} ms | ${m_rps}, ${m_p99} ms | $(ratio "$d_rps" "$m_rps") |
| every page alike: req/s (${from_disk} % read from disk on the left) | ${u_rps} | ${a_rps} | $(ratio "$u_rps" "$a_rps") |
| … p99 | ${u_p99} ms | ${a_p99} ms | |
| memory hits, 1,000 pages: req/s | ${dh_rps} | ${mh_rps} | $(ratio "$dh_rps" "$mh_rps") |
| … p99 | ${dh_p99} ms | ${mh_p99} ms | |
TABLE
