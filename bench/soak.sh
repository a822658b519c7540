#!/usr/bin/env bash
# Soak: meshentry as a sidecar under mixed HTTP, TLS and TCP load at a steady rate for a long
# time (default 10 minutes), with a configuration reload every 30 s and the access log and
# Prometheus metrics on, sampling the proxy's memory and file descriptors.
#
#   bench/soak.sh [--duration 600] [--http-rate 1000] [--tls-rate 200] [--tcp-rate 100]
#                 [--reload-every 30] [--out FILE]
#
# Everything runs in a network namespace of its own (meshentry-soak), so nothing on the host
# is touched and nothing leaves loopback: nginx backends on 127.0.0.1, the proxy as uid 1337
# behind `meshentry iptables install` (as Istio's sidecar), and the clients as root, whose
# connections are captured:
#   HTTP  wrk -> soak-http.local (VIP 198.51.100.1:80, declared HTTP) -> nginx, keep-alive;
#   TLS   wrk -> soak-tls.local:443 (198.51.100.2, not a VIP: routed by SNI), a new TLS connection per request;
#   TCP   a python client -> soak-tcp.local (VIP 198.51.100.3:5201, declared TCP) -> nginx
#         stream `return` (1 KiB, then close), a new connection each time.
# wrk's delay() hook and the python client's pacing hold each load at its rate.
#
# Pass: RSS at the end within 10% of RSS after the first minute (the warm-up: pools, buffers
# and the allocator's arenas filled), and the open file descriptors back to their idle count
# once the load stops. Needs root, ip, iptables, nginx (with the stream module), wrk, python3,
# setpriv. MESHENTRY_BIN: the binary (default target/release/meshentry).
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${MESHENTRY_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/meshentry}
DURATION=600; HTTP_RATE=1000; TLS_RATE=200; TCP_RATE=100; RELOAD_EVERY=30; OUT=/tmp/meshentry-soak.txt
while [[ $# -gt 0 ]]; do
  case "$1" in
    --duration) DURATION=$2; shift 2;;
    --http-rate) HTTP_RATE=$2; shift 2;;
    --tls-rate) TLS_RATE=$2; shift 2;;
    --tcp-rate) TCP_RATE=$2; shift 2;;
    --reload-every) RELOAD_EVERY=$2; shift 2;;
    --out) OUT=$2; shift 2;;
    -h|--help) sed -n '2,25p' "$0"; exit 0;;
    *) echo "unknown argument: $1" >&2; exit 2;;
  esac
done
[[ -x $bin ]] || { echo "no binary at $bin (cargo build --release -p meshentry, or set MESHENTRY_BIN)" >&2; exit 2; }
for b in ip iptables nginx wrk python3 setpriv curl; do command -v $b >/dev/null || { echo "missing: $b" >&2; exit 2; }; done
STREAM_MOD=/usr/lib/nginx/modules/ngx_stream_module.so
[[ -f $STREAM_MOD ]] || { echo "missing $STREAM_MOD (apt install libnginx-mod-stream)" >&2; exit 2; }

NS=meshentry-soak
W=$(mktemp -d -t meshentry-soak.XXXXXX); chmod 755 "$W"
pids=()
log() { printf '%s soak: %s\n' "$(date +%T)" "$*" | tee -a "$OUT" >&2; }
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  ip netns pids "$NS" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
  ip netns del "$NS" 2>/dev/null
  rm -rf "/etc/netns/$NS" "$W"
}
trap cleanup EXIT INT TERM
: >"$OUT"
in_ns() { ip netns exec "$NS" "$@"; }

ip netns del "$NS" 2>/dev/null
# As in a pod: lo, and an interface holding the default route, so that connects to service
# addresses (TEST-NET-2 here) go ahead and iptables captures them; what is not captured
# reaches dummy0, which drops it. The namespace has no link to the host.
{ ip netns add "$NS" && in_ns ip link set lo up && { in_ns ip link add dummy0 type dummy 2>/dev/null || in_ns ip link add dummy0 type ifb; } && in_ns ip link set dummy0 up \
  && in_ns ip addr add 192.0.2.1/24 dev dummy0 && in_ns ip route add default dev dummy0; } \
  || { echo "cannot create network namespace $NS" >&2; exit 1; }
# `ip netns exec` mounts /etc/netns/NAME/* over /etc: the service names resolve in there only.
mkdir -p "/etc/netns/$NS"
printf '127.0.0.1 localhost\n198.51.100.1 soak-http.local\n198.51.100.2 soak-tls.local\n198.51.100.3 soak-tcp.local\n' >"/etc/netns/$NS/hosts"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$W/key.pem" -out "$W/cert.pem" \
  -days 2 -subj /CN=soak-tls.local -addext subjectAltName=DNS:soak-tls.local 2>/dev/null
