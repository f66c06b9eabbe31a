# Shared by the bench scripts: Floodgate and Varnish side by side on one origin, the
# proxies pinned to the first half of the cores and every load generator to the other
# half (on a shared core the measure would be the scheduler's time slices).
# Sourced after `set -euo pipefail`; expects to run from the repository root.

ORIGIN_PORT=${ORIGIN_PORT:-6092} FG_PORT=${FG_PORT:-6093} VARNISH_PORT=${VARNISH_PORT:-6094}
NGINX_PORT=${NGINX_PORT:-6095}
work=$(mktemp -d /tmp/floodgate-bench.XXXXXX)
chmod 755 "$work" # varnishd's worker runs as an unprivileged user
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.5; rm -rf "$work"; }
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1 || { echo "bench: needs $1 (apt-get install -y $2)" >&2; exit 1; }; }
need wrk wrk; need varnishd varnish; need python3 python3; need taskset util-linux; need curl curl
packaging/install-build-deps.sh
# FG_BIN: a binary built already (skips the production build, about 16 minutes).
[ -n "${FG_BIN:-}" ] || cargo build --profile production --quiet

cores=$(nproc)
half=$(( cores / 2 > 0 ? cores / 2 : 1 ))
# LAYOUT=pinned (default): the servers on the first half of the cores, the load on the
# other half. LAYOUT=shared: everything on every core, each server with one thread or
# worker per core (Floodgate's default `threads = 0`), as a one-box shop runs it.
LAYOUT=${LAYOUT:-pinned}
if [ "$LAYOUT" = shared ]; then
  SERVER_CPUS="0-$((cores - 1))"; LOAD_CPUS="$SERVER_CPUS"; LOAD_THREADS=$cores; half=$cores
else
  SERVER_CPUS="0-$((half - 1))"
  LOAD_CPUS="$half-$((cores - 1))"
  [ "$cores" -ge 2 ] || LOAD_CPUS="0"
  LOAD_THREADS=$(( cores - half > 0 ? cores - half : 1 ))
fi

wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "bench: nothing on port $1" >&2; exit 1; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$1" "$2"; }
# LOAD_NICE: run the load at that niceness (when it shares its core with an origin that must not starve).
on_load_cpus() { ${LOAD_NICE:+nice -n "$LOAD_NICE"} taskset -c "$LOAD_CPUS" "$@"; }

start_origin() {
  # taskset directly (not a shell function) so that $! is python itself and cleanup stops it.
  taskset -c "$LOAD_CPUS" python3 bench/origin.py "$ORIGIN_PORT" ${ORIGIN_ARGS:-} & pids+=($!)
  wait_port "$ORIGIN_PORT"
}

# start_floodgate [extra TOML] [port, default FG_PORT]; sets FG_PID. FG_BIN: another binary;
# FG_SERVER_EXTRA: more [server] lines (tls_listen).
start_floodgate() {
  local port=${2:-$FG_PORT}
  cat > "$work/floodgate-$port.toml" <<CONF
${1:-}
[server]
listen = ["127.0.0.1:$port"]
admin_listen = "127.0.0.1:$((port + 100))"
threads = $half
runtime_dir = "$work"
${FG_SERVER_EXTRA:-}
[origin]
addresses = ["127.0.0.1:$ORIGIN_PORT"]
CONF
  RUST_LOG=warn taskset -c "$SERVER_CPUS" "${FG_BIN:-target/production/floodgate}" run -c "$work/floodgate-$port.toml" 2>>"$work/floodgate.log" & pids+=($!)
  FG_PID=$!
  wait_port "$port"
}

# start_varnish [port, default VARNISH_PORT] [extra sed expression for the VCL]
start_varnish() {
  local port=${1:-$VARNISH_PORT}
  sed -e "s/ORIGIN_PORT/$ORIGIN_PORT/" -e "${2:-s/^//}" bench/magento.vcl > "$work/magento-$port.vcl"
  taskset -c "$SERVER_CPUS" varnishd -F -n "$work/varnish-$port" -a "127.0.0.1:$port" -f "$work/magento-$port.vcl" \
    -s malloc,2G -p thread_pool_min=50 >"$work/varnish-$port.log" 2>&1 & pids+=($!)
  wait_port "$port"
}

