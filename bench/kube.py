#!/usr/bin/env python3
"""Issue 17's figures for `meshentry proxy --kubernetes`, against a real API server
(scripts/k8s-apiserver: apiextensions-apiserver over etcd, Istio's CRDs) on 127.0.0.1:

  1. sync:   N ServiceEntries in the API server (default 10,000); the proxy started on it;
             time from exec to /ready answering 200 (the first full sync, the registry built,
             listeners up), and the proxy's RSS then, against the same proxy on an empty
             cluster.
  2. stream: a stream of R updates/s (default 50; each creates or edits a ServiceEntry
             through the API, as `kubectl apply` does) for D seconds; for each, the time from
             the API server's answer to the proxy first serving the change (a request through
             its explicit proxy port that reaches the new upstream), debounce included.
             Printed as p50/p90/p99/max over the stream, with M ServiceEntries already in the
             cluster (default 100; run again with more to see the cost of a large
             configuration).

  3. fanout (--fanout 1,5,10, instead of 1 and 2): what N proxies following one API server
             cost it: its CPU for their first syncs and for a stream of changes, its memory.

  MESHENTRY_BIN=target/release/meshentry bench/kube.py [--objects 10000] [--rate 50]
      [--seconds 20] [--background 100] [--skip-sync] [--skip-stream] [--fanout 1,5,10]

Only the Python standard library; only loopback. The API server's own CPU shares the machine's
cores with the proxy: the figures are for this machine, end to end.
"""

import argparse
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import http.client
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(HERE, "scripts", "k8s-apiserver")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def three_free_ports():
    # Below the ephemeral range (32768 up): a port there can be taken by any outgoing connection
    # between this check and etcd's bind.
    for _ in range(200):
        base = 10000 + int.from_bytes(os.urandom(2), "little") % 20000
        socks = []
        try:
            for i in range(3):
                s = socket.socket()
                s.bind(("127.0.0.1", base + i))
                socks.append(s)
            return base
        except OSError:
            pass
        finally:
            for s in socks:
                s.close()
    raise SystemExit("no three free ports")


