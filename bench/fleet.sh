#!/usr/bin/env bash
# The promotion hour across a fleet: does scaling out keep the single box's promises?
# One PHP-FPM-like origin (8 workers at 200 ms a page, backlog 64, then 502 as nginx
# answers), one redis-server, and Floodgate nodes behind haproxy (round-robin), each with
# limits.max_inflight = 8 (= pm.max_children, as the README says) and hard purges with
# kept copies (purge.keep_purged_secs = 600). The load is bench/rehearsal.py through the
# balancer: 2,000 cached product pages, browse 300/s then 600/s (Zipf), new search pages
# 10/s, a crawler 15/s, cart POSTs 5/s, and at the switch one Magento PURGE (through the
# balancer, so one node) of half the products, the hottest included. The same run for
# 1 node and for 3 nodes. Prints, for each: what each class got after the switch, what
# PHP-FPM saw (most requests at once, most waiting in its listen queue, 502s), and the
# origin requests per purged page in the minute after the switch.
#
#   bench/fleet.sh [duration_secs, default 60] [switch_at_secs, default 20]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-60}
SWITCH_AT=${2:-20}
PAGES=${PAGES:-2000}
ORIGIN_ARGS="--pool 8 --backlog 64"
REDIS_PORT=${REDIS_PORT:-6096} LB_PORT=${LB_PORT:-6097}
NODE_PORTS=(6200 6210 6220)
source bench/lib.sh
need haproxy haproxy; need redis-server redis-server

origin() { curl -sf "http://127.0.0.1:$ORIGIN_PORT$1"; }
json() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

start_origin
taskset -c "$LOAD_CPUS" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
  --appendonly no >"$work/redis.log" 2>&1 & pids+=($!)
wait_port "$REDIS_PORT"

# Every visitor comes from 127.0.0.1 through haproxy: the per-client cap is off.
NODE_CONF="[limits]
max_inflight = 8
max_inflight_per_client = 0
[purge]
keep_purged_secs = 600
[redis]
url = \"redis://127.0.0.1:$REDIS_PORT\"
key_prefix = \"fleet-bench:\""

# balance N: haproxy round-robin over the first N nodes, on LB_PORT.
balance() {
  local n=$1 servers="" i
  for i in $(seq 0 $((n - 1))); do
    servers+="  server n$i 127.0.0.1:${NODE_PORTS[$i]}
"
  done
  cat > "$work/haproxy.cfg" <<CFG
global
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend shop
  bind 127.0.0.1:$LB_PORT
  default_backend nodes
backend nodes
  balance roundrobin
$servers
CFG
  taskset -c "$LOAD_CPUS" haproxy -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 & pids+=($!)
  HAPROXY_PID=$!
  wait_port "$LB_PORT"
}

rehearse() { # nodes
  local n=$1 i node_pids=()
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  for i in $(seq 0 $((n - 1))); do
    start_floodgate "$NODE_CONF" "${NODE_PORTS[$i]}"
    node_pids+=("$FG_PID")
    # On the fleet's budget before the load starts.
    for _ in $(seq 1 100); do
      [ "$(metric "${NODE_PORTS[$i]}" floodgate_fleet_fallback)" = 0 ] && break
      sleep 0.1
    done
  done
  balance "$n"
  origin "/__delay?ms=0" >/dev/null
  fill "$LB_PORT" product 1 "$PAGES" >/dev/null
  # Every node serves every page once (the shop's Host), as behind a balancer over a day.
  for i in $(seq 0 $((n - 1))); do
    seq 1 "$PAGES" | on_load_cpus xargs -n 500 -P 4 sh -c '
      port=$1 lb=$2; shift 2
      for n in "$@"; do printf "url = \"http://127.0.0.1:%s/product-%s.html\"\noutput = \"/dev/null\"\n" "$port" "$n"; done |
      curl -s -m 60 -H "Host: 127.0.0.1:$lb" -H "Accept-Encoding: gzip" -K -' _ "${NODE_PORTS[$i]}" "$LB_PORT" >/dev/null
  done
  origin "/__reset" >/dev/null
  local purged_before; purged_before=$(json "$(origin "/__sum?first=1&last=$((PAGES / 2))")" count)
  origin "/__delay?ms=200" >/dev/null
  echo "== $n node(s) behind haproxy, one origin budget of 8"
  on_load_cpus python3 bench/rehearsal.py "127.0.0.1:$LB_PORT" "$PAGES" "$DURATION" "$SWITCH_AT"
  local stats purged_after max
  stats=$(origin "/__stats")
  purged_after=$(json "$(origin "/__sum?first=1&last=$((PAGES / 2))")" count)
  max=$(json "$stats" max_concurrency)
  echo "php-fpm: max_active=$(( max < 8 ? max : 8 )) max_listen_queue=$(( max > 8 ? max - 8 : 0 )) bad_gateway=$(json "$stats" bad_gateway)"
  python3 -c "import sys; print(f'origin requests per purged page: {(int(sys.argv[2]) - int(sys.argv[1])) / int(sys.argv[3]):.2f}')" \
    "$purged_before" "$purged_after" "$((PAGES / 2))"
  for i in $(seq 0 $((n - 1))); do
    echo "node $i: fallback=$(metric "${NODE_PORTS[$i]}" floodgate_fleet_fallback) purged_copies_served=$(metric "${NODE_PORTS[$i]}" floodgate_purged_copies_served_total) rewarmed=$(metric "${NODE_PORTS[$i]}" 'floodgate_warm_requests_total{result="fetched"}')"
  done
  kill "$HAPROXY_PID" "${node_pids[@]}"; wait "$HAPROXY_PID" "${node_pids[@]}" 2>/dev/null || true
}

rehearse 1
rehearse 3
