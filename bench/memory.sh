#!/usr/bin/env bash
# The proxy's memory against the size of its configuration (issue 20): for each N, a generated
# file of N ServiceEntries (crates/meshentry-api/examples/gen_service_entries: 3 hosts, 2 ports
# and 4 STATIC endpoints each, so no DNS is ever asked), `meshentry proxy` started on it, and
# once /ready answers: the time to ready, VmRSS and VmHWM (peak) from /proc, then VmRSS again
# after one GET /config_dump (the admin endpoint that holds the most at once).
#
#   MESHENTRY_BIN=target/release/meshentry bench/memory.sh [N...]     # default: 1000 10000 50000
# MESHENTRY_MEM_SETTLE=SECONDS (default 1): how long to wait after /ready before reading RSS.
# Needs curl. Listens on 127.0.0.1:47100 (admin) and 127.0.0.1:47180 (explicit proxy).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${MESHENTRY_BIN:-$here/target/release/meshentry}
gen=$here/target/release/examples/gen_service_entries
[[ -x $gen ]] || (cd "$here" && cargo build --release -q -p meshentry-api --example gen_service_entries)
sizes=("$@")
[[ ${#sizes[@]} -gt 0 ]] || sizes=(1000 10000 50000)
work=$(mktemp -d -t meshentry-mem.XXXXXX)
pid=
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$pid/status"; }

printf '%-8s %10s %12s %14s %14s %18s\n' N "yaml MB" "ready s" "RSS MiB" "peak MiB" "RSS after dump"
for n in "${sizes[@]}"; do
  mkdir -p "$work/$n"
  "$gen" "$n" > "$work/$n/config.yaml"
  start=$(date +%s.%N)
  "$bin" proxy --config "$work/$n" --http-proxy 127.0.0.1:47180 --outbound off \
    --admin 127.0.0.1:47100 --dns-server 127.0.0.1:1 --log-level warn 2>"$work/$n.err" &
  pid=$!
  until curl -sf http://127.0.0.1:47100/ready >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { cat "$work/$n.err" >&2; exit 1; }
    sleep 0.02
  done
  ready=$(echo "$(date +%s.%N) - $start" | bc)
  sleep "${MESHENTRY_MEM_SETTLE:-1}" # let the allocator settle after the build
  rss=$(kib VmRSS); hwm=$(kib VmHWM)
  curl -sf http://127.0.0.1:47100/config_dump -o /dev/null
  sleep "${MESHENTRY_MEM_SETTLE:-1}" # the response body is freed once it is sent
  after=$(kib VmRSS)
  printf '%-8s %10.1f %12.2f %14.1f %14.1f %18.1f\n' "$n" \
    "$(echo "$(stat -c %s "$work/$n/config.yaml") / 1000000" | bc -l)" "$ready" \
    "$(echo "$rss / 1024" | bc -l)" "$(echo "$hwm / 1024" | bc -l)" "$(echo "$after / 1024" | bc -l)"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
done
