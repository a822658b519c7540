# Sourced by the callgrind scripts (bench/callgrind-http.sh, bench/callgrind-h2.sh): the nginx
# backend they proxy to and the STATIC ServiceEntry that routes to it. The caller has a `pids`
# array its EXIT trap kills.

# Starts nginx on 127.0.0.1:$2 answering every request with 200 "hello from backend\n", its
# files in directory $1.
backend_start() {
  local dir=$1 port=$2
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<NGX
worker_processes 1; pid $dir/nginx.pid; error_log $dir/error.log warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $dir/b; proxy_temp_path $dir/p; fastcgi_temp_path $dir/f; uwsgi_temp_path $dir/u; scgi_temp_path $dir/s;
  server { listen 127.0.0.1:$port; location / { return 200 "hello from backend\n"; } } }
NGX
  nginx -p "$dir/" -c "$dir/nginx.conf" -g "daemon off;" &
  pids+=($!)
}

# Writes to $1 the ServiceEntry bench-backend.local: VIP 127.0.0.1, HTTP port $2, one STATIC
# endpoint at 127.0.0.1.
backend_config() {
  cat >"$1" <<YAML
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bench-backend}
spec:
  hosts: [bench-backend.local]
  addresses: [127.0.0.1]
  ports: [{number: $2, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
YAML
}
