#!/usr/bin/env bash
# Several Floodgate nodes on one Redis (purge bus + shared tier), in one run:
#   1. purge fan-out: 200 purges sent to node B, time until nodes A and C applied each;
#   2. a fresh node joining a warm cluster: open-loop visitors (200/s, Zipf over 2,000
#      pages) for its first minute, against a fresh node with Redis and, at the same
#      time, a fresh node without it.
#
#   bench/cluster.sh [visit_seconds]
# Nodes on CPU 0; Redis, the origin and the load on CPU 1.
set -euo pipefail
cd "$(dirname "$0")/.."
VISIT=${1:-60}
source bench/lib.sh
need redis-server redis-server
REDIS_PORT=$((ORIGIN_PORT + 20))
taskset -c "$LOAD_CPUS" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
  --maxmemory 1gb --maxmemory-policy allkeys-lru >"$work/redis.log" 2>&1 & pids+=($!)
wait_port "$REDIS_PORT"
start_origin
redis_conf="[redis]
url = \"redis://127.0.0.1:$REDIS_PORT\"
key_prefix = \"bench:\""
A=$FG_PORT B=$((FG_PORT + 10)) C=$((FG_PORT + 20)) D=$((FG_PORT + 30)) E=$((FG_PORT + 40))
for port in $A $B $C; do start_floodgate "$redis_conf" "$port"; done

on_load_cpus python3 bench/cluster.py fill "$A" 1 2000
read -r fan < <(on_load_cpus python3 bench/cluster.py fanout "$B" 200 $((A + 100)) $((C + 100)))

start_floodgate "$redis_conf" "$D"
start_floodgate "" "$E"
on_load_cpus python3 bench/cluster.py visit "$D" 2000 200 "$VISIT" > "$work/warm.txt" &
warm_pid=$!
on_load_cpus python3 bench/cluster.py visit "$E" 2000 200 "$VISIT" > "$work/cold.txt"
wait "$warm_pid"

field() { tr ' ' '\n' < "$1" | sed -n "s/^$2=//p"; }
echo "Measured $(date +%F), 3 nodes + 2 fresh ones on CPU 0, Redis $(redis-server --version | grep -o 'v=[0-9.]*' | cut -d= -f2), origin and load on CPU 1."
echo
echo "| measure | value |"
echo "|---|---|"
echo "| purge fan-out to 2 other nodes, 200 purges: p50 / p99 / max | $(field <(echo "$fan") p50) / $(field <(echo "$fan") p99) / $(field <(echo "$fan") max) ms |"
echo "| fresh node joining the warm cluster: hit ratio in its first ${VISIT} s (requests) | $(field "$work/warm.txt" hit_ratio) ($(field "$work/warm.txt" requests), $(field "$work/warm.txt" failed) failed) |"
echo "| fresh node without Redis, same visitors: hit ratio | $(field "$work/cold.txt" hit_ratio) ($(field "$work/cold.txt" requests), $(field "$work/cold.txt" failed) failed) |"