class Api:
    """The test API server and a client of it (client certificate, as kubectl uses)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="meshentry-kube-bench-")
        self.port = free_port()
        env = dict(os.environ, API_PORT=str(self.port), ETCD_PORT=str(three_free_ports()))
        subprocess.run([SCRIPT, "start", self.dir], env=env, check=True)
        pki = os.path.join(self.dir, "pki")
        self.ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
        self.ctx.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))
        self.local = threading.local()

    def kubeconfig(self):
        return os.path.join(self.dir, "kubeconfig")

    def conn(self):
        c = getattr(self.local, "conn", None)
        if c is None:
            c = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=30)
            self.local.conn = c
        return c

    def request(self, method, path, body=None, ctype="application/json"):
        for attempt in range(3):
            c = self.conn()
            try:
                c.request(method, path, body=body, headers={"Content-Type": ctype} if body else {})
                r = c.getresponse()
                data = r.read()
                return r.status, data
            except (http.client.HTTPException, OSError):
                self.local.conn = None
                if attempt == 2:
                    raise

    def apply(self, obj):
        """Server-side apply, as `kubectl apply --server-side` does: create or update."""
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        path = (f"/apis/networking.istio.io/v1/namespaces/{ns}/serviceentries/{name}"
                "?fieldManager=bench&force=true")
        status, data = self.request("PATCH", path, json.dumps(obj), "application/apply-patch+yaml")
        if status not in (200, 201):
            raise SystemExit(f"apply {name}: {status} {data[:300]!r}")

    def stop(self):
        subprocess.run([SCRIPT, "kill", self.dir], check=False)
        subprocess.run(["rm", "-rf", self.dir], check=False)


def entry(name, port, ns="default"):
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "hosts": [f"{name}.bench.internal"],
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
            "resolution": "STATIC",
            "endpoints": [{"address": "127.0.0.1", "ports": {"http": port}}],
        },
    }


class Proxy:
    def __init__(self, bin_, api):
        self.http = free_port()
        self.admin = free_port()
        self.started = time.monotonic()
        self.p = subprocess.Popen(
            [bin_, "proxy", "--kubernetes", "--kubeconfig", api.kubeconfig(),
             "--http-proxy", f"127.0.0.1:{self.http}", "--outbound", "off",
             "--admin", f"127.0.0.1:{self.admin}", "--outbound-policy", "REGISTRY_ONLY",
             "--log-level", "warn"],
            # A file, not a pipe nobody reads: a full pipe would stall the proxy's logging.
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(api.dir, "proxy.log"), "ab"))
        self.log = os.path.join(api.dir, "proxy.log")

    def wait_ready(self, timeout=120):
        while time.monotonic() - self.started < timeout:
            if self.p.poll() is not None:
                raise SystemExit(f"proxy exited: {open(self.log).read()[-2000:]}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=1)
                c.request("GET", "/ready")
                if c.getresponse().status == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.005)
        raise SystemExit("proxy not ready")

    def rss_mib(self):
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def get_status(self, host):
        """One GET through the proxy; the status, or 0 on a transport failure."""
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.http, timeout=5)
            c.request("GET", f"http://{host}/", headers={"Host": host})
            r = c.getresponse()
            r.read()
            c.close()
            return r.status
        except OSError:
            return 0

    def stop(self):
        self.p.kill()
        self.p.wait()


class Upstream:
    """An HTTP server that answers 200 to everything, on its own port."""

    def __init__(self):
        self.s = socket.socket()
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.s.bind(("127.0.0.1", 0))
        self.s.listen(1024)
        self.port = self.s.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            c, _ = self.s.accept()
            threading.Thread(target=self.one, args=(c,), daemon=True).start()

    def one(self, c):
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = c.recv(4096)
                if not d:
                    return
                buf += d
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        finally:
            c.close()


def sync(bin_, objects):
    api = Api()
    try:
        empty = Proxy(bin_, api)
        t_empty = empty.wait_ready()
        time.sleep(1)
        rss_empty = empty.rss_mib()
        empty.stop()
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: api.apply(entry(f"se-{i:05d}", 9)), range(objects)))
        print(f"created {objects} ServiceEntries in {time.monotonic() - t0:.1f} s", flush=True)
        full = Proxy(bin_, api)
        t_full = full.wait_ready()
        rss_ready = full.rss_mib()
        time.sleep(2)
        rss_full = full.rss_mib()
        ok = full.get_status(f"se-{objects - 1:05d}.bench.internal")
        full.stop()
        print(json.dumps({
            "objects": objects,
            "ready_s_empty": round(t_empty, 3),
            "ready_s": round(t_full, 3),
            "rss_mib_empty": round(rss_empty, 1),
            "rss_mib_at_ready": round(rss_ready, 1),
            "rss_mib_2s_later": round(rss_full, 1),
            "rss_mib_above_empty": round(rss_full - rss_empty, 1),
            "last_object_served_status": ok,
        }), flush=True)
    finally:
        api.stop()


def stream(bin_, rate, seconds, background):
    api = Api()
    up = Upstream()
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: api.apply(entry(f"bg-{i:05d}", up.port)), range(background)))
        proxy = Proxy(bin_, api)
        proxy.wait_ready()
        # 502 (not in the registry) until the change is served, then 200 from the upstream.
        latencies, missed = [], []
        lock = threading.Lock()

        def probe(name, t_applied):
            host = f"{name}.bench.internal"
            deadline = t_applied + 10
            last = None
            while time.monotonic() < deadline:
                last = proxy.get_status(host)
                if last == 200:
                    with lock:
                        latencies.append(time.monotonic() - t_applied)
                    return
                # 2 ms apart for the first 200 ms, then 20 ms: a slow configuration must not
                # be slowed further by hundreds of probes (the resolution stays under 10%).
                time.sleep(0.002 if time.monotonic() - t_applied < 0.2 else 0.02)
            with lock:
                missed.append((name, last))

        interval = 1.0 / rate
        n = int(rate * seconds)
        start = time.monotonic()
        threads = []
        for i in range(n):
            target = start + i * interval
            now = time.monotonic()
            if target > now:
                time.sleep(target - now)
            # Alternately a new object, and an edit that gives a background object a new host.
            if i % 2 == 0 or background == 0:
                name = f"new-{i:05d}"
                api.apply(entry(name, up.port))
            else:
                name = f"edit-{i:05d}"
                obj = entry(f"bg-{(i // 2) % background:05d}", up.port)
                obj["spec"]["hosts"] = [f"{name}.bench.internal"]
                api.apply(obj)
            t = threading.Thread(target=probe, args=(name, time.monotonic()))
            t.start()
            threads.append(t)
        achieved = n / (time.monotonic() - start)
        for t in threads:
            t.join()
        proxy.stop()
        lat = sorted(latencies)

        def pct(p):
            return round(1000 * lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 1) if lat else None

        print(json.dumps({
            "updates": n,
            "rate_asked": rate,
            "rate_achieved": round(achieved, 1),
            "background_objects": background,
            "served": len(lat),
            "missed": len(missed),
            "missed_first": missed[:3],
            "p50_ms": pct(50),
            "p90_ms": pct(90),
            "p99_ms": pct(99),
            "max_ms": round(1000 * lat[-1], 1) if lat else None,
            "mean_ms": round(1000 * statistics.mean(lat), 1) if lat else None,
        }), flush=True)
    finally:
        api.stop()


def proc_cpu_s(pid):
    """User + system CPU seconds a process used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fanout(bin_, objects, counts, rate, seconds):
    """What N proxies following one API server cost the API server: its CPU for their first
    syncs and for a stream of changes, and its memory, for each N."""
    api = Api()
    up = Upstream()
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: api.apply(entry(f"se-{i:05d}", up.port)), range(objects)))
        with open(os.path.join(api.dir, "crd-apiserver.pid")) as f:
            server = int(f.read().strip())
        for n in counts:
            rss0, cpu0 = proc_rss_mib(server), proc_cpu_s(server)
            proxies = [Proxy(bin_, api) for _ in range(n)]
            for p in proxies:
                p.wait_ready()
            cpu_sync = proc_cpu_s(server) - cpu0
            time.sleep(1)
            cpu1 = proc_cpu_s(server)
            start = time.monotonic()
            for i in range(int(rate * seconds)):
                target = start + i / rate
                now = time.monotonic()
                if target > now:
                    time.sleep(target - now)
                obj = entry(f"se-{i % objects:05d}", up.port)
                obj["spec"]["hosts"] = [f"stream-{n}-{i}.bench.internal"]
                api.apply(obj)
            time.sleep(1.5)
            cpu_stream = proc_cpu_s(server) - cpu1
            rss = proc_rss_mib(server)
            proxy_rss = statistics.mean(p.rss_mib() for p in proxies)
            for p in proxies:
                p.stop()
            print(json.dumps({
                "proxies": n,
                "objects": objects,
                "apiserver_cpu_s_for_syncs": round(cpu_sync, 2),
                "apiserver_cpu_s_per_sync": round(cpu_sync / n, 3),
                "stream_updates": int(rate * seconds),
                "apiserver_cpu_s_for_stream": round(cpu_stream, 2),
                "apiserver_rss_mib_before": round(rss0, 1),
                "apiserver_rss_mib_with_watchers": round(rss, 1),
                "proxy_rss_mib_mean": round(proxy_rss, 1),
            }), flush=True)
            time.sleep(2)
    finally:
        api.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=10000)
    ap.add_argument("--rate", type=float, default=50)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--background", type=int, default=100)
    ap.add_argument("--skip-sync", action="store_true")
    ap.add_argument("--skip-stream", action="store_true")
    ap.add_argument("--fanout", default="", help="comma-separated proxy counts, e.g. 1,5,10: "
                    "what N proxies cost the API server (instead of sync and stream)")
    a = ap.parse_args()
    bin_ = os.environ.get("MESHENTRY_BIN", os.path.join(HERE, "target", "release", "meshentry"))
    if not os.access(bin_, os.X_OK):
        sys.exit(f"no binary at {bin_}")
    if a.fanout:
        fanout(bin_, a.objects, [int(n) for n in a.fanout.split(",")], a.rate, a.seconds)
        return
    if not a.skip_sync:
        sync(bin_, a.objects)
    if not a.skip_stream:
        stream(bin_, a.rate, a.seconds, a.background)


if __name__ == "__main__":
    main()
