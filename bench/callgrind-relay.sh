#!/usr/bin/env bash
# User-space instructions the TCP relay spends, counted by callgrind: repeatable whatever else
# the machine is doing, as bench/callgrind-http.sh for the HTTP fast path. Prints Ir per
# relayed connection and Ir per MiB relayed.
#
# meshentry runs as a sidecar does (as in bench/dut-meshentry-capture.sh): iptables (nat
# OUTPUT, REDIRECT) hands connections for a service VIP to the transparent listener, which
# reads SO_ORIGINAL_DST, finds a TCP ServiceEntry port (declared TCP: relayed without reading
# first) under REGISTRY_ONLY and relays to its STATIC 127.0.0.1 endpoint. The backend answers
# with the byte count it got, so every relayed byte is checked.
#
# Phases, each counted alone: callgrind's counters are zeroed before a phase and dumped after
# it (callgrind_control), so start-up and shutdown are in no figure.
#   idle    nothing happens for 5 s: the floor (timers, watchers)
#   conns   CONNS connections one after another: open, 8 + 64 B up, the count back, the
#           backend closes, then the client. Ir / CONNS = one short connection, relay set-up
#           and tear-down included
#   bulk    one connection carries MIB MiB up (1 MiB writes), then the count back:
#           (Ir - one connection) / MIB = the relay's cost per MiB
# conns and bulk run 3 rounds each (CGRELAY_ROUNDS); the figure is the least of the rounds.
#
#   bench/callgrind-relay.sh [CONNS] [MIB] [TOP]      (default 2000 1024 30; TOP: functions listed)
#
# What makes the counts repeat (the first version of this script moved 2-7% between runs):
# - Everything (proxy, backend, client) runs on one CPU (CGRELAY_CPU, default 1). Spread over
#   two, how many bytes and events each wake-up finds depends on how the processes interleave.
# - A first bulk transfer is not counted, and each figure is the least of 3 rounds: a round in
#   which other jobs took the CPU mid-transfer wakes the proxy more often (the epoll_wait count
#   printed with each round shows it) and can only count more.
# - glibc's allocator takes paths of different lengths for the same calls depending on the
#   heap's history (malloc_consolidate, bin searches): about +-1% of Ir/connection between
#   runs. So Ir/connection is also given without the allocator's internals (malloc.c, arena.c),
#   which repeats within 0.2%, next to the allocations per connection, which are exact.
#
# Needs root (iptables), valgrind, python3, curl. The capture rules live in a chain of this
# script's own (MESHENTRY_CGRELAY) matching one VIP:port, and are removed on exit.
# MESHENTRY_BIN: the binary (default ./target/release/meshentry).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${MESHENTRY_BIN:-$here/target/release/meshentry}
conns=${1:-2000}
mib=${2:-1024}
top=${3:-30}
idle=${CGRELAY_IDLE:-5}
rounds=${CGRELAY_ROUNDS:-3}
cpu=${CGRELAY_CPU:-1}
vip=127.0.16.1; vport=18190; outbound=127.0.0.1:18191; admin=127.0.0.1:18192; backend=18193
chain=MESHENTRY_CGRELAY
for b in valgrind callgrind_control callgrind_annotate python3 curl iptables; do
  command -v $b >/dev/null || { echo "missing: $b" >&2; exit 1; }
done
[[ -x $bin ]] || { echo "no binary at $bin (cargo build --release -p meshentry, or set MESHENTRY_BIN)" >&2; exit 1; }
[[ $(id -u) = 0 ]] || { echo "needs root (iptables)" >&2; exit 1; }
# Everything started from here on inherits it.
taskset -pc "$cpu" $$ >/dev/null

w=$(mktemp -d -t meshentry-cgrelay.XXXXXX)
pids=()
rules=0
cleanup() {
  if [[ $rules = 1 ]]; then
    while iptables -w -t nat -C OUTPUT -p tcp -j $chain 2>/dev/null; do iptables -w -t nat -D OUTPUT -p tcp -j $chain; done
    iptables -w -t nat -F $chain 2>/dev/null || true; iptables -w -t nat -X $chain 2>/dev/null || true
  fi
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n ${CGRELAY_KEEP:-} ]] && echo "kept: $w" >&2 || rm -rf "$w"
}
trap cleanup EXIT

cat >"$w/tcp.py" <<'PY'
import socket, socketserver, struct, sys

