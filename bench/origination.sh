#!/usr/bin/env bash
# Issue 6's benchmark: TLS origination by meshentry and by nginx (proxy_ssl_*), same machine,
# same run, same backend. The client speaks plain HTTP to the proxy; the proxy speaks mutual
# TLS (client certificate, server verified against a CA and a name) to an nginx backend.
#
#   pooled:  the backend keeps connections alive, so both proxies reuse upstream TLS
#            connections: HTTP requests/s with origination over pooled connections.
#   fresh:   the backend closes after every response and has no session cache or tickets, so
#            every request costs the proxy a full mutual TLS handshake: new upstream mTLS
#            handshakes per second.
#
# Placement as in ../shared/bench/run.sh: backend and proxies on cpu0, wrk on cpu1; nginx
# worker_processes 1 and meshentry --workers 1. Figures: req/s (median of reps) and the proxy's
# CPU per request (utime+stime of the process over the run / requests).
#
#   bench/origination.sh [--duration S] [--reps N]
# Needs: nginx, wrk, openssl, taskset; a release build (MESHENTRY_BIN or target/release).
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
for b in nginx wrk openssl taskset; do command -v $b >/dev/null || { echo "missing: $b" >&2; exit 1; }; done
[[ -x $bin ]] || { echo "no binary at $bin (cargo build --release)" >&2; exit 1; }

w=$(mktemp -d -t meshentry-orig.XXXXXX); chmod 755 "$w"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$w"; }
trap cleanup EXIT

# Identities from meshentry's own CA: the backend's (backend.bench) and the client's.
"$bin" ca init --dir "$w/ca" >/dev/null
"$bin" ca issue --dir "$w/ca" --namespace bench --service-account backend --dns backend.bench --out "$w/be" >/dev/null
"$bin" ca issue --dir "$w/ca" --namespace bench --service-account client --out "$w/cl" >/dev/null

BE_POOLED=19443; BE_FRESH=19444; NGINX=29080; MESH=29180; ADMIN=29181
cat >"$w/backend.conf" <<EOF
worker_processes 1; daemon off; pid $w/backend.pid; error_log $w/backend.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  ssl_certificate $w/be/cert-chain.pem; ssl_certificate_key $w/be/key.pem;
  ssl_client_certificate $w/ca/ca-cert.pem; ssl_verify_client on;
  ssl_protocols TLSv1.3; ssl_session_cache off; ssl_session_tickets off;
  server { listen 127.0.0.1:$BE_POOLED ssl; keepalive_requests 1000000; keepalive_timeout 300s; location / { return 200 "hello from the backend\n"; } }
  server { listen 127.0.0.1:$BE_FRESH ssl; keepalive_timeout 0; location / { return 200 "hello from the backend\n"; } }
}
EOF
cat >"$w/proxy.conf" <<EOF
worker_processes 1; daemon off; pid $w/proxy.pid; error_log $w/proxy.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream pooled { server 127.0.0.1:$BE_POOLED; keepalive 64; keepalive_requests 1000000; }
  upstream fresh { server 127.0.0.1:$BE_FRESH; }
  proxy_http_version 1.1; proxy_set_header Connection "";
  proxy_ssl_certificate $w/cl/cert-chain.pem; proxy_ssl_certificate_key $w/cl/key.pem;
  proxy_ssl_trusted_certificate $w/ca/ca-cert.pem; proxy_ssl_verify on;
  proxy_ssl_name backend.bench; proxy_ssl_server_name on; proxy_ssl_protocols TLSv1.3;
  server {
    listen 127.0.0.1:$NGINX; keepalive_requests 1000000;
    location /pooled { proxy_pass https://pooled; }
    location /fresh { proxy_pass https://fresh; proxy_ssl_session_reuse off; }
  }
}
EOF
cat >"$w/mesh.yaml" <<EOF
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: pooled}
spec:
  hosts: [pooled.bench]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: $BE_POOLED}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: fresh}
spec:
  hosts: [fresh.bench]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: $BE_FRESH}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bench}
