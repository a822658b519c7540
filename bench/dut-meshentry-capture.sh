#!/usr/bin/env bash
# The proxy under test for ../shared/bench/run.sh, run as a sidecar runs: applications connect
# to the BENCH_LISTEN addresses, where nothing accepts, and iptables (nat OUTPUT, REDIRECT)
# hands the connections to meshentry's transparent listener, which reads SO_ORIGINAL_DST and
# routes by its ServiceEntries under REGISTRY_ONLY:
#   - TCP: the destination is a service VIP with a declared TCP port: relayed, no detection.
#   - TLS: a TLS port of a service without addresses: the ClientHello's SNI picks the service
#     (as HAProxy's req.ssl_sni does); any other name is refused.
#   - HTTP: sniffed as HTTP/1, each request routed by Host (an IP here, so by the service
#     address on the destination port).
#
#   run.sh --proxy-cmd "$PWD/bench/dut-meshentry-capture.sh"     (no `exec`: see below)
#
# The capture rules live in a chain of our own (MESHENTRY_BENCH) and match exactly the three
# BENCH_LISTEN addresses, so the proxy's own connections to the backends are not captured
# and nothing else on the host is. They are removed when the proxy stops, so the script
# stays the parent: it forwards TERM/INT to the proxy, waits for it and cleans up, leaving
# the nat table as it found it (checked with `iptables -t nat -S`; a nat table that iptables
# created for us is deleted again, so conntrack hooks do not outlive the run).
#
# run.sh decides that a dut listens on a port with `ss -ltn`, not by connecting. So once the
# redirect has been checked end to end, a helper (outside the dut's process tree, so neither
# its memory nor its CPU is counted as the proxy's) holds listening sockets on the three
# BENCH_LISTEN addresses that nothing ever reaches: the REDIRECT rewrites the destination
# before a connection gets to them. Should one arrive anyway (the rules are gone), the helper
# closes it at once and counts it, so a broken capture fails the run instead of hanging it.
#
# Needs root (iptables), python3, curl, openssl. Environment (besides run.sh's BENCH_*):
#   MESHENTRY_BIN            the binary (default $CARGO_TARGET_DIR or ./target, release)
#   MESHENTRY_BENCH_OUTBOUND the transparent listener (default 127.0.0.1:45001)
#   MESHENTRY_BENCH_ADMIN    the admin listener (default 127.0.0.1:45000)
#   MESHENTRY_BENCH_REPORT   where the run's summary goes (default /tmp/meshentry-bench-capture.last)
#   MESHENTRY_BENCH_UID      the uid the proxy runs as (default 1337, as Istio's sidecar; 0: root)
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${MESHENTRY_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/meshentry}
outbound=${MESHENTRY_BENCH_OUTBOUND:-127.0.0.1:45001}
admin=${MESHENTRY_BENCH_ADMIN:-127.0.0.1:45000}
report=${MESHENTRY_BENCH_REPORT:-/tmp/meshentry-bench-capture.last}
uid=${MESHENTRY_BENCH_UID:-1337}
chain=MESHENTRY_BENCH
sni=${BENCH_TLS_SNI:-localhost}

