#!/usr/bin/env bash
# User-space instructions per HTTP/2 cleartext (h2c) request through the explicit proxy, counted
# by callgrind (repeatable on a busy machine): the proxy (one worker) runs under valgrind while
# `h2load -c4 -m32` sends N requests; it runs twice and the difference is divided, so that
# startup and shutdown cancel out. Needs valgrind, nginx, h2load (nghttp2-client), curl.
# Listens on 127.0.0.1:18481 (backend), :18482 (proxy), :18483 (admin).
#
#   bench/callgrind-h2.sh [BIN] [N1] [N2]     # default: target/release/meshentry 5000 20000
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$here/target/release/meshentry}
n1=${2:-5000}
n2=${3:-20000}
w=$(mktemp -d -t meshentry-cg-h2.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$w"; }
trap cleanup EXIT
. "$here/bench/callgrind-backend.sh"
backend_start "$w/ngx" 18481
backend_config "$w/bench.yaml" 18481

# Instructions of one proxy run serving $1 requests.
ir() {
  valgrind --tool=callgrind --callgrind-out-file="$w/cg.$1" "$bin" proxy --config "$w/bench.yaml" \
    --http-proxy 127.0.0.1:18482 --outbound off --admin 127.0.0.1:18483 --workers 1 \
    --log-level warn 2>"$w/vg.$1.log" &
  local vg=$!
  for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18483/ready && break; sleep 0.2; done
  h2load -n "$1" -c4 -m32 -H ':authority: 127.0.0.1:18481' http://127.0.0.1:18482/ > "$w/h2.$1.txt" 2>&1 || true
  grep -E '^requests:' "$w/h2.$1.txt" >&2
  kill -TERM "$vg"; wait "$vg" || true
  callgrind_annotate "$w/cg.$1" 2>/dev/null | sed -n 's/^\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,
}
a=$(ir "$n1")
b=$(ir "$n2")
echo "Ir with $n1 requests: $a; with $n2: $b"
echo "Ir/request: $(( (b - a) / (n2 - n1) ))"