# The client sends an 8-byte length and that many bytes; the backend answers with the count
# it got and closes first, as a server ending a response does. The proxy then closes toward
# the client first too, so the TIME_WAIT sockets of the run sit on the backend's and the
# listener's fixed ports and none holds an ephemeral port on 127.0.0.1, where other
# benchmarks bind (run.sh's dut admin port is 45000).
def serve(port):
    class H(socketserver.BaseRequestHandler):
        def handle(self):
            buf, n = bytearray(1 << 20), 0
            head = b""
            while len(head) < 8:
                k = self.request.recv(8 - len(head))
                if not k:
                    return
                head += k
            want = struct.unpack("!Q", head)[0]
            while n < want:
                k = self.request.recv_into(buf, min(len(buf), want - n))
                if k == 0:
                    break
                n += k
            self.request.sendall(b"%d\n" % n)
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.daemon_threads = True
    socketserver.ThreadingTCPServer(("127.0.0.1", port), H).serve_forever()

def one(addr, chunk, times):
    s = socket.create_connection(addr)
    want = len(chunk) * times
    s.sendall(struct.pack("!Q", want))
    for _ in range(times):
        s.sendall(chunk)
    got = b""
    while True:
        b = s.recv(64)
        if not b:
            break
        got += b
    s.close()
    if got != b"%d\n" % want:
        sys.exit(f"sent {want} bytes, the backend reports {got!r}")

mode = sys.argv[1]
if mode == "serve":
    serve(int(sys.argv[2]))
else:
    addr = (sys.argv[2], int(sys.argv[3]))
    if mode == "conns":
        for _ in range(int(sys.argv[4])):
            one(addr, b"x" * 64, 1)
    elif mode == "bulk":
        one(addr, b"x" * (1 << 20), int(sys.argv[4]))
PY
python3 "$w/tcp.py" serve $backend & pids+=($!)

cat >"$w/relay.yaml" <<YAML
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bench-relay}
spec:
  hosts: [bench-relay.bench.local]
  addresses: [$vip]
  ports: [{number: $vport, name: tcp, protocol: TCP, targetPort: $backend}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
YAML
"$bin" validate "$w/relay.yaml" >"$w/validate.out" 2>&1 || { cat "$w/validate.out" >&2; exit 1; }

valgrind --tool=callgrind --compress-strings=no --compress-pos=no --callgrind-out-file="$w/cg.out" "$bin" proxy --config "$w/relay.yaml" \
  --http-proxy off --outbound $outbound --admin $admin --outbound-policy REGISTRY_ONLY --workers 1 \
  --log-level warn 2>"$w/vg.log" & vg=$!; pids+=($vg)
for _ in $(seq 150); do curl -s -o /dev/null http://$admin/ready && break; kill -0 $vg 2>/dev/null || break; sleep 0.2; done
curl -s -o /dev/null http://$admin/ready || { echo "the proxy did not become ready" >&2; cat "$w/vg.log" >&2; exit 1; }

if iptables -w -t nat -S $chain >/dev/null 2>&1; then
  echo "chain $chain exists already (another run, or a stale one: iptables -t nat -F $chain; iptables -t nat -X $chain)" >&2
  exit 1
fi
rules=1
iptables -w -t nat -N $chain
iptables -w -t nat -A $chain -p tcp -d $vip --dport $vport -j REDIRECT --to-ports "${outbound##*:}"
iptables -w -t nat -A OUTPUT -p tcp -j $chain

# One connection end to end through the redirect, which also warms up the proxy's lazies.
python3 "$w/tcp.py" conns $vip $vport 1
counter() { curl -s "http://$admin/stats" | sed -n "s/^meshentry\.$1: //p"; }
[[ $(counter tunnels_total) = 1 ]] || { echo "the relay was not used:" >&2; curl -s "http://$admin/stats" >&2; exit 1; }

phase() { # name command...: runs it between a zero and a dump of callgrind's counters
  local name=$1; shift
  sleep 0.5
  callgrind_control -z $vg >/dev/null 2>&1
  local t0; t0=$(date +%s.%N)
  "$@"
  # Let the last connection's tear-down finish inside the phase.
  sleep 0.5
  callgrind_control -d "$name" $vg >/dev/null 2>&1
  grep -q "^desc: Trigger: dump $name\$" "$w"/cg.out.* 2>/dev/null || { echo "callgrind_control did not dump $name" >&2; exit 1; }
  awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }' >"$w/$name.secs"
}
# A first bulk transfer, not counted: the first one after start-up woke the proxy more often.
python3 "$w/tcp.py" bulk $vip $vport 256
phase idle sleep "$idle"
for r in $(seq "$rounds"); do phase conns$r python3 "$w/tcp.py" conns $vip $vport "$conns"; done
for r in $(seq "$rounds"); do phase bulk$r python3 "$w/tcp.py" bulk $vip $vport "$mib"; done
tunnels=$(counter tunnels_total)
kill -TERM $vg; wait $vg || true
want=$((2 + rounds * (conns + 1)))
[[ $tunnels = "$want" ]] || { echo "expected $want relayed connections, the proxy counted $tunnels" >&2; exit 1; }