host_of() { local h=${1%:*}; h=${h#[}; echo "${h%]}"; }
port_of() { echo "${1##*:}"; }
log() { printf 'dut-capture: %s\n' "$*" | tee -a "$report" >&2; }
: >"$report"

for v in BENCH_LISTEN_HTTP BENCH_LISTEN_TCP BENCH_LISTEN_TLS BENCH_BACKEND_HTTP BENCH_BACKEND_TCP BENCH_BACKEND_TLS; do
  [[ -n ${!v:-} ]] || { log "$v is not set (run this from run.sh --proxy-cmd)"; exit 2; }
done
[[ -x $bin ]] || { log "no binary at $bin (cargo build --release -p meshentry, or set MESHENTRY_BIN)"; exit 2; }
tcp_ip=$(host_of "$BENCH_LISTEN_TCP"); http_ip=$(host_of "$BENCH_LISTEN_HTTP")
ipt=iptables; [[ $tcp_ip == *:* ]] && ipt=ip6tables
nft_family=ip; [[ $ipt = ip6tables ]] && nft_family=ip6

cfg=$(mktemp -d -t meshentry-bench.XXXXXX)
cat >"$cfg/bench.yaml" <<YAML
# TCP: the listen address is the service's VIP, the port declared TCP: relayed on the
# original destination alone.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bench-tcp}
spec:
  hosts: [bench-tcp.bench.local]
  addresses: [$tcp_ip]
  ports: [{number: $(port_of "$BENCH_LISTEN_TCP"), name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: $(host_of "$BENCH_BACKEND_TCP"), ports: {tcp: $(port_of "$BENCH_BACKEND_TCP")}}]
---
# TLS without addresses: routed by the ClientHello's SNI.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bench-tls}
spec:
  hosts: [$sni]
  ports: [{number: $(port_of "$BENCH_LISTEN_TLS"), name: tls, protocol: TLS}]
  resolution: STATIC
  endpoints: [{address: $(host_of "$BENCH_BACKEND_TLS"), ports: {tls: $(port_of "$BENCH_BACKEND_TLS")}}]
---
# HTTP: detected, then each request by its Host (an IP literal: the service address).
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bench-http}
spec:
  hosts: [bench-http.bench.local]
  addresses: [$http_ip]
  ports: [{number: $(port_of "$BENCH_LISTEN_HTTP"), name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: $(host_of "$BENCH_BACKEND_HTTP"), ports: {http: $(port_of "$BENCH_BACKEND_HTTP")}}]
YAML

# ---------------------------------------------------------------- capture rules
nat_before=$($ipt -w -t nat -S)
nft_table_before=0; nft list table "$nft_family" nat >/dev/null 2>&1 && nft_table_before=1
rules_installed=0
install_rules() {
  if $ipt -w -t nat -S "$chain" >/dev/null 2>&1; then
    log "chain $chain already exists (another capture benchmark running, or a stale one: $ipt -t nat -D OUTPUT -p tcp -j $chain; $ipt -t nat -F $chain; $ipt -t nat -X $chain)"
    return 1
  fi
  rules_installed=1
  $ipt -w -t nat -N "$chain" || return 1
  local a
  for a in "$BENCH_LISTEN_HTTP" "$BENCH_LISTEN_TCP" "$BENCH_LISTEN_TLS"; do
    $ipt -w -t nat -A "$chain" -p tcp -d "$(host_of "$a")" --dport "$(port_of "$a")" \
      -j REDIRECT --to-ports "$(port_of "$outbound")" || return 1
  done
  # The jump last, so capture starts only once the chain is complete.
  $ipt -w -t nat -A OUTPUT -p tcp -j "$chain" || return 1
}
remove_rules() {
  [[ $rules_installed = 1 ]] || return 0
  rules_installed=0
  while $ipt -w -t nat -C OUTPUT -p tcp -j "$chain" 2>/dev/null; do $ipt -w -t nat -D OUTPUT -p tcp -j "$chain"; done
  $ipt -w -t nat -F "$chain" 2>/dev/null; $ipt -w -t nat -X "$chain" 2>/dev/null
  # iptables-nft creates the nat table (and so conntrack hooks) on first use and leaves it;
  # drop it again if it did not exist before and holds nothing now.
  local empty; empty=$(printf '%s\n' "-P PREROUTING ACCEPT" "-P INPUT ACCEPT" "-P OUTPUT ACCEPT" "-P POSTROUTING ACCEPT")
  if [[ $nft_table_before = 0 && "$($ipt -w -t nat -S)" = "$empty" ]]; then
    nft delete table "$nft_family" nat 2>/dev/null
  fi
  if [[ "$($ipt -w -t nat -S)" = "$nat_before" ]]; then
    log "nat table restored: '$ipt -t nat -S' is as before the run"
  else
    log "WARNING: '$ipt -t nat -S' differs from before the run:"; diff <(echo "$nat_before") <($ipt -w -t nat -S) | tee -a "$report" >&2
  fi
}

# ---------------------------------------------------------------- processes
proxy=""; holder=""
listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
stats() { curl -s --max-time 1 "http://$admin/stats" | grep -E 'outbound_|tunnels_total|blocked|http_requests_total|upstream'; }
finish() {
  trap - TERM INT EXIT
  remove_rules
  if [[ -n $holder ]]; then
    local q; q=$(ss -Hltn "( sport = :$(port_of "$BENCH_LISTEN_HTTP") or sport = :$(port_of "$BENCH_LISTEN_TCP") or sport = :$(port_of "$BENCH_LISTEN_TLS") )" | awk '{s+=$2} END{print s+0}')
    kill -TERM "$holder" 2>/dev/null
    log "placeholder sockets: accept queues held $q connection(s) at the end; $(cat "$cfg/leaks" 2>/dev/null || echo 0) reached them during the run (both must be 0)"
  fi
  if [[ -n $proxy ]] && kill -0 "$proxy" 2>/dev/null; then
    stats | sed 's/^/dut-capture: /' | tee -a "$report" >&2
    kill -TERM "$proxy" 2>/dev/null; wait "$proxy"
  fi
  rm -rf "$cfg"
}
trap 'finish; exit 0' TERM INT
trap 'finish' EXIT

"$bin" validate "$cfg/bench.yaml" >"$cfg/validate.out" 2>&1 || { cat "$cfg/validate.out" >&2; exit 1; }
# As a sidecar runs: as its own uid (Istio's 1337), which is what the capture rules of a real
# install exempt; here the rules match only the benchmark's addresses, so no exemption is
# needed. MESHENTRY_BENCH_UID=0 runs it as root instead.
as_uid=()
if [[ $uid != 0 ]]; then
  command -v setpriv >/dev/null || { log "setpriv is missing (util-linux), or set MESHENTRY_BENCH_UID=0"; exit 2; }
  chmod 755 "$cfg"; chmod 644 "$cfg/bench.yaml"
  as_uid=(setpriv --reuid="$uid" --regid="$uid" --clear-groups)
fi
"${as_uid[@]}" "$bin" proxy --config "$cfg/bench.yaml" --http-proxy 127.0.0.1:0 --outbound "$outbound" --admin "$admin" \
  --outbound-policy REGISTRY_ONLY --log-level warn &
proxy=$!
for _ in $(seq 100); do listening "$(port_of "$outbound")" && break; kill -0 "$proxy" 2>/dev/null || exit 1; sleep 0.1; done
listening "$(port_of "$outbound")" || { log "the proxy did not listen on $outbound"; exit 1; }
install_rules || exit 1
log "capture: $($ipt -w -t nat -S "$chain" | grep -c REDIRECT) REDIRECT rules in $chain -> $outbound"

# End to end through the redirect before anything claims the ports (TCP is not probed: a bare
# connection would be iperf3's control connection; the run itself measures it).
body=$(curl -s --max-time 3 "http://$BENCH_LISTEN_HTTP/") || { log "HTTP through the redirect failed"; exit 1; }
log "HTTP via redirect: ${body}"
openssl s_client -connect "$BENCH_LISTEN_TLS" -servername "$sni" </dev/null >"$cfg/tls.out" 2>&1 \
  && grep -q '^Verification\|^New, TLS' "$cfg/tls.out" || { log "TLS through the redirect failed"; cat "$cfg/tls.out" >&2; exit 1; }
log "TLS via redirect (SNI $sni): $(grep -m1 '^New, ' "$cfg/tls.out")"

# Listening sockets for run.sh's `ss` check; see the header.
setsid -f python3 - "$$" "$cfg" "$BENCH_LISTEN_HTTP" "$BENCH_LISTEN_TCP" "$BENCH_LISTEN_TLS" >>"$report" 2>&1 <<'PY'
import os, select, signal, socket, sys
parent, d, addrs = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
socks, leaks = [], 0
for a in addrs:
    h, p = a.rsplit(":", 1)
    h = h.strip("[]")
    s = socket.socket(socket.AF_INET6 if ":" in h else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((h, int(p)))
    s.listen(16)
    socks.append(s)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
open(os.path.join(d, "holder.pid"), "w").write(str(os.getpid()))
while True:
    for s in select.select(socks, [], [], 1.0)[0]:
        c, peer = s.accept()
        c.close()
        leaks += 1
        print(f"dut-capture: LEAK: a connection from {peer} reached {s.getsockname()} (not redirected)", flush=True)
        open(os.path.join(d, "leaks"), "w").write(str(leaks))
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        break
PY
for _ in $(seq 50); do [[ -s $cfg/holder.pid ]] && break; sleep 0.1; done
holder=$(cat "$cfg/holder.pid" 2>/dev/null)
[[ -n $holder ]] || { log "placeholder sockets did not start"; exit 1; }
log "ready: proxy pid $proxy, placeholder pid $holder"

wait "$proxy"; rc=$?
proxy=""
log "the proxy exited by itself (status $rc)"
exit "$rc"
