#!/usr/bin/env bash
# Installs what building and testing Floodgate needs beyond a Rust toolchain: cmake and
# a C compiler (Pingora builds zlib-ng and zstd from C), and promtool (Debian's
# `prometheus` package) and systemd-analyze, which the tests use to lint the metrics,
# the alert rules and the systemd unit, and redis-server, which the cluster tests start
# (their own, on a free port; openssl makes the TLS test's certificates), Chromium,
# which renders the status page for its test, and tmux, the terminal `floodgate top`'s
# test runs it in.
# Does nothing when they are already there.
set -euo pipefail
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v chromium >/dev/null 2>&1 || missing+=(chromium fonts-dejavu-core)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
[ "${#missing[@]}" -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-build-deps: please install ${missing[*]} with your system's package manager" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-build-deps: installing ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