mkdir -p "$W/ngx"
cat >"$W/ngx/nginx.conf" <<EOF
load_module $STREAM_MOD;
worker_processes 1; daemon off; pid $W/ngx/nginx.pid; error_log $W/ngx/error.log;
events { worker_connections 16384; }
http {
  access_log off; client_body_temp_path $W/ngx/cb; proxy_temp_path $W/ngx/pt; fastcgi_temp_path $W/ngx/ft;
  uwsgi_temp_path $W/ngx/ut; scgi_temp_path $W/ngx/st; keepalive_requests 1000000; keepalive_timeout 75s;
  server { listen 127.0.0.1:18080 backlog=4096; location / { return 200 "soak http\n"; } }
  server { listen 127.0.0.1:18443 ssl backlog=4096; ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;
    ssl_session_cache off; ssl_session_tickets off; location / { return 200 "soak tls\n"; } }
}
stream { server { listen 127.0.0.1:15201 backlog=4096; return "$(head -c 1024 /dev/zero | tr '\0' x)"; } }
EOF
ip netns exec "$NS" nginx -c "$W/ngx/nginx.conf" -p "$W/ngx" >"$W/ngx.out" 2>&1 &
pids+=($!)

cfg="$W/config"; mkdir -p "$cfg"; chmod 755 "$cfg"
write_config() { # $1: a generation number, in a label, so each reload is a real change
  cat >"$cfg/soak.yaml.tmp" <<EOF
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: soak-http, labels: {generation: "g$1"}}
spec:
  hosts: [soak-http.local]
  addresses: [198.51.100.1]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 18080}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: soak-tls}
spec:
  hosts: [soak-tls.local]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {tls: 18443}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: soak-tcp}
spec:
  hosts: [soak-tcp.local]
  addresses: [198.51.100.3]
  ports: [{number: 5201, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {tcp: 15201}}]
EOF
  chmod 644 "$cfg/soak.yaml.tmp"; mv "$cfg/soak.yaml.tmp" "$cfg/soak.yaml"
}
write_config 0
touch "$W/access.log"; chown 1337:1337 "$W/access.log"
access_log=(); "$bin" proxy --help 2>/dev/null | grep -q -- --access-log && access_log=(--access-log "$W/access.log")
# Not through in_ns: a backgrounded function is a subshell, and $! must be the proxy itself
# (ip netns exec and setpriv both exec).
ip netns exec "$NS" setpriv --reuid=1337 --regid=1337 --clear-groups "$bin" proxy --config "$cfg" \
  --outbound 127.0.0.1:15001 --http-proxy off --admin 127.0.0.1:15000 --outbound-policy REGISTRY_ONLY \
  "${access_log[@]}" --log-level warn >"$W/proxy.out" 2>&1 &
proxy=$!; pids+=($proxy)
for _ in $(seq 100); do in_ns curl -s -o /dev/null http://127.0.0.1:15000/ready && break; sleep 0.1; done
in_ns "$bin" iptables install --proxy-uid 1337 --outbound-port 15001 >"$W/iptables.out" 2>&1 \
  || { cat "$W/iptables.out" >&2; exit 1; }
admin() { in_ns curl -s --max-time 2 "http://127.0.0.1:15000$1"; }
in_ns curl -sf --max-time 2 http://soak-http.local/ >/dev/null || { log "HTTP through capture failed"; cat "$W/proxy.out" >&2; exit 1; }
in_ns curl -sfk --max-time 2 https://soak-tls.local/ >/dev/null || { log "TLS through capture failed"; exit 1; }

sample() { # elapsed-seconds label
  local rss fds thr
  rss=$(awk '/^VmRSS/{print $2}' "/proc/$proxy/status"); fds=$(ls "/proc/$proxy/fd" | wc -l)
  thr=$(awk '/^Threads/{print $2}' "/proc/$proxy/status")
  printf '%6s %-8s rss_kib=%s fds=%s threads=%s\n' "$1" "$2" "$rss" "$fds" "$thr" | tee -a "$OUT" >&2
  echo "$rss $fds"
}
[[ $(readlink "/proc/$proxy/exe") = "$(readlink -f "$bin")" ]] || { log "pid $proxy is not the proxy"; exit 1; }
read -r _ idle_fds < <(sample 0 idle)

