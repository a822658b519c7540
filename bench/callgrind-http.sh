#!/usr/bin/env bash
# User-space instructions per proxied HTTP request, counted by callgrind: repeatable whatever
# else the machine is doing (timings on a shared 2-core VM are not). Prints Ir/request and the
# top functions. Needs valgrind, nginx, wrk.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${MESHENTRY_BIN:-$here/target/release/meshentry}
w=$(mktemp -d -t meshentry-cg.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$w"; }
trap cleanup EXIT
. "$here/bench/callgrind-backend.sh"
backend_start "$w/ngx" 18181
backend_config "$w/bench.yaml" 18181
valgrind --tool=callgrind --callgrind-out-file="$w/cg.out" "$bin" proxy --config "$w/bench.yaml" \
  --http-proxy 127.0.0.1:18182 --outbound off --admin 127.0.0.1:18183 --outbound-policy REGISTRY_ONLY --workers 1 \
  --log-level warn 2>"$w/vg.log" & vg=$!; pids+=($vg)
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18183/ready && break; sleep 0.2; done
echo 'wrk.path = "http://127.0.0.1:18181/"' > "$w/abs.lua"
wrk -t1 -c8 -d"${1:-10}"s -s "$w/abs.lua" http://127.0.0.1:18182/ > "$w/wrk.txt"
reqs=$(curl -s http://127.0.0.1:18183/stats | sed -n 's/^meshentry.http_requests_total: //p')
kill -TERM $vg; wait $vg || true
total=$(callgrind_annotate "$w/cg.out" 2>/dev/null | sed -n 's/^\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
echo "requests: $reqs"
echo "Ir total: $total"
echo "Ir/request: $(( total / reqs ))"
callgrind_annotate "$w/cg.out" 2>/dev/null | sed -n '/^Ir/,$p' | head -${2:-40}
