#!/usr/bin/env python3
"""Issue 18's DNS figure: meshentry's DNS proxy against dnsmasq, in one run, on the same
machine, with the same query mix, every answer local (nothing is forwarded).

  MESHENTRY_BIN=target/release/meshentry bench/dns.py [--names 100] [--seconds 10] [--reps 3]
      [--rate 20000] [--clients 4] [--outstanding 200] [--aaaa-share 0.2]
      [--transport udp|tcp] [--edns] [--server-cpu 1] [--client-cpu 0]
      [--skip-meshentry] [--json FILE] [--perf DIR] [--keep]

Both servers hold the same N names, `svc-I.bench.example` -> 10.64.I/250.I%250+1 (IPv4 only):
  - dnsmasq 2.90 (`dnsmasq-base`): `--no-resolv --no-hosts`, one `host-record=` per name, so an
    A query is answered from its local table and AAAA gets NODATA, as from meshentry;
  - meshentry: a config directory of N ServiceEntries (`addresses: [VIP]`, STATIC, one TCP
    port), `meshentry proxy --config DIR --dns 127.0.0.1:P --dns-upstream 127.0.0.1:<closed>
    --http-proxy off --outbound off --admin 127.0.0.1:A --workers 1`.
Each server runs alone, pinned to one core (`taskset -c 1`); dnsperf, the load, is pinned to
the other (`taskset -c 0`). One query file for both: every name, A for 80% of the queries and
AAAA for 20%, in a fixed shuffled order. Before measuring, every distinct query is sent to both
servers and the answers (rcode, A/AAAA records) must be the same.

Per server and repetition (repetitions alternate between the servers; medians reported):
  - qps:     dnsperf -T 1 -c C -q Q -l S (a closed loop, Q queries in flight): queries/s at
             saturation, the server's CPU per query, the busy share of its core;
  - latency: dnsperf -Q RATE -v -l S (an open loop at a fixed moderate rate, so p99 is the
             server's latency and not the queue of a saturated one): p50/p99/max from the
             per-query latencies dnsperf prints (dnsperf 2.10 has no percentile output).
Targets (issue 18): meshentry's queries/s >= dnsmasq's, its p99 <= dnsmasq's.

"other CPU %" is the busy time of both cores not spent by the server or dnsperf, as % of one
core: other jobs on the machine. Above 10 % the figures are suspect; the table says so.
Only the Python standard library, dnsperf, dnsmasq and taskset; only 127.0.0.1.
"""

import argparse
import json
import os
import random
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import http.client

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK = os.sysconf("SC_CLK_TCK")
QTYPES = {"A": 1, "AAAA": 28}


def free_port(kind=socket.SOCK_DGRAM):
    """A port free for both UDP and TCP on 127.0.0.1 (the DNS servers listen on both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
        try:
            with socket.socket(socket.AF_INET, other) as t:
                t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise SystemExit("no free port")


def vip(i):
    return f"10.64.{i // 250}.{i % 250 + 1}"


def name(i):
    return f"svc-{i}.bench.example"


# === DNS on the wire (the sanity check only; the load is dnsperf's) ===


def dns_query(port, qname, qtype, tcp=False, timeout=2.0):
    """One query to 127.0.0.1:port; (rcode, sorted [(type, rdata text)]) of the answer section."""
    qid = random.randrange(65536)
    msg = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in qname.rstrip(".").split("."):
        msg += bytes([len(label)]) + label.encode()
    msg += b"\0" + struct.pack("!HH", QTYPES[qtype], 1)
    if tcp:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(struct.pack("!H", len(msg)) + msg)
            head = recv_exact(s, 2)
            data = recv_exact(s, struct.unpack("!H", head)[0])
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(msg, ("127.0.0.1", port))
            while True:
                data = s.recv(65535)
                if len(data) >= 2 and struct.unpack("!H", data[:2])[0] == qid:
                    break
    return parse_answer(data)


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        d = s.recv(n - len(buf))
        if not d:
            raise OSError("connection closed")
        buf += d
    return buf


def skip_name(data, off):
    while True:
        n = data[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            return off + 2
        off += 1 + n


def parse_answer(data):
    _, flags, qd, an, _, _ = struct.unpack("!HHHHHH", data[:12])
    off = 12
    for _ in range(qd):
        off = skip_name(data, off) + 4
    records = []
    for _ in range(an):
        off = skip_name(data, off)
        rtype, _, _, rdlen = struct.unpack("!HHIH", data[off:off + 10])
        off += 10
        rdata = data[off:off + rdlen]
        off += rdlen
        if rtype == 1:
            records.append(("A", socket.inet_ntop(socket.AF_INET, rdata)))
        elif rtype == 28:
            records.append(("AAAA", socket.inet_ntop(socket.AF_INET6, rdata)))
        else:
            records.append((str(rtype), rdata.hex()))
    return flags & 0xF, sorted(records)


# === The servers ===


def proc_tree_cpu_s(pid):
    """CPU seconds of pid and its live children, with the reaped children's (dnsmasq forks for
    TCP connections)."""
    total = 0.0
    try:
        pids = [pid] + children(pid)
    except OSError:
        return 0.0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # utime stime cutime cstime
            total += sum(int(x) for x in fields[11:15]) / CLK
        except OSError:
            pass
    return total


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(d))
    return out


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Server:
    label = ""

    def __init__(self, argv, cpu, log):
        self.port = None
        self.log = log
        self.p = subprocess.Popen(["taskset", "-c", str(cpu)] + argv, stdout=subprocess.DEVNULL,
                                  stderr=open(log, "ab"), start_new_session=True)

    def wait_ready(self, probe, timeout=30):
        """Ready when it answers `probe` (a name it holds) with NOERROR."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise SystemExit(f"{self.label} exited ({self.p.returncode}): "
                                 f"{open(self.log).read()[-2000:]}")
            try:
                if dns_query(self.port, probe, "A", timeout=0.2)[0] == 0:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise SystemExit(f"{self.label} did not answer within {timeout} s")

    def cpu_s(self):
        return proc_tree_cpu_s(self.p.pid)

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