dump() { grep -l "^desc: Trigger: dump $1\$" "$w"/cg.out.* | head -1; }
ir() { sed -n 's/^summary: //p' "$(dump "$1")"; }
calls() { # how often phase $1 called functions: the system call wrappers, and the allocator
  awk '/^cfn=/ { c = substr($0, 5) } /^calls=/ { sub(/calls=/, "", $1); n[c] += $1 }
    END { n["alloc"] = n["__rustc::__rust_alloc"] + n["__rustc::__rust_alloc_zeroed"] + n["__rustc::__rust_realloc"];
          split("accept4 connect recv send epoll_wait close alloc", l, " ");
          for (i = 1; i <= 7; i++) printf "%s %d  ", l[i], n[l[i]]; printf "\n" }' "$(dump "$1")"
}
# Exclusive Ir per function. A dump taken after a zeroing charges the frames that were on the
# stack (main, block_on...) with their inclusive cost; they are left out.
functions() {
  callgrind_annotate --auto=no --threshold=100 "$(dump "$1")" 2>/dev/null | awk '
    /file:function/ { on = 1; next }
    on && /^ *[0-9,]+ \(/ { if (stack == "") stack = $1; if ($1 != stack) print }'
}
malloc_ir() { # Ir inside glibc's allocator (malloc.c, arena.c)
  functions "$1" | awk '/\/malloc\// { gsub(",", "", $1); t += $1 } END { print t + 0 }'
}
allocs() { calls "$1" | sed 's/.*alloc \([0-9]*\).*/\1/'; }
min() { tr ' ' '\n' | grep . | sort -n | head -1; }

echo "binary: $bin"
echo "idle: $(ir idle) Ir in $(cat "$w/idle.secs") s"
per_conn=""; outside=""; per_mib=""
for r in $(seq "$rounds"); do
  t=$(ir conns$r); m=$(malloc_ir conns$r)
  per_conn+=" $((t / conns))"; outside+=" $(((t - m) / conns))"
  echo "conns round $r: $conns connections, $t Ir ($m in malloc), $((t / conns)) Ir/connection," \
    "$(((t - m) / conns)) outside malloc ($(cat "$w/conns$r.secs") s); calls: $(calls conns$r)"
done
c=$(min <<<"$per_conn")
for r in $(seq "$rounds"); do
  t=$(ir bulk$r)
  per_mib+=" $(((t - c) / mib))"
  echo "bulk round $r: $mib MiB on one connection, $t Ir, $(((t - c) / mib)) Ir/MiB ($(cat "$w/bulk$r.secs") s); calls: $(calls bulk$r)"
done
# The least of the rounds: a round in which other jobs took the CPU mid-transfer wakes the proxy
# more often and can only count more.
echo "Ir/connection: $c"
echo "Ir/connection outside malloc: $(min <<<"$outside")"
echo "allocations/connection: $(awk -v a="$(allocs conns1)" -v n="$conns" 'BEGIN { printf "%.2f", a / n }')"
echo "Ir/MiB: $(min <<<"$per_mib")"
echo "rounds: Ir/connection$per_conn; outside malloc$outside; Ir/MiB$per_mib"
echo "-- conns1, top functions (exclusive Ir)"
functions conns1 | awk -v n="$top" 'NR <= n'
b=1; for r in $(seq "$rounds"); do [[ $(ir bulk$r) -lt $(ir bulk$b) ]] && b=$r; done
echo "-- bulk$b, top functions (exclusive Ir)"
functions bulk$b | awk -v n="$top" 'NR <= n'
