#!/usr/bin/env bash
# Floodgate's resident memory against the bytes it stores, in one run:
#
#   bench/memory.sh [pages]            (default 50000)
#
# For each case a fresh Floodgate (memory_bytes 8 GiB, so nothing is evicted) is filled
# with PAGES distinct pages of varied text, by clients that accept gzip; the origin
# gzips at level 6, as Magento's nginx does, and Floodgate stores that. The stored bytes
# are the bodies as the hits that follow the fill download them.
#   6 KB:  18,500 bytes of text a page.
#   13 KB: 40,000 bytes of text a page.
#   ESI:   the 6 KB pages with Magento's top menu as an ESI include, against the same
#          pages without it (the "6 KB" case): what one ESI page costs beyond its body.
# Prints a Markdown table: resident size (everything: the process's own baseline,
# headers, tags, index, allocator) over the stored bytes, and the fixed cost per page.
# FG_BIN=path skips the production build.
set -euo pipefail
cd "$(dirname "$0")/.."
PAGES=${1:-50000}
source bench/lib.sh

rss() { awk '/VmRSS/ { print $2 * 1024 }' "/proc/$1/status"; }
# settled PID: its RSS once two readings a second apart agree within 1 MiB (moka's
# pending inserts applied, the allocator's freed pages given back).
settled() {
  local before after
  before=$(rss "$1")
  for _ in $(seq 1 30); do
    sleep 1
    after=$(rss "$1")
    [ $(( after > before ? after - before : before - after )) -lt 1048576 ] && break
    before=$after
  done
  echo "$after"
}

# measure PREFIX -> "empty_rss rss stored_bytes pages"
measure() {
  start_floodgate "$(printf '[cache]\nmemory_bytes = 8589934592')"
  local empty; empty=$(settled "$FG_PID")
  fill "$FG_PORT" "$1" 1 "$PAGES" > /dev/null
  # A miss goes out as the origin's answer is streamed (recompressed); hits send the
  # stored body.
  fill "$FG_PORT" "$1" 1 "$PAGES" > "$work/sizes-$1"
  local stored pages
  stored=$(awk '{ s += $1 } END { print s }' "$work/sizes-$1")
  pages=$(awk '$1 > 0' "$work/sizes-$1" | wc -l)
  echo "$empty $(settled "$FG_PID") $stored $pages"
  kill "$FG_PID"; wait "$FG_PID" 2>/dev/null || true
}

restart_origin() {
  kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
  pids=("${pids[@]:1}")
  start_origin
}

ORIGIN_ARGS="--gzip --page-bytes 18500" start_origin
read -r e6 r6 s6 n6 < <(measure page)
read -r ee re se ne < <(measure esipage)
ORIGIN_ARGS="--gzip" restart_origin
read -r e13 r13 s13 n13 < <(measure page)

row() { # label empty rss stored pages
  python3 - "$@" <<'PY'
import sys
label, empty, rss, stored, pages = sys.argv[1], *map(int, sys.argv[2:])
print(f"| {label} | {pages} | {stored / pages / 1024:.1f} KB | {rss / 2**20:.0f} MiB | {stored / 2**20:.0f} MiB "
      f"| {rss / stored:.2f} × | {empty / 2**20:.0f} MiB | {(rss - stored) / pages:.0f} B |")
PY
}
cat <<TABLE
Measured $(date -u +%Y-%m-%d), $(nproc) cores, Floodgate threads = $half, fresh process per case.

| bodies | pages | body (gzip) | resident | stored | resident / stored | resident when empty | resident beyond the body, per page |
|---|---|---|---|---|---|---|---|
$(row "6 KB" "$e6" "$r6" "$s6" "$n6")
$(row "13 KB" "$e13" "$r13" "$s13" "$n13")
$(row "6 KB with an ESI include" "$ee" "$re" "$se" "$ne")

An ESI page costs $(python3 -c "import sys; a,b=map(int,sys.argv[1:]); print(f'{a/b:.2f}')" "$(( re - ee ))" "$(( r6 - e6 ))") × the same page without ESI (resident growth per page, empty process subtracted).
TABLE
