#!/usr/bin/env bash
# HTTP/2 cleartext (prior knowledge, h2c) through meshentry, HAProxy 2.6 and nginx 1.22 in one
# run, with h2load (Debian's nghttp2-client): many streams on few connections. Each proxy
# translates to HTTP/1.1 towards the same nginx backend (`return 200`, 19-byte body) that
# ../shared/bench/run.sh uses; "direct" is that nginx's own h2c listener (no proxy).
#
#   bench/h2.sh [--reps N] [--duration S] [--targets direct,haproxy,nginx,dut] [--json FILE]
#
# Workloads, per target and rep (reps interleaved across targets, medians reported):
#   mux:  h2load -c4 -m32 -D S   (128 streams in flight on 4 connections): req/s, p50, p99
#   lat1: h2load -c1 -m1  -D S   (one stream at a time): p50, p99, and what each proxy adds
#         over direct
# h2load prints no percentiles: each run writes `--log-file` (one line per request, its time
# to the end of the response) and the percentiles are taken from it. Every request carries
# `:authority: 127.0.0.1:18080` (the backend), which meshentry routes by (its ServiceEntry's VIP
# and port, bench/dut-meshentry.sh) and the others ignore.
#
# CPU: proxy CPU per request = utime+stime of the proxy's process tree (/proc/PID/stat) over the
# run / requests done. Other CPU % = busy ticks of the whole host minus this script's own tree,
# as % of one core (as run.sh): > 10 means something else was running, rerun.
# Placement as run.sh: cpu0 = backend + proxy, cpu1 = h2load. All proxies single-threaded
# (haproxy nbthread 1, nginx worker_processes 1, meshentry pinned to one CPU = one worker).
#
# Needs nginx, haproxy, h2load (apt-get install -y nghttp2-client nginx-light haproxy), python3,
# a release build (MESHENTRY_BIN, default target/release/meshentry).
set -uo pipefail

DURATION=10; REPS=3; TARGETS="direct,haproxy,nginx,dut"; JSON_OUT=""; SRV_CPU=0; CLI_CPU=1; WARMUP=2
while [[ $# -gt 0 ]]; do
  case "$1" in
    --reps) REPS="$2"; shift 2;;
    --duration) DURATION="$2"; shift 2;;
    --targets) TARGETS="$2"; shift 2;;
    --json) JSON_OUT="$2"; shift 2;;
    -h|--help) sed -n '2,25p' "$0"; exit 0;;
    *) echo "unknown arg: $1" >&2; exit 2;;
  esac
done
IFS=, read -r -a TGT <<<"$TARGETS"
here=$(cd "$(dirname "$0")/.." && pwd)
export MESHENTRY_BIN=${MESHENTRY_BIN:-$here/target/release/meshentry}
for b in nginx haproxy h2load taskset timeout ss python3; do
  command -v "$b" >/dev/null || { echo "missing: $b" >&2; exit 1; }
done
[[ $TARGETS != *dut* || -x $MESHENTRY_BIN ]] || { echo "no binary at $MESHENTRY_BIN" >&2; exit 1; }

