#!/usr/bin/env bash
# Gateway TLS termination: full TLS handshakes per second and proxy CPU per connection, for
# meshentry `--gateway` binaries (a SIMPLE HTTPS server) against HAProxy terminating TLS, with
# the same certificate (ECDSA P-256), the same nginx backend and the same client, on loopback.
# ../shared/bench/run.sh measures TLS passthrough (routing by SNI) only, hence this script.
#
#   bench/gateway-tls.sh [--duration S] [--reps N] [--conns C] NAME=BIN [NAME=BIN...]
#   bench/gateway-tls.sh before=/tmp/meshentry-before after=target/release/meshentry
#
# Each meshentry binary runs twice: `NAME` with one HTTPS server on the port, `NAME/4srv` with
# four (three others, MUTUAL among them, listed first), so the cost of picking a server by SNI
# shows. The client's server has `hosts: ['*']` (Istio refuses the short name `localhost`, the
# only name that resolves here), so the SNI `localhost` takes the whole lookup: exact names,
# wildcards, then the server without names. Placement as in ../shared/bench: cpu0 runs the backend
# and the proxy (one worker; HAProxy `nbthread 1`), cpu1 the load generator. Load: `wrk -t1
# -cC -H 'Connection: close' https://localhost:PORT/`, so every request is a new connection and
# a full handshake (wrk does not resume sessions; HAProxy's cache is off). Reps are interleaved
# across targets. Every process started here is stopped on exit; traffic stays on 127.0.0.1.
set -euo pipefail

DURATION=10 REPS=3 CONNS=16
targets=()
while (($#)); do
  case $1 in
    --duration) DURATION=$2; shift 2;;
    --reps) REPS=$2; shift 2;;
    --conns) CONNS=$2; shift 2;;
    -h|--help) sed -n '2,17p' "$0"; exit 0;;
    *=*) targets+=("$1"); shift;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