spec:
  host: "*.bench"
  trafficPolicy:
    tls:
      mode: MUTUAL
      clientCertificate: $w/cl/cert-chain.pem
      privateKey: $w/cl/key.pem
      caCertificates: $w/ca/ca-cert.pem
      sni: backend.bench
EOF

taskset -c 0 nginx -c "$w/backend.conf" & pids+=($!)
taskset -c 0 nginx -c "$w/proxy.conf" & nginx_pid=$!; pids+=($nginx_pid)
taskset -c 0 "$bin" proxy --config "$w/mesh.yaml" --http-proxy 127.0.0.1:$MESH --admin 127.0.0.1:$ADMIN \
  --outbound off --workers 1 --outbound-policy REGISTRY_ONLY --log-level warn & mesh_pid=$!; pids+=($mesh_pid)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$ADMIN/ready" && break; sleep 0.1; done

# One request each way first: both proxies must really originate mutual TLS, or the figures
# mean nothing.
for u in pooled fresh; do
  out=$(curl -s -x "http://127.0.0.1:$MESH" "http://$u.bench/") || true
  [[ $out == "hello from the backend" ]] || { echo "meshentry $u: $out" >&2; exit 1; }
  out=$(curl -s "http://127.0.0.1:$NGINX/$u") || true
  [[ $out == "hello from the backend" ]] || { echo "nginx $u: $out" >&2; exit 1; }
done

# The nginx worker, not its master, does the work.
nginx_worker=$(pgrep -P "$nginx_pid" | head -1)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick=$(getconf CLK_TCK)

echo 'wrk.path = os.getenv("WRK_PATH")' >"$w/path.lua"
run() { # proxy scenario -> "req/s cpu_us_per_req"
  local proxy=$1 scenario=$2 pid url out before after reqs
  if [[ $proxy == meshentry ]]; then
    pid=$mesh_pid; url="http://127.0.0.1:$MESH/"; export WRK_PATH="http://$scenario.bench/"
  else
    pid=$nginx_worker; url="http://127.0.0.1:$NGINX/"; export WRK_PATH="/$scenario"
  fi
  before=$(cpu_ticks "$pid")
  out=$(taskset -c 1 wrk -t1 -c32 -d"${DURATION}s" -s "$w/path.lua" "$url")
  after=$(cpu_ticks "$pid")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  if grep -q "Non-2xx" <<<"$out"; then echo "$proxy $scenario: errors: $out" >&2; exit 1; fi
  awk -v r="$reqs" -v d="$DURATION" -v c=$((after - before)) -v t="$tick" \
    'BEGIN { printf "%.0f %.1f\n", r / d, c / t * 1e6 / r }'
}

declare -A rps cpu
for rep in $(seq "$REPS"); do
  for scenario in pooled fresh; do
    for proxy in nginx meshentry; do
      read -r r c < <(run $proxy $scenario)
      rps[$proxy.$scenario]+="$r "; cpu[$proxy.$scenario]+="$c "
      echo "rep $rep $scenario $proxy: $r req/s, $c us CPU/req" >&2
    done
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
printf "\n%-8s %-10s %12s %14s\n" scenario proxy "req/s" "us CPU/req"
for scenario in pooled fresh; do
  for proxy in nginx meshentry; do
    printf "%-8s %-10s %12s %14s\n" $scenario $proxy "$(median <<<"${rps[$proxy.$scenario]}")" "$(median <<<"${cpu[$proxy.$scenario]}")"
  done
  n=$(median <<<"${rps[nginx.$scenario]}"); m=$(median <<<"${rps[meshentry.$scenario]}")
  nc=$(median <<<"${cpu[nginx.$scenario]}"); mc=$(median <<<"${cpu[meshentry.$scenario]}")
  awk -v n="$n" -v m="$m" -v nc="$nc" -v mc="$mc" -v s=$scenario \
    'BEGIN { printf "%-8s meshentry/nginx: %.2fx req/s, %.2fx CPU per request\n", s, m / n, mc / nc }'
done
