#!/usr/bin/env bash
# The proxy under test for ../shared/bench/run.sh: meshentry as an explicit HTTP proxy whose
# registry holds the benchmark backend as a STATIC ServiceEntry with a VIP, so every request
# goes through routing and load balancing (REGISTRY_ONLY: nothing is passed through).
#   run.sh --absolute-uri --proxy-cmd "exec $PWD/bench/dut-meshentry.sh"
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${MESHENTRY_BIN:-$here/target/release/meshentry}
backend_ip=${BENCH_BACKEND_HTTP%:*}
backend_port=${BENCH_BACKEND_HTTP##*:}
cfg=$(mktemp -d -t meshentry-bench.XXXXXX)
cat > "$cfg/bench.yaml" <<YAML
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: bench-backend
spec:
  hosts: [bench-backend.local]
  addresses: [$backend_ip]
  ports:
  - number: $backend_port
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: $backend_ip
YAML
exec "$bin" proxy --config "$cfg/bench.yaml" --http-proxy "$BENCH_LISTEN_HTTP" --outbound off --admin 127.0.0.1:0 \
  --outbound-policy REGISTRY_ONLY --log-level warn
