#!/usr/bin/env bash
# Issue 7's two-hop benchmark: HTTP through a sidecar and an egress gateway, as the seed's
# egress example runs (sidecar VirtualService rule for `mesh` -> gateway service -> gateway
# VirtualService rule -> external host), against two HAProxy processes chained the same way.
#
#   meshentry: wrk -> sidecar (explicit proxy, absolute URI) -> gateway (--gateway) -> nginx
#   haproxy:   wrk -> haproxy #1 -> haproxy #2 -> nginx
#
# Both proxies of a chain and the backend run on cpu0, wrk on cpu1; every proxy process is
# single-threaded (meshentry --workers 1, haproxy nbthread 1). Figures: req/s (median of reps)
# and the CPU of both proxy processes per request.
#
#   bench/two-hop.sh [--duration S] [--reps N]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${MESHENTRY_BIN:-$here/target/release/meshentry}
DURATION=10
REPS=3
while [[ $# -gt 0 ]]; do
  case "$1" in
    --duration) DURATION=$2; shift 2;;
    --reps) REPS=$2; shift 2;;
    *) echo "unknown arg: $1" >&2; exit 2;;
  esac
done
for b in nginx haproxy wrk taskset curl; do command -v $b >/dev/null || { echo "missing: $b" >&2; exit 1; }; done
[[ -x $bin ]] || { echo "no binary at $bin (cargo build --release)" >&2; exit 1; }

w=$(mktemp -d -t meshentry-2hop.XXXXXX); chmod 755 "$w"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$w"; }
trap cleanup EXIT

BE=19380; HA1=29380; HA2=29381; SIDE=29480; GW=29481; SIDE_ADMIN=29482; GW_ADMIN=29483
cat >"$w/backend.conf" <<EOF
worker_processes 1; daemon off; pid $w/backend.pid; error_log $w/backend.err warn;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:$BE; keepalive_requests 1000000; location / { return 200 "hello from the backend\n"; } } }
EOF
haproxy_cfg() { # listen-port next-port
  cat <<EOF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend f
  bind 127.0.0.1:$1
  default_backend b
backend b
  server s 127.0.0.1:$2
EOF
}
haproxy_cfg $HA1 $HA2 >"$w/ha1.cfg"
haproxy_cfg $HA2 $BE >"$w/ha2.cfg"
mkdir "$w/mesh"
cat >"$w/mesh/egress.yaml" <<EOF
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bench-external, namespace: default}
spec:
  hosts: [bench.example]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: $BE}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
# The gateway's Kubernetes Service, as a ServiceEntry.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: istio-egressgateway, namespace: istio-system}
spec:
  hosts: [istio-egressgateway.istio-system.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: $GW}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-egressgateway, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: $GW, name: http, protocol: HTTP}
    hosts: [bench.example]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bench-through-egress, namespace: default}
spec:
  hosts: [bench.example]
  gateways: [istio-system/istio-egressgateway, mesh]
  http:
  - match: [{gateways: [mesh], port: 80}]
    route: [{destination: {host: istio-egressgateway.istio-system.svc.cluster.local, port: {number: 80}}}]
  - match: [{gateways: [istio-system/istio-egressgateway], port: $GW}]
    route: [{destination: {host: bench.example, port: {number: 80}}}]
EOF

taskset -c 0 nginx -c "$w/backend.conf" & pids+=($!)
taskset -c 0 haproxy -db -f "$w/ha1.cfg" & ha1=$!; pids+=($ha1)
taskset -c 0 haproxy -db -f "$w/ha2.cfg" & ha2=$!; pids+=($ha2)
taskset -c 0 "$bin" proxy --config "$w/mesh" --http-proxy 127.0.0.1:$SIDE --outbound off --admin 127.0.0.1:$SIDE_ADMIN \
  --workers 1 --outbound-policy REGISTRY_ONLY --log-level warn & side=$!; pids+=($side)
taskset -c 0 "$bin" proxy --config "$w/mesh" --gateway istio-system/istio-egressgateway --labels istio=egressgateway \
  --gateway-bind 127.0.0.1 --admin 127.0.0.1:$GW_ADMIN --workers 1 --log-level warn & gw=$!; pids+=($gw)
for a in $SIDE_ADMIN $GW_ADMIN; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$a/ready" && break; sleep 0.1; done
done
sleep 0.5

# Both chains must really carry the request end to end before anything is measured.
out=$(curl -s -x "http://127.0.0.1:$SIDE" http://bench.example/) || true
[[ $out == "hello from the backend" ]] || { echo "meshentry chain: $out" >&2; exit 1; }
out=$(curl -s -H "Host: bench.example" "http://127.0.0.1:$HA1/") || true
[[ $out == "hello from the backend" ]] || { echo "haproxy chain: $out" >&2; exit 1; }
gw_rq=$(curl -s "http://127.0.0.1:$GW_ADMIN/stats" | sed -n 's/^meshentry.http_requests_total: //p')
[[ ${gw_rq:-0} -ge 1 ]] || { echo "the gateway did not see the request" >&2; exit 1; }

cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
tick=$(getconf CLK_TCK)
echo 'wrk.path = "http://bench.example/"' >"$w/abs.lua"
run() { # chain -> "req/s cpu_us_per_req"
  local chain=$1 out before after reqs
  if [[ $chain == meshentry ]]; then
    before=$(cpu_ticks $side $gw)
    out=$(taskset -c 1 wrk -t1 -c32 -d"${DURATION}s" -s "$w/abs.lua" "http://127.0.0.1:$SIDE/")
    after=$(cpu_ticks $side $gw)
  else
    before=$(cpu_ticks $ha1 $ha2)
    out=$(taskset -c 1 wrk -t1 -c32 -d"${DURATION}s" -H "Host: bench.example" "http://127.0.0.1:$HA1/")
    after=$(cpu_ticks $ha1 $ha2)
  fi
  if grep -q "Non-2xx" <<<"$out"; then echo "$chain: errors: $out" >&2; exit 1; fi
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  awk -v r="$reqs" -v d="$DURATION" -v c=$((after - before)) -v t="$tick" \
    'BEGIN { printf "%.0f %.1f\n", r / d, c / t * 1e6 / r }'
}
declare -A rps cpu
for rep in $(seq "$REPS"); do
  for chain in haproxy meshentry; do
    read -r r c < <(run $chain)
    rps[$chain]+="$r "; cpu[$chain]+="$c "
    echo "rep $rep $chain: $r req/s, $c us CPU/req (both hops)" >&2
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
printf "\n%-10s %12s %22s\n" chain "req/s" "us CPU/req (2 hops)"
for chain in haproxy meshentry; do
  printf "%-10s %12s %22s\n" $chain "$(median <<<"${rps[$chain]}")" "$(median <<<"${cpu[$chain]}")"
done
awk -v h="$(median <<<"${rps[haproxy]}")" -v m="$(median <<<"${rps[meshentry]}")" \
    -v hc="$(median <<<"${cpu[haproxy]}")" -v mc="$(median <<<"${cpu[meshentry]}")" \
  'BEGIN { printf "meshentry/haproxy: %.2fx req/s, %.2fx CPU per request\n", m / h, mc / hc }'