class Dnsmasq(Server):
    label = "dnsmasq"

    def __init__(self, work, names, cpu):
        conf = os.path.join(work, "dnsmasq.conf")
        with open(conf, "w") as f:
            # The TTL meshentry gives local answers (Istio's 30 s), so both answers are the
            # same size; dnsmasq's default for local records is 0.
            f.write("no-resolv\nno-hosts\nlocal-ttl=30\n")
            # Without it dnsmasq REFUSEs AAAA for these names (it has nowhere to forward);
            # with it, NODATA, as meshentry answers a name it holds with no IPv6 address.
            f.write("local=/bench.example/\n")
            for i in range(names):
                f.write(f"host-record={name(i)},{vip(i)}\n")
        self.port_ = free_port()
        super().__init__(
            ["dnsmasq", "--keep-in-foreground", f"--conf-file={conf}",
             f"--port={self.port_}", "--listen-address=127.0.0.1", "--bind-interfaces",
             f"--pid-file={os.path.join(work, 'dnsmasq.pid')}", "--log-facility=-"],
            cpu, os.path.join(work, "dnsmasq.log"))
        self.port = self.port_


def write_config(cfg, names):
    """N ServiceEntries, one host and one VIP each, in one file of directory cfg."""
    os.makedirs(cfg, exist_ok=True)
    with open(os.path.join(cfg, "bench.yaml"), "w") as f:
        for i in range(names):
            f.write(f"""---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: svc-{i}
  namespace: default
spec:
  hosts: [{name(i)}]
  addresses: [{vip(i)}]
  location: MESH_EXTERNAL
  ports:
  - {{number: 5432, name: tcp, protocol: TCP}}
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
""")
    return cfg


class Meshentry(Server):
    label = "meshentry"

    def __init__(self, bin_, work, names, cpu):
        # A directory of its own, two levels down: the proxy watches the configuration's
        # directory and its parent (for ConfigMap-style symlink swaps), and dnsperf's verbose
        # output, written next to it, woke the watcher thousands of times a second.
        cfg = write_config(os.path.join(work, "meshentry", "config"), names)
        self.port_ = free_port()
        self.admin = free_port(socket.SOCK_STREAM)
        # Nothing listens there: a query that is not answered locally would fail, not be
        # answered by someone else.
        upstream = free_port()
        super().__init__(
            [bin_, "proxy", "--config", cfg, "--dns", f"127.0.0.1:{self.port_}",
             "--dns-upstream", f"127.0.0.1:{upstream}", "--http-proxy", "off",
             "--outbound", "off", "--admin", f"127.0.0.1:{self.admin}", "--workers", "1",
             "--log-level", "warn"],
            cpu, os.path.join(work, "meshentry.log"))
        self.port = self.port_

    def wait_ready(self, probe, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                break
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=1)
                c.request("GET", "/ready")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        super().wait_ready(probe, max(1.0, deadline - time.monotonic()))


