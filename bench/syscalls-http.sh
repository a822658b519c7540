#!/usr/bin/env bash
# System calls per proxied HTTP/1.1 keep-alive request, meshentry beside HAProxy 2.6 and nginx
# 1.22, on ../shared/bench/run.sh's load (wrk -t1 -c32, the same nginx backend, the same pinning:
# cpu0 backend + proxy, cpu1 wrk). Two counters, one after the other for each proxy:
#   perf: `perf stat -e syscalls:sys_enter_*` on the proxy's processes (all threads), which
#         costs the proxy next to nothing, so the load and its batching are the real ones;
#   strace: `strace -f -c`, the brief's reference, which slows the proxy several times (each
#         epoll_wait then returns fewer events, so it shows more calls per request).
# Each count is divided by the requests wrk completed while the counter was attached; the user
# and system CPU per request (utime, stime) are from the perf window.
#
#   MESHENTRY_BIN=... bench/syscalls-http.sh [SECONDS (5)] [TARGETS (haproxy,nginx,dut)]
#
# Needs nginx, haproxy, wrk, perf, strace, python3.
set -uo pipefail
D=${1:-5}
IFS=, read -r -a TGT <<<"${2:-haproxy,nginx,dut}"
here=$(cd "$(dirname "$0")/.." && pwd)
export MESHENTRY_BIN=${MESHENTRY_BIN:-$here/target/release/meshentry}
H=127.0.0.1; BE=18080
declare -A PORT=([haproxy]=28080 [nginx]=38080 [dut]=48080)
W=$(mktemp -d -t syscalls.XXXXXX); chmod 755 "$W"
PIDS=()
descendants() { local c; for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do echo "$c"; descendants "$c"; done; }
cleanup() {
  local p all=(); for p in "${PIDS[@]}"; do all+=($(descendants "$p") "$p"); done
  for p in "${all[@]}"; do kill -TERM "$p" 2>/dev/null; done; sleep 0.5
  for p in "${all[@]}"; do kill -KILL "$p" 2>/dev/null; done; rm -rf "$W"
}
trap cleanup EXIT
listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
wait_port() { local i; for i in $(seq 100); do listening "$1" && return 0; sleep 0.1; done; return 1; }
# A connection still holding one of these ports as its local port (another client's ephemeral
# port, or a TIME_WAIT) makes a bind fail: wait for them to go.
busy() { local f="" p; for p in $BE "${PORT[@]}"; do f+="${f:+ or }sport = :$p"; done; ss -Htan "( $f )" | grep -q .; }
for _ in $(seq 90); do busy || break; sleep 1; done
declare -A ROOT=()
start() { local n=$1; shift; taskset -c 0 "$@" >"$W/$n.out" 2>&1 & PIDS+=($!); ROOT[$n]=$!; }

ngx() { cat <<EOF
worker_processes 1; pid $1/nginx.pid; lock_file $1/nginx.lock; error_log $1/error.log warn;
events { worker_connections 8192; }
http { access_log off; keepalive_timeout 75s; keepalive_requests 1000000;
  client_body_temp_path $1/b; proxy_temp_path $1/p; fastcgi_temp_path $1/f; uwsgi_temp_path $1/u; scgi_temp_path $1/s;
EOF
}
mkdir -p "$W/be" "$W/ngx"
{ ngx "$W/be"; echo "  server { listen $H:$BE backlog=4096; location / { return 200 \"hello from backend\n\"; } } }"; } >"$W/be/nginx.conf"
{ ngx "$W/ngx"; cat <<EOF
  upstream be { server $H:$BE; keepalive 64; keepalive_requests 1000000; keepalive_timeout 75s; }
  server { listen $H:${PORT[nginx]} backlog=4096;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
} >"$W/ngx/nginx.conf"
cat >"$W/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 75s
  timeout server 75s
  timeout http-keep-alive 75s
frontend fe
  bind $H:${PORT[haproxy]}
  default_backend be
backend be
  http-reuse always
  server s1 $H:$BE
EOF
start be nginx -p "$W/be/" -c "$W/be/nginx.conf" -g "daemon off;"
for t in "${TGT[@]}"; do
  case $t in
    haproxy) start haproxy haproxy -db -f "$W/haproxy.cfg";;
    nginx) start nginx nginx -p "$W/ngx/" -c "$W/ngx/nginx.conf" -g "daemon off;";;
    dut) BENCH_LISTEN_HTTP=$H:${PORT[dut]} BENCH_BACKEND_HTTP=$H:$BE start dut "$here/bench/dut-meshentry.sh";;
  esac
