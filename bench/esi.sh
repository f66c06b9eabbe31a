#!/usr/bin/env bash
# ESI: the hit throughput of a product page with Magento's top menu as an ESI include,
# against the same page without it, for Floodgate and for Varnish (do_esi, as Magento's
# VCL sets it), in front of the same origin, in one run.
#
#   bench/esi.sh [duration_secs]
#
# Each page is ~40 KB; the menu fragment ~6 KB, cached once and spliced into every hit.
# Measured for clients that accept gzip (browsers) and for those that do not. Prints a
# Markdown table. Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNECTIONS=${CONNECTIONS:-64}
source bench/lib.sh

start_origin
start_floodgate
start_varnish
for port in "$FG_PORT" "$VARNISH_PORT"; do
  fill "$port" product 1 1000 > /dev/null
  fill "$port" esi 1 1000 > /dev/null
done
# The assembled page is what a visitor sees: check both proxies splice the menu in.
for port in "$FG_PORT" "$VARNISH_PORT"; do
  page=$(curl -s "http://127.0.0.1:$port/esi-1.html")
  case "$page" in
    *"<esi:"*) echo "bench: port $port sent the raw ESI tag" >&2; exit 1 ;;
    *'class="navigation"'*) ;;
    *) echo "bench: port $port sent a page without the menu" >&2; exit 1 ;;
  esac
done
menu_fetches=$(curl -s "http://127.0.0.1:$ORIGIN_PORT/__count?url=/page_cache/block/esi/blocks/topnav/" | python3 -c "import json,sys; print(json.load(sys.stdin)['count'])")

ROUNDS=${ROUNDS:-3}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
declare -A runs
for _ in $(seq 1 "$ROUNDS"); do
  for gz in 1 0; do
    for prefix in product esi; do
      for port in "$FG_PORT" "$VARNISH_PORT"; do
        read -r rps _ p99 errors < <(GZIP=$gz PREFIX=$prefix hits "$port")
        [ "$errors" = 0 ] || echo "bench: $errors non-2xx on port $port ($prefix, gzip=$gz)" >&2
        runs[$port.$prefix.$gz]+="$rps "
        runs[$port.$prefix.$gz.p99]+="$p99 "
      done
    done
  done
done
m() { tr ' ' '\n' <<<"${runs[$1]}" | grep . | median; }

cat <<TABLE
Measured $(date -u +%Y-%m-%d) on $cores cores: proxies on CPU $SERVER_CPUS (Floodgate threads = $half), load on CPU $LOAD_CPUS; wrk -t$LOAD_THREADS -c$CONNECTIONS -d${DURATION}s over 1,000 pages, median of $ROUNDS rounds. Menu fetched from the origin $menu_fetches times for 2,000 ESI page fills.

| hits, req/s (p99 ms) | Floodgate | Varnish $(varnishd -V 2>&1 | grep -o 'varnish-[0-9.]*' | head -1 | cut -d- -f2) | Floodgate/Varnish |
|---|---|---|---|
TABLE
for gz in 1 0; do
  label=$([ "$gz" = 1 ] && echo "gzip" || echo "identity")
  for prefix in product esi; do
    what=$([ "$prefix" = esi ] && echo "page with one ESI include" || echo "same page without ESI")
    f=$(m "$FG_PORT.$prefix.$gz"); v=$(m "$VARNISH_PORT.$prefix.$gz")
    fp=$(m "$FG_PORT.$prefix.$gz.p99"); vp=$(m "$VARNISH_PORT.$prefix.$gz.p99")
    echo "| $what, $label | $f ($fp) | $v ($vp) | $(ratio "$f" "$v") |"
  done
  fe=$(m "$FG_PORT.esi.$gz"); fpl=$(m "$FG_PORT.product.$gz"); ve=$(m "$VARNISH_PORT.esi.$gz"); vpl=$(m "$VARNISH_PORT.product.$gz")
  echo "| ESI page / plain page, $label | $(ratio "$fe" "$fpl") | $(ratio "$ve" "$vpl") | |"
done
