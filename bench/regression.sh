#!/usr/bin/env bash
# The proxy's no-regression set, one benchmark at a time (issue 16's before and after):
#   1. HTTP fast path, bench/callgrind-http.sh at two load durations (4 s and 16 s): the slope
#      (difference of Ir over difference of requests) is Ir/request with start-up taken out.
#   2. TCP relay, bench/callgrind-relay.sh twice: Ir/connection (also outside malloc, and
#      allocations) and Ir/MiB, and how far apart the two runs are.
#   3. ../shared/bench/run.sh against HAProxy with meshentry behind REDIRECT as the dut
#      (bench/dut-meshentry-capture.sh): HTTP, TLS passthrough and TCP bulk; 5 reps x 10 s,
#      no latency test.
# Logs, run.sh's JSON and `uptime` before each step go to OUTDIR; the figures are printed last.
#
#   MESHENTRY_BIN=/path/to/release/meshentry bench/regression.sh OUTDIR [STEPS]
# STEPS: a comma-separated subset of http,relay,run (default all three), to redo one step
# into the same OUTDIR; `none` prints the figures already there.
#
# Needs root (iptables), valgrind, nginx, wrk, haproxy, iperf3, python3, curl.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export MESHENTRY_BIN=${MESHENTRY_BIN:-$here/target/release/meshentry}
out=${1:?usage: bench/regression.sh OUTDIR [http,relay,run]}
steps=,${2:-http,relay,run},
[[ -x $MESHENTRY_BIN ]] || { echo "no binary at $MESHENTRY_BIN" >&2; exit 1; }
mkdir -p "$out"
note() { echo "== $* ($(date -u +%FT%TZ); $(uptime | sed 's/.*load average/load average/'))" | tee -a "$out/uptime.log"; }

[[ $steps == *,http,* ]] && for d in 4 16; do
  note "callgrind-http.sh $d"
  # Its exit status is head's SIGPIPE when the listing is cut; the figures say whether it ran.
  "$here/bench/callgrind-http.sh" "$d" 30 >"$out/http-$d.txt" || true
  grep -q '^Ir total: [0-9]' "$out/http-$d.txt" || { echo "callgrind-http.sh $d failed" >&2; exit 1; }
done
[[ $steps == *,relay,* ]] && for r in 1 2; do
  note "callgrind-relay.sh run $r"
  "$here/bench/callgrind-relay.sh" >"$out/relay-$r.txt"
done
if [[ $steps == *,run,* ]]; then
  # A socket still holding one of the dut's ports (a TIME_WAIT from an earlier step, or another
  # job's ephemeral port) makes its bind fail; wait for them to go.
  busy() { ss -Htan "( sport = :45000 or sport = :45001 or sport = :48080 or sport = :45201 or sport = :48443 )" | grep -q .; }
  for _ in $(seq 90); do busy || break; sleep 1; done
  note "run.sh capture dut vs haproxy"
  "$here/../shared/bench/run.sh" --proxy-cmd "$here/bench/dut-meshentry-capture.sh" --targets haproxy,dut \
    --reps 5 --duration 10 --no-lat1 --json "$out/run.json" >"$out/run.txt" 2>&1 \
    || { tail -5 "$out/run.txt" >&2; exit 1; }
  cp /tmp/meshentry-bench-capture.last "$out/capture.txt" 2>/dev/null || true
fi
[[ $steps == ,none, ]] || note "done"

val() { sed -n "s|^$2: ||p" "$1"; }
echo "binary: $MESHENTRY_BIN"
if [[ -f $out/http-4.txt && -f $out/http-16.txt ]]; then
  r4=$(val "$out/http-4.txt" requests); i4=$(val "$out/http-4.txt" "Ir total")
  r16=$(val "$out/http-16.txt" requests); i16=$(val "$out/http-16.txt" "Ir total")
  echo "HTTP fast path: 4 s run $r4 req, $i4 Ir; 16 s run $r16 req, $i16 Ir;" \
    "slope $(( (i16 - i4) / (r16 - r4) )) Ir/request"
fi
for r in 1 2; do
  [[ -f $out/relay-$r.txt ]] || continue
  f=$out/relay-$r.txt
  echo "relay run $r: $(val "$f" Ir/connection) Ir/connection ($(val "$f" "Ir/connection outside malloc") outside malloc," \
    "$(val "$f" allocations/connection) allocations), $(val "$f" Ir/MiB) Ir/MiB"
done
[[ -f $out/run.txt ]] && echo "run.sh: see $out/run.txt and $out/run.json"
exit 0