# start_nginx [port, default NGINX_PORT]: nginx proxy_cache (bench/nginx.conf), one
# worker per server core.
start_nginx() {
  local port=${1:-$NGINX_PORT}
  need nginx nginx
  mkdir -p "$work/nginx-cache"
  sed -e "s|WORKERS|$half|" -e "s|WORK|$work|g" -e "s|ORIGIN_PORT|$ORIGIN_PORT|" -e "s|PORT;|$port;|" \
    bench/nginx.conf > "$work/nginx-$port.conf"
  taskset -c "$SERVER_CPUS" nginx -c "$work/nginx-$port.conf" -g 'daemon off;' 2>>"$work/nginx.log" & pids+=($!)
  NGINX_PID=$!
  wait_port "$port"
}

# cpu_ticks PID: CPU time (user + system, clock ticks) of PID and its children so far
# (nginx's and Varnish's workers are child processes).
cpu_ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$(( total + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0) ))
  done
  echo "$total"
}

# fill PORT PREFIX FIRST LAST: requests /PREFIX-N.html for every N, 4 kept-alive clients;
# prints the bytes downloaded per page, one a line.
fill() {
  seq "$3" "$4" | on_load_cpus xargs -n 500 -P 4 sh -c '
    port=$1 prefix=$2; shift 2
    for n in "$@"; do printf "url = \"http://127.0.0.1:%s/%s-%s.html\"\noutput = \"/dev/null\"\n" "$port" "$prefix" "$n"; done |
    curl -s -m 60 -H "Accept-Encoding: gzip" -w "%{size_download}\n" -K -' _ "$1" "$2" \
    || echo "bench: some requests of the fill of port $1 failed (curl), continuing" >&2
}

# hits PORT [FIRST]: wrk over 1,000 product pages -> "rps p50_ms p99_ms non2xx"
# (HITS_SCHEME=https for a TLS listener; HITS_SCRIPT: another wrk script).
hits() {
  FIRST=${2:-1} on_load_cpus wrk -t"$LOAD_THREADS" -c"${CONNECTIONS:-64}" -d"${DURATION}s" --latency \
    -s "${HITS_SCRIPT:-bench/urls.lua}" "${HITS_SCHEME:-http}://127.0.0.1:$1" > "$work/wrk-$1.txt"
  python3 - "$work/wrk-$1.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(label):
    m = re.search(r"^\s*" + label + r"%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(f"{rps:.0f} {ms('50'):.3f} {ms('99'):.3f} {errors.group(1) if errors else 0}")
PY
}

# tags_pattern FIRST LAST: Magento's pattern for cat_p_FIRST..cat_p_LAST
tags_pattern() {
  python3 -c "import sys; print('|'.join(f'((^|,)cat_p_{n}(,|\$))' for n in range(int(sys.argv[1]), int(sys.argv[2]) + 1)))" "$1" "$2"
}

# metric PORT SAMPLE: a sample from the Floodgate on PORT (its admin is PORT+100), 0 if absent.
metric() {
  curl -s "http://127.0.0.1:$(($1 + 100))/metrics" |
    awk -v s="$2" '$1 == s { v = $2 } END { printf "%d\n", v + 0 }'
}
# until_metric PORT SAMPLE VALUE [SECONDS]: waits until the sample reaches VALUE.
until_metric() {
  for _ in $(seq 1 $(( ${4:-600} * 10 ))); do
    [ "$(metric "$1" "$2")" -ge "$3" ] && return 0
    sleep 0.1
  done
  echo "bench: $2 on port $1 never reached $3 (it is $(metric "$1" "$2"))" >&2; exit 1
}
origin_requests() { curl -s "http://127.0.0.1:$ORIGIN_PORT/__stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])'; }

# zipf PORT SECONDS: shop-like visitors (bench/zipf.lua, PAGES, ZIPF_S) for SECONDS ->
# "requests rps p99_ms origin_requests hit_ratio_percent", where a hit is any request the
# origin did not see.
zipf() {
  local before after
  before=$(origin_requests)
  on_load_cpus wrk -t"$LOAD_THREADS" -c"${CONNECTIONS:-64}" -d"$2s" --latency -s bench/zipf.lua \
    "http://127.0.0.1:$1" > "$work/zipf-$1.txt"
  after=$(origin_requests)
  python3 - "$work/zipf-$1.txt" "$before" "$after" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
requests = int(re.search(r"(\d+) requests in", text).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
m = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
origin = int(sys.argv[3]) - int(sys.argv[2])
print(f"{requests} {rps:.0f} {p99:.2f} {origin} {100 * (1 - origin / max(requests, 1)):.2f}")
PY
}
