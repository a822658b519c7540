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
mkdir -p "$w/ngx"
cat > "$w/ngx/nginx.conf" <<NGX
worker_processes 1; pid $w/ngx/nginx.pid; error_log $w/ngx/error.log warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $w/ngx/b; proxy_temp_path $w/ngx/p; fastcgi_temp_path $w/ngx/f; uwsgi_temp_path $w/ngx/u; scgi_temp_path $w/ngx/s;
  server { listen 127.0.0.1:18181; location / { return 200 "hello from backend\n"; } } }
NGX
nginx -p "$w/ngx/" -c "$w/ngx/nginx.conf" -g "daemon off;" & pids+=($!)
cat > "$w/bench.yaml" <<YAML
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bench-backend}
spec:
  hosts: [bench-backend.local]
  addresses: [127.0.0.1]
  ports: [{number: 18181, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
YAML
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