H=127.0.0.1
BE_HTTP=18080
declare -A PORT=([direct]=18082 [haproxy]=28082 [nginx]=38082 [dut]=48082)
declare -A ROOTPID=()
AUTHORITY="$H:$BE_HTTP"
CTO=$((DURATION + 30))
W=$(mktemp -d -t h2bench.XXXXXX); chmod 755 "$W"
RES="$W/results.tsv"; : >"$RES"
PIDS=()
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
descendants() { local c; for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do echo "$c"; descendants "$c"; done; }
cleanup() {
  local p all=()
  for p in "${PIDS[@]}"; do all+=($(descendants "$p") "$p"); done
  for p in "${all[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 30); do
    local alive=0; for p in "${all[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [[ $alive = 0 ]] && break; sleep 0.1
  done
  for p in "${all[@]}"; do kill -KILL "$p" 2>/dev/null; done
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
wait_port() { local i; for i in $(seq $(( $2 * 10 ))); do listening "$1" && return 0; sleep 0.1; done; return 1; }
start() { local n=$1; shift; taskset -c "$SRV_CPU" "$@" >"$W/$n.out" 2>&1 & PIDS+=($!); ROOTPID[$n]=$!; }
for p in $BE_HTTP "${PORT[@]}"; do listening "$p" && { echo "port $p already in use; aborting" >&2; exit 1; }; done
# A connection still holding one of these ports as its local port (another client's ephemeral
# port, or a TIME_WAIT) makes a bind fail: wait for them to go.
busy() { local f="" p; for p in $BE_HTTP "${PORT[@]}"; do f+="${f:+ or }sport = :$p"; done; ss -Htan "( $f )" | grep -q .; }
for _ in $(seq 90); do busy || break; sleep 1; done

# ---------------------------------------------------------------- configs (as run.sh's)
ngx_common() { cat <<EOF
worker_processes 1;
pid $1/nginx.pid;
lock_file $1/nginx.lock;
error_log $1/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $1/body; proxy_temp_path $1/proxy; fastcgi_temp_path $1/fcgi;
  uwsgi_temp_path $1/uwsgi; scgi_temp_path $1/scgi;
  keepalive_timeout 75s; keepalive_requests 1000000;
EOF
}
mkdir -p "$W/be" "$W/ngx"
{ ngx_common "$W/be"; cat <<EOF
  server { listen $H:$BE_HTTP backlog=4096; listen $H:${PORT[direct]} http2 backlog=4096;
    location / { return 200 "hello from backend\n"; } } }
EOF
} >"$W/be/nginx.conf"
# nginx: `http2` on a listen without `ssl` is HTTP/2 with prior knowledge.
{ ngx_common "$W/ngx"; cat <<EOF
  upstream be { server $H:$BE_HTTP; keepalive 64; keepalive_requests 1000000; keepalive_timeout 75s; }
  server { listen $H:${PORT[nginx]} http2 backlog=4096;
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
  timeout client 120s
  timeout server 120s
  timeout http-keep-alive 120s
  maxconn 8000
frontend fe_h2c
  bind $H:${PORT[haproxy]} proto h2
  default_backend be_http
backend be_http
  http-reuse always
  server s1 $H:$BE_HTTP
EOF

# ---------------------------------------------------------------- start
log "workdir $W; server cpu $SRV_CPU, client cpu $CLI_CPU; targets ${TGT[*]}; binary $MESHENTRY_BIN"
start be nginx -p "$W/be/" -c "$W/be/nginx.conf" -e "$W/be/error.log" -g "daemon off;"
for t in "${TGT[@]}"; do
  case "$t" in
    direct) ;;
    haproxy) start haproxy haproxy -db -f "$W/haproxy.cfg";;
    nginx) start nginx nginx -p "$W/ngx/" -c "$W/ngx/nginx.conf" -e "$W/ngx/error.log" -g "daemon off;";;
    dut) BENCH_LISTEN_HTTP=$H:${PORT[dut]} BENCH_BACKEND_HTTP=$H:$BE_HTTP start dut "$here/bench/dut-meshentry.sh";;
    *) echo "unknown target $t" >&2; exit 2;;
  esac