((${#targets[@]})) || { echo "give at least one NAME=BIN" >&2; exit 2; }
for b in nginx haproxy wrk openssl taskset timeout; do
  command -v "$b" >/dev/null || { echo "missing $b (apt-get install -y wrk haproxy nginx-light openssl)" >&2; exit 1; }
done

H=127.0.0.1 BE=18480 P_HAP=18443
W=$(mktemp -d -t gateway-tls.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
for n in other1 other2 other3; do
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=$n.test" \
    -addext "subjectAltName=DNS:$n.test" -keyout "$W/$n.key" -out "$W/$n.pem" 2>/dev/null
done
cat "$W/cert.pem" "$W/key.pem" >"$W/combined.pem"

mkdir -p "$W/be"
cat >"$W/be/nginx.conf" <<EOF
worker_processes 1; pid $W/be/nginx.pid; error_log $W/be/error.log;
events { worker_connections 4096; }
http { access_log off;
  server { listen $H:$BE backlog=4096; location / { return 200 "ok\n"; } } }
EOF
taskset -c 0 nginx -p "$W/be/" -c "$W/be/nginx.conf" -e "$W/be/error.log" -g "daemon off;" &
pids+=($!)

cat >"$W/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4000
  tune.ssl.cachesize 0
  ssl-default-bind-options no-tls-tickets
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind $H:$P_HAP ssl crt $W/combined.pem alpn http/1.1
  default_backend be
backend be
  server s1 $H:$BE
EOF
taskset -c 0 haproxy -db -f "$W/haproxy.cfg" &
pids+=($!)
declare -A port pid_of
port[haproxy]=$P_HAP
pid_of[haproxy]=$!

# One Gateway; `extra` servers go before the client's (`*`).
gateway_yaml() {
  local extra=$1
  cat <<EOF
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend, namespace: istio-system}
spec:
  hosts: [backend.bench]
  ports: [{number: $BE, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: $H}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
EOF
  if [[ $extra == yes ]]; then
    cat <<EOF
  - port: {number: PORT, name: https-1, protocol: HTTPS}
    hosts: [other1.test]
    tls: {mode: SIMPLE, serverCertificate: $W/other1.pem, privateKey: $W/other1.key}
  - port: {number: PORT, name: https-2, protocol: HTTPS}
    hosts: ['*.other2.test']
    tls: {mode: MUTUAL, serverCertificate: $W/other2.pem, privateKey: $W/other2.key, caCertificates: $W/other3.pem}
  - port: {number: PORT, name: https-3, protocol: HTTPS}
    hosts: [other3.test]
    tls: {mode: MUTUAL, serverCertificate: $W/other3.pem, privateKey: $W/other3.key, caCertificates: $W/other2.pem}
EOF
  fi
  cat <<EOF
  - port: {number: PORT, name: https, protocol: HTTPS}
    hosts: ['*']
    tls: {mode: SIMPLE, serverCertificate: $W/cert.pem, privateKey: $W/key.pem}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: to-backend, namespace: istio-system}
spec:
  hosts: ['*']
  gateways: [gw]
  http:
  - route:
    - destination: {host: backend.bench, port: {number: $BE}}
EOF
}

names=(haproxy)
next=18500
for t in "${targets[@]}"; do
  name=${t%%=*} bin=${t#*=}
  for variant in 1 4; do
    n=$name; [[ $variant == 4 ]] && n="$name/4srv"
    p=$((next++)) a=$((next++))
    d="$W/cfg.$p"; mkdir -p "$d"
    gateway_yaml "$([[ $variant == 4 ]] && echo yes || echo no)" | sed "s/PORT/$p/" >"$d/gw.yaml"
    taskset -c 0 "$bin" proxy --config "$d" --gateway istio-system/gw --labels istio=ingressgateway \
      --gateway-bind $H --admin "$H:$a" --workers 1 --log-level warn >"$W/log.$p" 2>&1 &
    pids+=($!)
    port[$n]=$p pid_of[$n]=$!
    names+=("$n")
  done
done

for n in "${names[@]}"; do
  for _ in $(seq 50); do
    curl -sk --max-time 2 --resolve "localhost:${port[$n]}:$H" -o /dev/null -w '%{http_code}' "https://localhost:${port[$n]}/" 2>/dev/null | grep -q 200 && continue 2
    sleep 0.2
  done
  echo "$n on port ${port[$n]} does not answer 200" >&2
  cat "$W/log.${port[$n]}" "$W/cfg.${port[$n]}/gw.yaml" >&2 || true
  exit 1
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
printf '%-16s %4s %10s %10s %14s\n' target rep "conn/s" "errors" "cpu us/conn"
declare -A all
for r in $(seq "$REPS"); do
  for n in "${names[@]}"; do
    before=$(cpu_ticks "${pid_of[$n]}")
    out=$(timeout $((DURATION + 30)) taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s \
      -H 'Connection: close' "https://localhost:${port[$n]}/" 2>&1)
    after=$(cpu_ticks "${pid_of[$n]}")
    rps=$(sed -n 's/^Requests\/sec:[[:space:]]*\([0-9.]*\).*/\1/p' <<<"$out")
    reqs=$(sed -n 's/^[[:space:]]*\([0-9]*\) requests in.*/\1/p' <<<"$out")
    errs=$(sed -n 's/.*Socket errors: connect \([0-9]*\), read \([0-9]*\), write \([0-9]*\), timeout \([0-9]*\).*/\1 \2 \3 \4/p' <<<"$out" | awk '{print $1+$2+$3+$4}')
    non2xx=$(sed -n 's/.*Non-2xx or 3xx responses: \([0-9]*\).*/\1/p' <<<"$out")
    us=$(awk -v t=$((after - before)) -v hz="$hz" -v n="${reqs:-0}" 'BEGIN{ if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "-" }')
    printf '%-16s %4s %10s %10s %14s\n' "$n" "$r" "${rps:--}" "$((${errs:-0} + ${non2xx:-0}))" "$us"
    all[$n]+="${rps:-0} $us;"
    sleep 1
  done
done
echo
printf '%-16s %12s %14s\n' target "median c/s" "median us/conn"
for n in "${names[@]}"; do
  tr ';' '\n' <<<"${all[$n]}" | sed '/^$/d' | sort -n | awk -v n="$n" '{r[NR]=$1} END{m=int((NR+1)/2); printf "%-16s %12s", n, r[m]}'
  tr ';' '\n' <<<"${all[$n]}" | sed '/^$/d' | awk '{print $2}' | sort -n | awk '{u[NR]=$1} END{m=int((NR+1)/2); printf " %14s\n", u[m]}'
done