# Loads. wrk's delay() spaces each connection's requests so the total stays at the rate.
HTTP_CONNS=16; TLS_CONNS=8
printf 'function delay() return %s end\n' "$(( 1000 * HTTP_CONNS / HTTP_RATE ))" >"$W/http.lua"
printf 'function delay() return %s end\n' "$(( 1000 * TLS_CONNS / TLS_RATE ))" >"$W/tls.lua"
ip netns exec "$NS" wrk -t1 -c$HTTP_CONNS -d"${DURATION}s" --timeout 5s -s "$W/http.lua" http://soak-http.local/ >"$W/wrk-http.txt" 2>&1 &
pids+=($!); wrk_http=$!
ip netns exec "$NS" wrk -t1 -c$TLS_CONNS -d"${DURATION}s" --timeout 5s -s "$W/tls.lua" -H 'Connection: close' https://soak-tls.local/ >"$W/wrk-tls.txt" 2>&1 &
pids+=($!); wrk_tls=$!
ip netns exec "$NS" python3 - "$DURATION" "$TCP_RATE" >"$W/tcp.txt" 2>&1 <<'PY' &
import socket, sys, time
duration, rate = float(sys.argv[1]), float(sys.argv[2])
ok = bad = 0
start = time.monotonic(); n = 0
while time.monotonic() - start < duration:
    n += 1
    try:
        s = socket.create_connection(("soak-tcp.local", 5201), timeout=5)
        got = 0
        while True:
            b = s.recv(65536)
            if not b: break
            got += len(b)
        s.close()
        if got == 1024: ok += 1
        else: bad += 1
    except OSError:
        bad += 1
    wait = start + n / rate - time.monotonic()
    if wait > 0: time.sleep(wait)
print(f"tcp connections ok={ok} failed={bad}")
PY
pids+=($!); tcp_client=$!
log "load: HTTP ${HTTP_RATE} req/s, TLS ${TLS_RATE} conn/s, TCP ${TCP_RATE} conn/s for ${DURATION}s; reload every ${RELOAD_EVERY}s"

t0=$(date +%s); gen=0; next_reload=$RELOAD_EVERY; base_rss=""; max_rss=0; last_rss=0
while :; do
  sleep 10
  el=$(( $(date +%s) - t0 )); (( el >= DURATION )) && break
  if (( el >= next_reload )); then gen=$((gen + 1)); write_config $gen; next_reload=$((next_reload + RELOAD_EVERY)); fi
  admin /stats/prometheus >/dev/null
  read -r rss fds < <(sample "$el" load)
  (( el >= 60 )) && [[ -z $base_rss ]] && base_rss=$rss
  (( rss > max_rss )) && max_rss=$rss
  last_rss=$rss
done
wait "$wrk_http" "$wrk_tls" "$tcp_client" 2>/dev/null
# Idle upstream HTTP connections stay pooled for the pool's idle timeout (60 s): wait for
# them to go before counting what is left open.
for _ in $(seq 18); do
  sleep 5
  read -r end_rss end_fds < <(sample "$(( $(date +%s) - t0 ))" idle)
  (( end_fds <= idle_fds )) && break
done

reloads=$(admin /stats | awk '/config_reloads/{print $2; exit}')
log "wrk HTTP: $(grep -E 'requests in|Non-2xx|Socket errors' "$W/wrk-http.txt" | tr -s ' ' | paste -sd';')"
log "wrk TLS:  $(grep -E 'requests in|Non-2xx|Socket errors' "$W/wrk-tls.txt" | tr -s ' ' | paste -sd';')"
log "TCP: $(cat "$W/tcp.txt")"
log "access log: $(wc -l <"$W/access.log") lines; reloads applied: ${reloads:-unknown} of $gen written"
base_rss=${base_rss:-$last_rss}
growth=$(awk -v a="$base_rss" -v b="$last_rss" 'BEGIN{printf "%.1f", (b-a)*100/a}')
log "RSS after the first minute ${base_rss} KiB, at the end of the load ${last_rss} KiB (${growth}%), highest ${max_rss} KiB, idle after ${end_rss} KiB"
log "open fds idle before ${idle_fds}, idle after ${end_fds}"
pass=1
awk -v g="$growth" 'BEGIN{exit !(g <= 10)}' || { log "FAIL: RSS grew more than 10%"; pass=0; }
if (( end_fds > idle_fds )); then
  log "FAIL: file descriptors leaked ($idle_fds -> $end_fds); the proxy's sockets:"
  in_ns ss -tanpe | grep "pid=$proxy," | tee -a "$OUT" >&2
  ls -l "/proc/$proxy/fd" | tee -a "$OUT" >&2
  pass=0
fi
(( pass )) && log "PASS" || exit 1
