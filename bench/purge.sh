#!/usr/bin/env bash
# Purges at scale, Floodgate vs Varnish, in one run on the same origin.
#
#   bench/purge.sh [seconds]
#
# 1. With 50,000 pages cached: the time a purge of 100 tags and of 10,000 tags takes
#    (Floodgate removes the objects before answering; Varnish only records a ban, whose
#    cost every later lookup pays).
# 2. Hit throughput while Magento-style purges arrive (20 a second, 50 tags each, i.e.
#    1,200 a minute, of cached pages outside the visited set), against a run without.
# 3. Visitors (open loop, 200 a second over 1,000 pages, Zipf-like popularity); at 10 s
#    all 1,000 are purged as Magento would (batches of at most 7,680 bytes); the share of visitor requests in the next 30 s that were not hits.
#    Floodgate's re-warmer runs at 500 pages/s with 16 in flight for this, in a second
#    Floodgate (FG_WARM_PORT) holding those 1,000 pages; the first one keeps the default
#    20 pages/s, so the throughput measures above are not the re-warmer's refill.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
PAGES=${PAGES:-50000}
source bench/lib.sh

start_origin
FG_WARM_PORT=$((FG_PORT + 10))
start_floodgate "$(printf '[cache]\nmemory_bytes = 4294967296\n')"
start_floodgate "$(printf '[warm]\nrate_per_sec = 500.0\nconcurrency = 16\n')" "$FG_WARM_PORT"
start_varnish
echo "filling $PAGES pages into each proxy..." >&2
fill "$FG_PORT" product 1 "$PAGES" > /dev/null
fill "$VARNISH_PORT" product 1 "$PAGES" > /dev/null
fill "$FG_WARM_PORT" product 41001 42000 > /dev/null

# 2 (baseline first, before any purge has touched either proxy).
read -r fg_quiet _ fg_quiet_p99 _ < <(hits "$FG_PORT")
read -r v_quiet _ v_quiet_p99 _ < <(hits "$VARNISH_PORT")

# 1. Magento-shaped purges: batches of at most 7,680 bytes, a connection each.
purge_time() { on_load_cpus python3 bench/magento_purge.py "127.0.0.1:$1" "$2" "$3"; }
read -r fg_t100 fg_n100 _ fg_s100 < <(purge_time "$FG_PORT" 40001 40100)
read -r v_t100 _ _ _ < <(purge_time "$VARNISH_PORT" 40001 40100)
read -r fg_t10k fg_n10k batches10k fg_s10k < <(purge_time "$FG_PORT" 30001 40000)
read -r v_t10k _ _ _ < <(purge_time "$VARNISH_PORT" 30001 40000)
ms() { python3 -c "import sys; print(f'{float(sys.argv[1]) * 1000:.2f}')" "$1"; }
per100() { python3 -c "import sys; print(f'{float(sys.argv[1]) * 1000 * 100 / max(int(sys.argv[2]), 1):.3f}')" "$1" "$2"; }

# Right after those purges: Varnish's bans are now tested by lookups and its ban lurker.
read -r fg_after _ fg_after_p99 _ < <(hits "$FG_PORT")
read -r v_after _ v_after_p99 _ < <(hits "$VARNISH_PORT")

# 2. With 1,200 purges a minute of other cached pages (10,001..29,000) arriving.
# taskset execs python, so $! is the purger itself and `kill` stops it.
purger() { taskset -c "$LOAD_CPUS" python3 bench/magento_purge.py "127.0.0.1:$1" 10001 29000 --stream 20 50 & p=$!; pids+=("$p"); }
purger "$FG_PORT"; read -r fg_busy _ fg_busy_p99 fg_busy_err < <(hits "$FG_PORT"); kill "$p"; wait "$p" 2>/dev/null || true
purger "$VARNISH_PORT"; read -r v_busy _ v_busy_p99 v_busy_err < <(hits "$VARNISH_PORT"); kill "$p"; wait "$p" 2>/dev/null || true

# 3. Misses after purging the 1,000 hottest pages (pages 41,001..42,000, visited first).
visit() { on_load_cpus python3 bench/visitors.py "127.0.0.1:$1" 41001 1000 200 40 10 30; }
fg_visit=$(visit "$FG_WARM_PORT"); v_visit=$(visit "$VARNISH_PORT")
share() { echo "$1" | grep -o 'miss_share=[0-9.]*' | cut -d= -f2; }
pct() { python3 -c "import sys; print(f'{float(sys.argv[1]) * 100:.1f} %')" "$1"; }

cat <<TABLE
Measured $(date -u +%Y-%m-%d), $PAGES pages cached in each; proxies on CPU $SERVER_CPUS, load on CPU $LOAD_CPUS.

| measure | Floodgate | Varnish | Floodgate/Varnish |
|---|---|---|---|
| purge of 100 tags (1 PURGE): time Floodgate spent / round trip | $(ms "$fg_s100") ms / $(ms "$fg_t100") ms, $fg_n100 objects removed ($(per100 "$fg_s100" "$fg_n100") ms per 100) | – / $(ms "$v_t100") ms (ban recorded, objects not yet touched) | |
| purge of 10,000 tags ($batches10k PURGEs of ≤ 7,680 bytes, as Magento sends) | $(ms "$fg_s10k") ms / $(ms "$fg_t10k") ms, $fg_n10k objects removed ($(per100 "$fg_s10k" "$fg_n10k") ms per 100) | – / $(ms "$v_t10k") ms (bans recorded) | |
| hit throughput before any purge, req/s (p99 ms) | $fg_quiet ($fg_quiet_p99) | $v_quiet ($v_quiet_p99) | $(ratio "$fg_quiet" "$v_quiet") |
| hit throughput just after those purges, req/s (p99 ms) | $fg_after ($fg_after_p99) | $v_after ($v_after_p99) | $(ratio "$fg_after" "$v_after") |
| hit throughput with 1,200 purges/min arriving, req/s (p99 ms) | $fg_busy ($fg_busy_p99, $fg_busy_err non-2xx) | $v_busy ($v_busy_p99, $v_busy_err non-2xx) | $(ratio "$fg_busy" "$v_busy") |
| visitor requests that missed, 30 s after purging the 1,000 hottest pages | $(pct "$(share "$fg_visit")") ($fg_visit) | $(pct "$(share "$v_visit")") ($v_visit) | |
TABLE