def meshentry_has_dns(bin_):
    try:
        out = subprocess.run([bin_, "proxy", "--help"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    text = out.stdout + out.stderr
    return "--dns " in text or "--dns <" in text or "--dns=" in text


# === Load ===


def cpu_busy_s():
    """Busy seconds of all cores so far (user nice system irq softirq steal)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    v = [int(x) for x in fields]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def dnsperf(server, qfile, a, mode, out_path):
    """One dnsperf run against server; the parsed figures."""
    argv = ["taskset", "-c", str(a.client_cpu), "dnsperf", "-s", "127.0.0.1",
            "-p", str(server.port), "-d", qfile, "-l", str(a.seconds), "-T", "1",
            "-m", a.transport, "-t", "2"]
    if a.edns:
        argv.append("-e")
    if mode == "qps":
        argv += ["-c", str(a.clients), "-q", str(a.outstanding)]
    else:
        # Queries in flight are few at a fixed rate below saturation; -q only bounds them.
        argv += ["-c", str(a.clients), "-q", str(a.outstanding), "-Q", str(a.rate), "-v"]
    s0, b0, c0, t0 = server.cpu_s(), cpu_busy_s(), children_cpu_s(), time.monotonic()
    with open(out_path, "w") as out:
        rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT,
                            timeout=a.seconds + 30).returncode
    wall = time.monotonic() - t0
    server_cpu = server.cpu_s() - s0
    client_cpu = children_cpu_s() - c0
    busy = cpu_busy_s() - b0
    if server.p.poll() is not None:
        raise SystemExit(f"{server.label} exited during the run: "
                         f"{open(server.log).read()[-2000:]}")
    r = parse_dnsperf(out_path, verbose=(mode == "latency"))
    if rc != 0 or r.get("qps") is None:
        raise SystemExit(f"dnsperf failed ({rc}): {open(out_path).read()[-2000:]}")
    # dnsperf's own run time, not the wall time: after the last query it waits out the
    # timeout of any lost one, with the server idle.
    run = r.get("run_s") or wall
    r["server_cpu_pct"] = round(100 * server_cpu / run, 1)
    # dnsperf's CPU is counted from exec to exit (loading the query file, waiting out lost
    # queries): over the wall time.
    r["client_cpu_pct"] = round(100 * client_cpu / wall, 1)
    r["wall_s"] = round(wall, 3)
    r["other_cpu_pct"] = round(max(0.0, 100 * (busy - server_cpu - client_cpu) / wall), 1)
    if r["completed"]:
        r["server_us_per_query"] = round(1e6 * server_cpu / r["completed"], 2)
    return r


def parse_dnsperf(path, verbose):
    r = {"qps": None, "completed": 0, "lost": 0, "rcodes": {}}
    lat = []
    with open(path) as f:
        for line in f:
            if verbose and line.startswith("> "):
                parts = line.split()
                # "> NOERROR name TYPE 0.000123"; lost queries ("> T ...") have no latency.
                if len(parts) == 5 and parts[1] != "T":
                    try:
                        lat.append(float(parts[4]))
                    except ValueError:
                        pass
                continue
            s = line.strip()
            if s.startswith("Queries per second:"):
                r["qps"] = float(s.split(":")[1])
            elif s.startswith("Queries completed:"):
                r["completed"] = int(s.split(":")[1].split()[0])
            elif s.startswith("Queries lost:"):
                r["lost"] = int(s.split(":")[1].split()[0])
            elif s.startswith("Response codes:"):
                for part in s.split(":", 1)[1].split(","):
                    bits = part.split()
                    if len(bits) >= 2:
                        r["rcodes"][bits[0]] = int(bits[1])
            elif s.startswith("Run time (s):"):
                r["run_s"] = float(s.split(":")[1])
            elif s.startswith("Average Latency (s):"):
                r["avg_ms"] = round(1000 * float(s.split(":")[1].split()[0]), 3)
    if lat:
        lat.sort()

        def pct(p):
            return round(1000 * lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 3)

        r["p50_ms"] = pct(50)
        r["p90_ms"] = pct(90)
        r["p99_ms"] = pct(99)
        r["p999_ms"] = pct(99.9)
        r["max_ms"] = round(1000 * lat[-1], 3)
        r["samples"] = len(lat)
    return r


def write_queries(path, names, aaaa_share, count=10000):
    rnd = random.Random(18)
    with open(path, "w") as f:
        for _ in range(count):
            qtype = "AAAA" if rnd.random() < aaaa_share else "A"
            f.write(f"{name(rnd.randrange(names))} {qtype}\n")
    distinct = sorted({(name(i), t) for i in range(names) for t in QTYPES})
    return distinct


def same_answers(servers, distinct, tcp):
    """Every distinct query answered alike by every server; the first difference, or None."""
    for qname, qtype in distinct:
        answers = {}
        for s in servers:
            try:
                answers[s.label] = dns_query(s.port, qname, qtype, tcp=tcp)
            except OSError as e:
                return f"{s.label}: {qname} {qtype}: {e}"
        vals = list(answers.values())
        if any(v != vals[0] for v in vals):
            return f"{qname} {qtype}: {answers}"
        rcode, records = vals[0]
        want = [("A", vip(int(qname.split(".")[0][4:])))] if qtype == "A" else []
        if rcode != 0 or records != want:
            return f"{qname} {qtype}: rcode {rcode}, {records}, wanted NOERROR {want}"
    return None


def profile(servers, qfile, a, work):
    """Where each server's CPU goes at saturation: perf's software clock (this VM has no
    hardware counters), call graphs, a flat report with the top symbols."""
    if not shutil.which("perf"):
        print("--perf: no perf on this machine (apt-get install linux-perf)")
        return
    os.makedirs(a.perf, exist_ok=True)
    for s in servers:
        data = os.path.join(a.perf, f"{s.label}.perf.data")
        rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "1999", "-g",
                                "-p", str(s.p.pid), "-o", data],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        r = dnsperf(s, qfile, a, "qps", os.path.join(work, f"dnsperf-{s.label}-perf.txt"))
        rec.send_signal(2)
        rec.wait(60)
        txt = os.path.join(a.perf, f"{s.label}.txt")
        with open(txt, "w") as f:
            subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children",
                            "--sort", "dso,symbol", "-g", "none", "--percent-limit", "0.5"],
                           stdout=f, stderr=subprocess.DEVNULL)
        print(f"perf: {s.label} at {r['qps']:,.0f} queries/s under perf: {data}, {txt}")


# === Report ===


def med(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, float) and nd == 0:
        return f"{v:,.0f}"
    return f"{v:,.{nd}f}" if isinstance(v, float) else f"{v:,}"


def summarize(results):
    out = {}
    for label, runs in results.items():
        q, l = runs["qps"], runs["latency"]
        out[label] = {
            "qps": med(q, "qps"),
            "qps_min": min((r["qps"] for r in q), default=None),
            "qps_max": max((r["qps"] for r in q), default=None),
            "sat_avg_ms": med(q, "avg_ms"),
            "server_cpu_pct_sat": med(q, "server_cpu_pct"),
            "client_cpu_pct_sat": med(q, "client_cpu_pct"),
            "server_us_per_query": med(q, "server_us_per_query"),
            "capacity_qps": (1e6 / med(q, "server_us_per_query")
                             if med(q, "server_us_per_query") else None),
            "lost_sat": sum(r["lost"] for r in q),
            "rate_qps": med(l, "qps"),
            "p50_ms": med(l, "p50_ms"),
            "p90_ms": med(l, "p90_ms"),
            "p99_ms": med(l, "p99_ms"),
            "p99_ms_min": min((r["p99_ms"] for r in l if r.get("p99_ms") is not None),
                              default=None),
            "p99_ms_max": max((r["p99_ms"] for r in l if r.get("p99_ms") is not None),
                              default=None),
            "p999_ms": med(l, "p999_ms"),
            "max_ms": med(l, "max_ms"),
            "server_cpu_pct_rate": med(l, "server_cpu_pct"),
            "lost_rate": sum(r["lost"] for r in l),
            "other_cpu_pct_max": max(r["other_cpu_pct"] for r in q + l),
            "rcodes": sum_rcodes(q + l),
        }
    return out


def sum_rcodes(rows):
    total = {}
    for r in rows:
        for k, v in r["rcodes"].items():
            total[k] = total.get(k, 0) + v
    return total


def print_table(summary, a):
    labels = list(summary)
    rows = [
        ("queries/s (closed loop, median)", "qps", 0),
        ("  min-max", None, None),
        ("  avg latency at saturation ms", "sat_avg_ms", 3),
        ("  server core busy %", "server_cpu_pct_sat", 1),
        ("  dnsperf core busy %", "client_cpu_pct_sat", 1),
        ("  server CPU us/query", "server_us_per_query", 2),
        ("  1 core / CPU per query (qps)", "capacity_qps", 0),
        (f"achieved qps at -Q {a.rate}", "rate_qps", 0),
        ("  p50 ms", "p50_ms", 3),
        ("  p90 ms", "p90_ms", 3),
        ("  p99 ms (median of reps)", "p99_ms", 3),
        ("  p99 min-max", None, None),
        ("  p99.9 ms", "p999_ms", 3),
        ("  max ms", "max_ms", 3),
        ("  server core busy %", "server_cpu_pct_rate", 1),
        ("lost queries (sat / rate)", None, None),
        ("other CPU % (max)", "other_cpu_pct_max", 1),
        ("RSS MiB at the end", "rss_mib", 1),
    ]
    w = 36
    print()
    print(f"{'':{w}}" + "".join(f"{lbl:>16}" for lbl in labels))
    for title, key, nd in rows:
        cells = []
        for lbl in labels:
            s = summary[lbl]
            if title.strip() == "min-max":
                cells.append(f"{fmt(s['qps_min'], 0)}-{fmt(s['qps_max'], 0)}")
            elif title.strip() == "p99 min-max":
                cells.append(f"{fmt(s['p99_ms_min'], 3)}-{fmt(s['p99_ms_max'], 3)}")
            elif key is None:
                cells.append(f"{s['lost_sat']} / {s['lost_rate']}")
            else:
                cells.append(fmt(s[key], nd))
        print(f"{title:{w}}" + "".join(f"{c:>16}" for c in cells))
    for lbl in labels:
        print(f"response codes {lbl}: {summary[lbl]['rcodes']}")
    if any(s["other_cpu_pct_max"] > 10 for s in summary.values()):
        print("WARNING: other jobs used > 10 % of a core during a run; rerun on a quiet machine")
    for lbl, s in summary.items():
        if s["server_cpu_pct_sat"] is None or s["server_cpu_pct_sat"] >= 95:
            continue
        if s["client_cpu_pct_sat"] is not None and s["client_cpu_pct_sat"] >= 95:
            print(f"NOTE: {lbl} used {s['server_cpu_pct_sat']} % of its core at saturation and "
                  "dnsperf all of its own: the load generator is the limit, and the server would "
                  f"answer about {fmt(s['capacity_qps'], 0)}/s with its core to itself "
                  "(1 s / its CPU per query)")
        else:
            print(f"WARNING: {lbl} used {s['server_cpu_pct_sat']} % of its core at saturation "
                  "with dnsperf's core not full either: too few queries in flight "
                  "(raise --clients/--outstanding) or something else waits")


def verdict(summary):
    d, m = summary.get("dnsmasq"), summary.get("meshentry")
    if not d or not m:
        return None
    qps_ratio = m["qps"] / d["qps"]
    p99_ratio = m["p99_ms"] / d["p99_ms"]
    v = {
        "qps_ratio": round(qps_ratio, 3),
        "p99_ratio": round(p99_ratio, 3),
        "us_per_query_ratio": round(m["server_us_per_query"] / d["server_us_per_query"], 3),
        "qps_pass": qps_ratio >= 1.0,
        "p99_pass": p99_ratio <= 1.0,
    }
    print()
    print(f"meshentry/dnsmasq queries/s: {qps_ratio:.3f}  -> "
          f"{'PASS' if v['qps_pass'] else 'FAIL'} (target >= 1.0)")
    print(f"meshentry/dnsmasq p99:       {p99_ratio:.3f}  -> "
          f"{'PASS' if v['p99_pass'] else 'FAIL'} (target <= 1.0)")
    print(f"meshentry/dnsmasq CPU/query: {v['us_per_query_ratio']:.3f}")
    if abs(qps_ratio - 1) < 0.05 or abs(p99_ratio - 1) < 0.15:
        print("(differences under 5 % in queries/s or 15 % in p99 are noise on this shared VM)")
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--names", type=int, default=100)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rate", type=int, default=20000, help="queries/s of the latency run")
    ap.add_argument("--clients", type=int, default=4, help="dnsperf -c (sockets)")
    ap.add_argument("--outstanding", type=int, default=200, help="dnsperf -q (in flight)")
    ap.add_argument("--aaaa-share", type=float, default=0.2)
    ap.add_argument("--transport", choices=["udp", "tcp"], default="udp")
    ap.add_argument("--edns", action="store_true", help="dnsperf -e (EDNS0 on every query)")
    ap.add_argument("--server-cpu", type=int, default=1)
    ap.add_argument("--client-cpu", type=int, default=0)
    ap.add_argument("--skip-meshentry", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--perf", metavar="DIR", help="after the reps, one more saturation run per "
                    "server under `perf record -g` (cpu-clock): DIR/LABEL.perf.data and a "
                    "flat DIR/LABEL.txt; not counted in the figures")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()

    for tool in ("dnsperf", "dnsmasq", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"missing {tool} (apt-get install -y dnsperf dnsmasq-base util-linux)")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(HERE, "target"))
    bin_ = os.environ.get("MESHENTRY_BIN", os.path.join(target, "release", "meshentry"))
    use_meshentry = not a.skip_meshentry
    if use_meshentry and not os.access(bin_, os.X_OK):
        print(f"meshentry: skipped (no binary at {bin_}; cargo build --release -p meshentry, "
              "or set MESHENTRY_BIN)")
        use_meshentry = False
    if use_meshentry and not meshentry_has_dns(bin_):
        print(f"meshentry: skipped ({bin_} proxy --help has no --dns: this build has no DNS "
              "server)")
        use_meshentry = False

    work = tempfile.mkdtemp(prefix="meshentry-dns-bench-")
    qfile = os.path.join(work, "queries.txt")
    distinct = write_queries(qfile, a.names, a.aaaa_share)
    servers = []
    # Both servers stay up on the same core for the whole run; only the one under load does
    # any work, and the other's CPU shows in "other CPU %" if it did.
    try:
        servers.append(Dnsmasq(work, a.names, a.server_cpu))
        if use_meshentry:
            servers.append(Meshentry(bin_, work, a.names, a.server_cpu))
        for s in servers:
            s.wait_ready(name(0))
        diff = same_answers(servers, distinct, tcp=False) or \
            same_answers(servers, distinct[:20], tcp=True)
        if diff:
            sys.exit(f"the servers' answers differ: {diff}")
        print(f"{len(distinct)} distinct queries answered alike by "
              f"{', '.join(s.label for s in servers)} (UDP; first 20 over TCP too)")

        results = {s.label: {"qps": [], "latency": []} for s in servers}
        for rep in range(a.reps):
            for s in servers:
                for mode in ("qps", "latency"):
                    out = os.path.join(work, f"dnsperf-{s.label}-{mode}-{rep}.txt")
                    r = dnsperf(s, qfile, a, mode, out)
                    results[s.label][mode].append(r)
                    shown = {k: r.get(k) for k in ("qps", "p50_ms", "p99_ms", "avg_ms", "lost",
                                                   "server_cpu_pct", "client_cpu_pct",
                                                   "other_cpu_pct") if r.get(k) is not None}
                    print(f"rep {rep + 1} {s.label:9} {mode:7} {json.dumps(shown)}", flush=True)
        if a.perf:
            profile(servers, qfile, a, work)
        rss = {}
        for s in servers:
            rss[s.label] = rss_mib(s.p.pid)

        summary = summarize(results)
        for lbl in summary:
            summary[lbl]["rss_mib"] = round(rss[lbl], 1) if rss.get(lbl) else None
        print(f"\n{a.names} names, {a.aaaa_share:.0%} AAAA, {a.transport}"
              f"{' +EDNS' if a.edns else ''}; {a.reps} reps x {a.seconds} s; server on cpu "
              f"{a.server_cpu}, dnsperf on cpu {a.client_cpu} "
              f"(-c {a.clients} -q {a.outstanding}); load average "
              f"{os.getloadavg()[0]:.2f}")
        print_table(summary, a)
        v = verdict(summary)
        if v is None:
            print("\nmeshentry not measured: no verdict")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"args": vars(a), "summary": summary, "verdict": v,
                           "raw": results}, f, indent=1)
    finally:
        for s in servers:
            s.stop()
        if a.keep:
            print(f"work directory: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
