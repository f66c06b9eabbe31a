#!/usr/bin/env bash
# The hit path at two commits, in one run: did a change make hits slower?
#
#   bench/ab.sh BASE_REV [duration_secs]      (BASE_BIN=path: that binary is the base's)
#
# Builds BASE_REV (in a temporary worktree, sharing this checkout's target directory)
# and the working tree, starts both on the same origin and the same server core, fills
# both with the 1,000 product pages of bench/run.sh, and runs wrk against each in
# alternating rounds (ROUNDS, default 5), so a machine that speeds up or slows down
# during the run weighs on both alike. Prints the medians and the ratio HEAD/BASE.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:?usage: bench/ab.sh BASE_REV [duration_secs]}
DURATION=${2:-15}
ROUNDS=${ROUNDS:-5}
root=$(pwd)
tree=$(mktemp -d /tmp/floodgate-ab.XXXXXX)
git worktree add --detach -f "$tree" "$BASE" >/dev/null
base_bin="$tree/floodgate-base"
if [ -n "${BASE_BIN:-}" ]; then
  # BASE_BIN: the base built already (kept from an earlier run: about 16 minutes saved).
  cp "$BASE_BIN" "$base_bin"
else
  # The base built as the `production` profile is, whatever its own Cargo.toml says.
  (cd "$tree" && CARGO_TARGET_DIR="$root/target" CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
    cargo build --release --quiet && cp "$root/target/release/floodgate" "$base_bin")
fi
source bench/lib.sh # builds the working tree (profile production)
trap 'cleanup; git worktree remove --force "$tree" >/dev/null 2>&1 || true' EXIT

start_origin
FG_BIN="$base_bin" start_floodgate "" "$FG_PORT"
start_floodgate "" "$VARNISH_PORT"
fill "$FG_PORT" product 1 1000 > /dev/null
fill "$VARNISH_PORT" product 1 1000 > /dev/null

: > "$work/base.runs"; : > "$work/head.runs"
for _ in $(seq 1 "$ROUNDS"); do
  hits "$FG_PORT" >> "$work/base.runs"
  hits "$VARNISH_PORT" >> "$work/head.runs"
done
median() { sort -n -k1,1 "$1" | awk -v n="$ROUNDS" 'NR == int((n + 1) / 2)'; }
read -r b_rps b_p50 b_p99 b_err <<< "$(median "$work/base.runs")"
read -r h_rps h_p50 h_p99 h_err <<< "$(median "$work/head.runs")"
echo
echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores: both on CPU $SERVER_CPUS, load on CPU $LOAD_CPUS; wrk -t$LOAD_THREADS -c${CONNECTIONS:-64} -d${DURATION}s, median of $ROUNDS alternating rounds."
echo
echo "| hits, 1,000 pages × ~40 KB, gzip | base $(git rev-parse --short "$BASE") | working tree | ratio |"
echo "|---|---|---|---|"
echo "| req/s | $b_rps | $h_rps | $(ratio "$h_rps" "$b_rps") |"
echo "| p50 ms | $b_p50 | $h_p50 | $(ratio "$h_p50" "$b_p50") |"
echo "| p99 ms | $b_p99 | $h_p99 | $(ratio "$h_p99" "$b_p99") |"
echo "| non-2xx | $b_err | $h_err | |"
echo
echo "every round (req/s p50 p99 non-2xx), base then working tree:"
paste "$work/base.runs" "$work/head.runs"