done
for p in $BE_HTTP "${PORT[direct]}"; do wait_port "$p" 10 || { echo "backend port $p down" >&2; cat "$W"/*.out >&2; exit 1; }; done
for t in "${TGT[@]}"; do
  wait_port "${PORT[$t]}" 30 || { echo "$t: port ${PORT[$t]} not listening" >&2; cat "$W/$t.out" >&2; exit 1; }
done

# ---------------------------------------------------------------- measure
TCK=$(getconf CLK_TCK)
tree_ticks() { local p s=0 v; for p in "$1" $(descendants "$1"); do
    v=$(sed 's/^.*) //' /proc/"$p"/stat 2>/dev/null | awk '{print $12+$13}') || continue; s=$((s + ${v:-0})); done; echo $s; }
own_ticks() { local p s=0 v; for p in $$ $(descendants $$); do
    v=$(sed 's/^.*) //' /proc/"$p"/stat 2>/dev/null | awk '{print $12+$13+$14+$15}') || continue; s=$((s + ${v:-0})); done; echo $s; }
host_ticks() { awk '$1=="cpu"{print $2+$3+$4+$7+$8}' /proc/stat; }
rec() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RES"; }
h2() { # target rep kind clients streams [log]
  local t=$1 r=$2 k=$3 c=$4 m=$5 out="$W/h2load.$1.$2.$3"
  local t0 t1 p0=0 p1=0 h0 h1 o0 o1
  t0=$(date +%s.%N); h0=$(host_ticks); o0=$(own_ticks)
  [[ $t != direct ]] && p0=$(tree_ticks "${ROOTPID[$t]}")
  timeout -k 5 "$CTO" taskset -c "$CLI_CPU" h2load -c"$c" -m"$m" -D"$DURATION" -H ":authority: $AUTHORITY" \
    --log-file="$out.log" "http://$H:${PORT[$t]}/" >"$out.txt" 2>&1
  t1=$(date +%s.%N); h1=$(host_ticks); o1=$(own_ticks)
  [[ $t != direct ]] && p1=$(tree_ticks "${ROOTPID[$t]}")
  rec "$t" "$r" "${k}_other_pct" "$(awk -v d=$(( (h1-h0) - (o1-o0) )) -v k="$TCK" -v x="$t0" -v y="$t1" 'BEGIN{v=100*d/k/(y-x); printf "%.1f", v<0?0:v}')"
  [[ $t != direct ]] && rec "$t" "$r" "${k}_proxy_ticks" $((p1-p0))
  [[ $t != direct ]] && rec "$t" "$r" "${k}_proxy_cpu_pct" "$(awk -v d=$((p1-p0)) -v k="$TCK" -v x="$t0" -v y="$t1" 'BEGIN{printf "%.1f", 100*d/k/(y-x)}')"
  python3 - "$out" "$t" "$r" "$k" "$TCK" "$((p1-p0))" >>"$RES" <<'PY'
import re, sys
out, t, r, k, tck, ticks = sys.argv[1:7]
txt = open(out + ".txt").read()
def put(name, v): print(f"{t}\t{r}\t{k}_{name}\t{v}")
m = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", txt)
if m: put("rps", m.group(1))
m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", txt)
s = re.search(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", txt)
if m:
    done = int(m.group(2))
    put("errors", sum(int(g) for g in m.groups()[3:]) + (sum(int(g) for g in s.groups()) if s else 0))
    if t != "direct" and done:
        put("cpu_us_per_req", f"{int(ticks) / int(tck) * 1e6 / done:.3f}")
lat = []
for line in open(out + ".log"):
    f = line.split("\t")
    if len(f) >= 3 and f[1] == "200":
        lat.append(int(f[2]))
lat.sort()
if lat:
    for p in (50, 99):
        put(f"p{p}_ms", f"{lat[min(len(lat) - 1, int(len(lat) * p / 100))] / 1000:.4f}")
PY
  rm -f "$out.log"
}
for t in "${TGT[@]}"; do
  timeout -k 5 "$CTO" taskset -c "$CLI_CPU" h2load -c4 -m32 -D"$WARMUP" -H ":authority: $AUTHORITY" "http://$H:${PORT[$t]}/" >"$W/warm.$t.txt" 2>&1
  grep -q ' 0 failed, 0 errored' "$W/warm.$t.txt" || { echo "$t: warm-up failed" >&2; cat "$W/warm.$t.txt" "$W/$t.out" >&2; exit 1; }
done
for r in $(seq "$REPS"); do
  for t in "${TGT[@]}"; do
    log "rep $r/$REPS $t: mux (-c4 -m32)"; h2 "$t" "$r" mux 4 32; sleep 1
    log "rep $r/$REPS $t: lat1 (-c1 -m1)"; h2 "$t" "$r" lat1 1 1; sleep 1
  done
done

# ---------------------------------------------------------------- report
META=$(printf '{"duration_s":%s,"reps":%s,"targets":"%s","binary":"%s","date":"%s","nginx":"%s","haproxy":"%s","h2load":"%s"}' \
  "$DURATION" "$REPS" "$TARGETS" "$MESHENTRY_BIN" "$(date -u +%FT%TZ)" "$(nginx -v 2>&1 | sed 's/.*\///')" \
  "$(haproxy -v | head -1 | awk '{print $3}')" "$(h2load --version | awk '{print $2}')")
python3 - "$RES" "$TARGETS" "$JSON_OUT" "$META" <<'PY'
import json, statistics, sys
res, targets, jout, meta = sys.argv[1], sys.argv[2].split(","), sys.argv[3], json.loads(sys.argv[4])
raw = {}
for line in open(res):
    t, r, k, v = line.rstrip("\n").split("\t")
    raw.setdefault(t, {}).setdefault(k, {})[r] = float(v)
med = {t: {k: statistics.median(v.values()) for k, v in m.items()} for t, m in raw.items()}
cols = [("mux_rps", "req/s", "{:.0f}"), ("mux_p50_ms", "p50 ms", "{:.3f}"), ("mux_p99_ms", "p99 ms", "{:.3f}"),
        ("mux_cpu_us_per_req", "cpu us/req", "{:.2f}"), ("mux_proxy_cpu_pct", "proxy %", "{:.0f}"),
        ("lat1_rps", "c1 req/s", "{:.0f}"), ("lat1_p50_ms", "c1 p50 ms", "{:.3f}"), ("lat1_p99_ms", "c1 p99 ms", "{:.3f}"),
        ("lat1_cpu_us_per_req", "c1 us/req", "{:.2f}")]
w = 14
def table(title, cols, fn):
    print(f"\n{title}"); print("target".ljust(9) + "".join(h.rjust(w) for _, h, _ in cols))
    for t in targets: print(t.ljust(9) + "".join(fn(t, k, f).rjust(w) for k, _, f in cols))
def cell(t, k, f):
    v = med.get(t, {}).get(k); return "-" if v is None else f.format(v)
def rng(t, k, f):
    d = raw.get(t, {}).get(k); return "-" if not d else f"{f.format(min(d.values()))}-{f.format(max(d.values()))}"
table(f"h2c medians of {meta['reps']} reps x {meta['duration_s']} s (mux: -c4 -m32; c1: -c1 -m1)", cols, cell)
table("min-max over reps", cols, rng)
ratios = {}
for base in ("haproxy", "nginx"):
    if base not in targets: continue
    ratios[base] = {t: {k: (med[t][k] / med[base][k] if med.get(t, {}).get(k) and med[base].get(k) else None) for k, _, _ in cols} for t in targets}
    table(f"ratio target/{base} (medians)", cols, lambda t, k, f, b=base: "-" if ratios[b][t][k] is None else f"{ratios[b][t][k]:.3f}")
added = {}
if "direct" in targets:
    added = {t: {k: med[t][k] - med["direct"][k] for k in ("lat1_p50_ms", "lat1_p99_ms") if k in med.get(t, {}) and k in med["direct"]} for t in targets}
    table("c1 latency added over direct, ms", [("lat1_p50_ms", "c1 p50 +ms", "{:+.3f}"), ("lat1_p99_ms", "c1 p99 +ms", "{:+.3f}")],
          lambda t, k, f: "-" if k not in added[t] else f.format(added[t][k]))
table("errors (sum over reps) and other CPU on the host, max over reps (% of one core; > 10 = noisy)",
      [("mux_errors", "mux errs", "{:.0f}"), ("lat1_errors", "c1 errs", "{:.0f}"),
       ("mux_other_pct", "other% mux", "{:.1f}"), ("lat1_other_pct", "other% c1", "{:.1f}")],
      lambda t, k, f: "-" if k not in raw.get(t, {}) else f.format(sum(raw[t][k].values()) if k.endswith("errors") else max(raw[t][k].values())))
noisy = sorted(f"{t}/{k}" for t in targets for k in ("mux", "lat1") if max(raw.get(t, {}).get(f"{k}_other_pct", {"": 0}).values()) > 10)
if noisy: print(f"\nWARNING: other processes used > 10% of a core during: {', '.join(noisy)}")
print(f"\n{json.dumps(meta)}")
if jout:
    json.dump({"meta": meta, "raw": raw, "medians": med, "ratios": ratios, "added_ms_vs_direct": added, "noisy": noisy},
              open(jout, "w"), indent=1)
    print(f"JSON written to {jout}")
PY
