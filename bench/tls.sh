#!/usr/bin/env bash
# The whole front door over TLS: Floodgate terminating TLS itself, against nginx
# (TLS + proxy_cache) and Hitch + Varnish, side by side on one origin, in one run.
#
#   bench/tls.sh [duration_secs]
#
# One test certificate (ECDSA P-256, made here with openssl) for every server; TLS 1.3,
# HTTP/1.1 (wrk's). The origin gzips, as Magento's nginx does, so all three store and
# send the same gzip bytes of the 1,000 ~40 KB product pages. Measures, median of
# ROUNDS alternating rounds: (1) hits over kept-alive TLS connections, (2) hits on a new
# connection each (Connection: close), i.e. full handshakes per second. The servers
# share the first half of the cores, the load generator the other half.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-15}
CONNECTIONS=${CONNECTIONS:-64}
ROUNDS=${ROUNDS:-3}
ORIGIN_ARGS="--gzip"
source bench/lib.sh
need hitch hitch; need nginx nginx; need openssl openssl
FG_TLS=6443 NGINX_TLS=6444 HITCH_TLS=6445 NGINX_CACHE_PORT=6446

# The certificate.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=shop.test -addext subjectAltName=DNS:shop.test,IP:127.0.0.1 \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/key.pem" "$work/cert.pem" > "$work/hitch.pem"

start_origin
FG_SERVER_EXTRA="tls_listen = [\"127.0.0.1:$FG_TLS\"]" start_floodgate \
  "$(printf '[[tls.certificates]]\ncert_file = "%s"\nkey_file = "%s"' "$work/cert.pem" "$work/key.pem")"
start_varnish
taskset -c "$SERVER_CPUS" hitch --frontend="[127.0.0.1]:$HITCH_TLS" --backend="[127.0.0.1]:$VARNISH_PORT" \
  --workers="$half" --daemon=off --user=nobody --group=nogroup --tls-protos="TLSv1.2 TLSv1.3" --alpn-protos=http/1.1 \
  "$work/hitch.pem" > "$work/hitch.log" 2>&1 & pids+=($!)
wait_port "$HITCH_TLS"
mkdir -p "$work/nginx-cache"
cat > "$work/nginx.conf" <<NGINX
worker_processes $half;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  proxy_cache_path $work/nginx-cache levels=1:2 keys_zone=fpc:64m max_size=2g inactive=1h;
  upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 32; }
  server {
    listen 127.0.0.1:$NGINX_TLS ssl;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-Proto https;
      proxy_cache fpc;
      proxy_cache_lock on;
      proxy_cache_valid 200 1h;
      proxy_ignore_headers Set-Cookie;
      proxy_hide_header Set-Cookie;
      proxy_hide_header X-Magento-Tags;
    }
  }
}
NGINX
taskset -c "$SERVER_CPUS" nginx -c "$work/nginx.conf" -g 'daemon off;' & pids+=($!)
wait_port "$NGINX_TLS"

fill_tls() { # port: the 1,000 product pages, gzip, over TLS
  seq 1 1000 | on_load_cpus xargs -n 500 -P 4 sh -c '
    port=$1; shift
    for n in "$@"; do printf "url = \"https://127.0.0.1:%s/product-%s.html\"\noutput = \"/dev/null\"\n" "$port" "$n"; done |
    curl -sk -H "Accept-Encoding: gzip" -K -' _ "$1"
}
for port in "$FG_TLS" "$NGINX_TLS" "$HITCH_TLS"; do fill_tls "$port"; fill_tls "$port"; done

tls_hits() { # port [close] -> "rps p50 p99 non2xx"
  local script=bench/urls.lua
  [ -n "${2:-}" ] && script=bench/urls-close.lua
  HITS_SCHEME=https HITS_SCRIPT=$script hits "$1"
}
for name in fg nginx hitch; do : > "$work/$name.keep"; : > "$work/$name.close"; done
for _ in $(seq 1 "$ROUNDS"); do
  tls_hits "$FG_TLS" >> "$work/fg.keep"
  tls_hits "$NGINX_TLS" >> "$work/nginx.keep"
  tls_hits "$HITCH_TLS" >> "$work/hitch.keep"
  tls_hits "$FG_TLS" close >> "$work/fg.close"
  tls_hits "$NGINX_TLS" close >> "$work/nginx.close"
  tls_hits "$HITCH_TLS" close >> "$work/hitch.close"
done
median() { sort -n -k"$2" "$1" | awk -v c="$2" '{ v[NR] = $c } END { print v[int((NR + 1) / 2)] }'; }
row() { # label file-suffix column
  local f n h
  f=$(median "$work/fg.$2" "$3"); n=$(median "$work/nginx.$2" "$3"); h=$(median "$work/hitch.$2" "$3")
  echo "| $1 | $f | $n | $h | $(ratio "$f" "$n") | $(ratio "$f" "$h") |"
}
errors() { awk '{ s += $4 } END { print s }' "$work/$1.keep" "$work/$1.close"; }
cat <<TABLE
Measured $(date -u +%Y-%m-%d) on $cores cores: servers on CPU $SERVER_CPUS (Floodgate threads, nginx workers, Hitch workers = $half), load on CPU $LOAD_CPUS; wrk -t$LOAD_THREADS -c$CONNECTIONS -d${DURATION}s, TLS 1.3, ECDSA P-256, median of $ROUNDS alternating rounds.

| measure | Floodgate | nginx $(nginx -v 2>&1 | grep -o '[0-9.]*$') proxy_cache | Hitch + Varnish $(varnishd -V 2>&1 | grep -o 'varnish-[0-9.]*' | head -1 | cut -d- -f2) | Floodgate/nginx | Floodgate/(Hitch+Varnish) |
|---|---|---|---|---|---|
$(row "keep-alive hits, req/s" keep 1)
$(row "keep-alive hits, p99 ms" keep 3)
$(row "new connection per hit (full handshake), req/s" close 1)
$(row "new connection per hit, p99 ms" close 3)
| non-2xx | $(errors fg) | $(errors nginx) | $(errors hitch) | | |
TABLE
