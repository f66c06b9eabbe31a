#!/usr/bin/env bash
# A promotion's start, rehearsed on the PHP-FPM-like origin (8 workers at 200 ms a page,
# 40 pages/s, backlog 64, then 502 as nginx answers): 2,000 cached product pages, browse
# 300/s then 600/s (Zipf), new search pages 10/s, a crawler 15/s, cart POSTs 5/s, and at
# the switch one Magento PURGE of half the products (the hottest included). One after
# the other on the same origin:
#   - Varnish 7 with Magento's VCL as generated (no connection limit)
#   - Floodgate, hard purge (the default)
#   - Floodgate, `purge.keep_purged_secs = 600` (the middle road)
#   - Floodgate, `purge.soft = true`
# Prints, per proxy, what each class got after the switch, and the origin's load.
#
#   bench/rehearsal.sh [duration_secs, default 60] [switch_at_secs, default 20]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-60}
SWITCH_AT=${2:-20}
PAGES=${PAGES:-2000}
ORIGIN_ARGS="--pool 8 --backlog 64"
source bench/lib.sh

origin() { curl -sf "http://127.0.0.1:$ORIGIN_PORT$1"; }
json() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

start_origin

rehearse() { # port label
  local port=$1 label=$2
  origin "/__delay?ms=0" >/dev/null
  fill "$port" product 1 "$PAGES" >/dev/null
  origin "/__reset" >/dev/null
  origin "/__delay?ms=200" >/dev/null
  echo "== $label"
  on_load_cpus python3 bench/rehearsal.py "127.0.0.1:$port" "$PAGES" "$DURATION" "$SWITCH_AT"
  local stats; stats=$(origin "/__stats")
  # Beyond the 8 workers, what waited in the FPM listen queue at most, and what nginx refused.
  echo "origin: listen_queue_max=$(( $(json "$stats" max_concurrency) > 8 ? $(json "$stats" max_concurrency) - 8 : 0 )) bad_gateway=$(json "$stats" bad_gateway)"
}

# Every visitor here comes from 127.0.0.1: the per-client cap (meant for one abusive
# address among many) is off, or the whole shop would be one client.
FLOODGATE_LIMITS="[limits]
max_inflight = 8
max_inflight_per_client = 0"

start_varnish "$VARNISH_PORT"
rehearse "$VARNISH_PORT" "Varnish, Magento's VCL as generated"
kill "${pids[-1]}"; sleep 1

for mode in "hard purge (default)|" \
            "keep_purged_secs = 600|[purge]
keep_purged_secs = 600" \
            "purge.soft = true|[purge]
soft = true"; do
  label=${mode%%|*}; extra=${mode#*|}
  start_floodgate "$FLOODGATE_LIMITS
$extra"
  rehearse "$FG_PORT" "Floodgate, $label"
  echo "purged copies served: $(curl -s "http://127.0.0.1:$((FG_PORT + 100))/metrics" | awk '/^floodgate_purged_copies_served_total/ {print $2}')"
  kill "$FG_PID"; wait "$FG_PID" 2>/dev/null || true
done
