#!/usr/bin/env bash
# Black Friday overload: the origin is a PHP-FPM pool of 8 workers at 200 ms a page
# (40 pages/s) behind nginx, offered 200 misses/s plus cache hits for 20 s. In one run,
# one after the other on the same origin:
#   - Floodgate with `limits.max_inflight = 8`
#   - Varnish with Magento's VCL and `.max_connections = 8` on the backend
#   - Varnish with Magento's VCL as generated (no connection limit), for reference
#
#   bench/overload.sh [duration_secs]
#
# The origin (bench/origin.py --pool 8 --backlog 64) renders 8 pages at once; up to 64
# more wait in its backlog; beyond that it answers 502 at once, as nginx does when
# PHP-FPM's listen queue is full. Its health check bypasses the pool.
# 15 % of the misses are pages stored earlier and expired past grace (1 s in both
# proxies here), so a stale copy exists; the rest were never seen.
# Hits: wrk, 16 connections over 1,000 stored pages, niced so the origin and the miss
# generator (which share the load core with it) are not starved.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-20}
RATE=${RATE:-200}
OLD_PAGES=${OLD_PAGES:-600}
CONNECTIONS=16
ORIGIN_ARGS="--pool 8 --backlog 64"
source bench/lib.sh

origin() { curl -sf "http://127.0.0.1:$ORIGIN_PORT$1"; }
json() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

start_origin
start_floodgate "[cache]
grace_secs = 1
[limits]
max_inflight = 8"
V8_PORT=$VARNISH_PORT; VSTOCK_PORT=$((VARNISH_PORT + 1))
start_varnish "$V8_PORT" 's/\.first_byte_timeout = 600s;/.first_byte_timeout = 600s; .max_connections = 8;/; s/obj.ttl + 300s/obj.ttl + 1s/'
start_varnish "$VSTOCK_PORT" 's/obj.ttl + 300s/obj.ttl + 1s/'
grep -q "max_connections = 8" "$work/magento-$V8_PORT.vcl"

measure() { # port label slug
  local port=$1 label=$2 slug=$3
  origin "/__delay?ms=0" >/dev/null
  fill "$port" product 1 1000 >/dev/null
  fill "$port" old 0 $((OLD_PAGES - 1)) >/dev/null
  sleep 3 # the old pages expire past their 1 s of grace
  origin "/__reset" >/dev/null
  origin "/__delay?ms=200" >/dev/null
  LOAD_NICE=19 LOAD_THREADS=1 hits "$port" > "$work/hits-$port" &
  local hits_pid=$!
  local misses
  misses=$(on_load_cpus python3 bench/overload.py "$port" "$RATE" "$DURATION" "$slug" "$OLD_PAGES" 0.15)
  wait "$hits_pid"
  local stats; stats=$(origin "/__stats")
  read -r rps _ p99 non2xx < "$work/hits-$port"
  local sent fresh stale shed bad other failed
  sent=$(json "$misses" sent); fresh=$(json "$misses" fresh); stale=$(json "$misses" stale)
  shed=$(json "$misses" shed_503); bad=$(json "$misses" bad_gateway_502)
  other=$(json "$misses" other_5xx); failed=$(json "$misses" failed)
  pct() { python3 -c "import sys; print(f'{100*int(sys.argv[1])/max(1,int(sys.argv[2])):.1f} %')" "$1" "$sent"; }
  echo "$misses" > "$work/misses-$slug.json"
  echo "| $label | $(json "$stats" max_concurrency) | $(json "$stats" bad_gateway) | $bad | $shed | $other / $failed | $p99 ms ($rps req/s, $non2xx non-2xx) | $(pct "$fresh") / $(pct "$stale") / $(pct "$shed") | $(json "$misses" p50_secs | xargs printf '%.2f') / $(json "$misses" max_secs | xargs printf '%.1f') s |"
  # Let the origin drain before the next proxy.
  origin "/__delay?ms=0" >/dev/null
  sleep 5
}

echo "Origin: PHP-FPM pool of 8 at 200 ms/page (40 pages/s), backlog 64. Offered ${RATE} misses/s + hits for ${DURATION} s."
echo
echo "| proxy | origin max concurrency | origin 502s (backlog full) | 502s to visitors | 503s to visitors | other 5xx / failed | hit p99 during overload | misses: fresh / stale / shed | miss answer p50 / max |"
echo "|---|---|---|---|---|---|---|---|---|"
measure "$FG_PORT" "Floodgate, max_inflight = 8" fg
measure "$V8_PORT" "Varnish, .max_connections = 8" v8
measure "$VSTOCK_PORT" "Varnish, Magento's VCL as generated" vstock