done
wait_port $BE || exit 1
for t in "${TGT[@]}"; do wait_port "${PORT[$t]}" || { echo "$t down" >&2; cat "$W/$t.out" >&2; exit 1; }; done
echo 'wrk.path = "http://127.0.0.1:18080/"' >"$W/abs.lua"
# The processes that serve requests: nginx's worker (not its idle master), the others' root.
procs() { case $1 in nginx) descendants "${ROOT[$1]}";; *) echo "${ROOT[$1]}";; esac; }
load() { # target seconds -> wrk output
  local a=(); [[ $1 = dut ]] && a=(-s "$W/abs.lua")
  taskset -c 1 wrk -t1 -c32 -d"$2"s "${a[@]}" "http://$H:${PORT[$1]}/"
}
# utime and stime (ticks) of the serving processes, all threads.
us_sys() { local p u=0 k=0 a b; for p in $(procs "$1"); do
    read -r a b < <(sed 's/^.*) //' /proc/"$p"/stat | awk '{print $12, $13}'); u=$((u + a)); k=$((k + b)); done; echo "$u $k"; }
EV=raw_syscalls:sys_enter
for s in read recvfrom recvmsg readv write writev sendto sendmsg epoll_wait epoll_pwait epoll_ctl \
  accept4 close connect socket setsockopt getsockopt futex timerfd_settime getsockname shutdown ioctl; do
  EV+=",syscalls:sys_enter_$s"; done
for t in "${TGT[@]}"; do load "$t" 2 >/dev/null; done
for t in "${TGT[@]}"; do
  pids=$(procs "$t" | paste -sd,)
  perf stat -x, -e "$EV" -p "$pids" -o "$W/perf.$t" & pp=$!
  sleep 0.3; u0=$(us_sys "$t"); load "$t" "$D" >"$W/wrk.perf.$t"; u1=$(us_sys "$t"); kill -INT $pp; wait $pp 2>/dev/null
  echo "$u0 $u1" >"$W/cpu.$t"
  sargs=(); for p in $(procs "$t"); do sargs+=(-p "$p"); done
  strace -f -c -o "$W/strace.$t" "${sargs[@]}" & sp=$!
  sleep 0.5; load "$t" "$D" >"$W/wrk.strace.$t"; kill -INT $sp; wait $sp 2>/dev/null
done
python3 - "$W" "${TGT[@]}" <<'PY'
import re, sys, os
w, targets = sys.argv[1], sys.argv[2:]
def reqs(f):
    m = re.search(r"(\d+) requests in", open(f).read()); return int(m.group(1)) if m else 0
table = {}
for t in targets:
    n = reqs(f"{w}/wrk.perf.{t}")
    for line in open(f"{w}/perf.{t}"):
        f = line.strip().split(",")
        if len(f) > 2 and f[0].isdigit():
            name = f[2].split(":")[-1].replace("sys_enter_", "")
            name = "TOTAL" if name == "sys_enter" else name
            table.setdefault(name, {}).setdefault(t, {})["perf"] = int(f[0]) / n
    n2 = reqs(f"{w}/wrk.strace.{t}")
    for line in open(f"{w}/strace.{t}"):
        f = line.split()
        if len(f) >= 5 and f[0][0].isdigit() and f[-1] not in ("total",):
            calls = int(f[3]); errs = int(f[4]) if len(f) == 6 else 0
            table.setdefault(f[-1], {}).setdefault(t, {})["strace"] = calls / n2
            if errs: table.setdefault(f[-1] + " (errors)", {}).setdefault(t, {})["strace"] = errs / n2
        elif len(f) >= 3 and f[-1] == "total":
            table.setdefault("TOTAL", {}).setdefault(t, {})["strace"] = int(f[3]) / n2
    u0, k0, u1, k1 = map(int, open(f"{w}/cpu.{t}").read().split())
    tck = os.sysconf("SC_CLK_TCK")
    print(f"{t}: {n} requests while perf counted, {n2} while strace counted; CPU per request while perf"
          f" counted: user {(u1 - u0) / tck * 1e6 / n:.2f} us, system {(k1 - k0) / tck * 1e6 / n:.2f} us")
print("\nsyscalls per request: perf (real load) / strace -f -c (slowed)")
print("syscall".ljust(24) + "".join(t.rjust(20) for t in targets))
def fmt(d):
    p, s = d.get("perf"), d.get("strace")
    return (f"{p:.3f}" if p is not None else "-") + " / " + (f"{s:.3f}" if s is not None else "-")
for name in sorted(table, key=lambda k: (k == "TOTAL", k)):
    row = table[name]
    if all(max(v.values()) < 0.0005 for v in row.values()): continue
    print(name.ljust(24) + "".join(fmt(row.get(t, {})).rjust(20) for t in targets))
PY
