//! `meshentry iptables install|remove` in a network namespace this test creates (never the
//! host's own tables): the rules are the ones Istio users expect, installing twice leaves one
//! set, removing restores the table exactly, and connections really are redirected, with
//! SO_ORIGINAL_DST intact, except the proxy's own uid and excluded ports. DNS capture sends an
//! application's queries (dig's, over UDP and TCP) to the DNS listener and the proxy's own to
//! the nameserver. Needs root, ip (iproute2), iptables, setpriv, dig and python3, which CI has.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use meshentry_testutil::{PROXY_UID, make_accessible};

/// A network namespace that exists for the life of the value.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("me-ipt-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("ip (iproute2) is not installed");
        assert!(
            out.status.success(),
            "ip netns add (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns(name);
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(cmd)
            .output()
            .unwrap()
    }

    /// Runs `cmd` in the namespace, asserting success; returns stdout.
    fn run(&self, cmd: &[&str]) -> String {
        let out = self.exec(cmd);
        assert!(
            out.status.success(),
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn nat_rules(&self) -> String {
        self.run(&["iptables", "-w", "-t", "nat", "-S"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");

#[test]
fn install_is_idempotent_and_remove_restores_the_table() {
    let ns = Netns::new();
    let before = ns.nat_rules();
    ns.run(&[
        BIN,
        "iptables",
        "install",
        "--proxy-uid",
        "1337",
        "--exclude-ports",
        "22,15000",
    ]);
    let installed = ns.nat_rules();
    for rule in [
        "-N MESHENTRY_OUTPUT",
        "-N MESHENTRY_REDIRECT",
        "-A OUTPUT -p tcp -j MESHENTRY_OUTPUT",
        "-A MESHENTRY_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A MESHENTRY_OUTPUT -m mark --mark 0x539 -j RETURN",
        "-A MESHENTRY_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A MESHENTRY_OUTPUT -p tcp -m tcp --dport 22 -j RETURN",
        "-A MESHENTRY_OUTPUT -p tcp -m tcp --dport 15000 -j RETURN",
        "-A MESHENTRY_OUTPUT -j MESHENTRY_REDIRECT",
        "-A MESHENTRY_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ] {
        assert!(
            installed.lines().any(|l| l == rule),
            "missing {rule:?} in:\n{installed}"
        );
    }
    // Twice: still one set of rules, one jump.
    ns.run(&[
        BIN,
        "iptables",
        "install",
        "--proxy-uid",
        "1337",
        "--exclude-ports",
        "22,15000",
    ]);
    assert_eq!(ns.nat_rules(), installed);
    assert_eq!(installed.matches("-j MESHENTRY_OUTPUT").count(), 1);

    ns.run(&[BIN, "iptables", "remove"]);
    assert_eq!(ns.nat_rules(), before);
    // Removing again is not an error and changes nothing.
    ns.run(&[BIN, "iptables", "remove"]);
    assert_eq!(ns.nat_rules(), before);
}

#[test]
fn remove_leaves_rules_it_did_not_add() {
    let ns = Netns::new();
    ns.run(&["iptables", "-w", "-t", "nat", "-N", "SOMEONE_ELSE"]);
    ns.run(&[
        "iptables",
        "-w",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "udp",
        "-j",
        "SOMEONE_ELSE",
    ]);
    let before = ns.nat_rules();
    ns.run(&[BIN, "iptables", "install", "--proxy-uid", "1337"]);
    ns.run(&[BIN, "iptables", "remove"]);
    assert_eq!(ns.nat_rules(), before);
}

/// Runs in the namespace as root: a listener on the redirect port, then connections that
/// should and should not be captured.
const PROBE: &str = r#"
import socket, struct, subprocess, sys, threading
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 15001))
listener.listen(16)
seen = {}
def accept():
    conn, _ = listener.accept()
    raw = conn.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST
    port, ip = struct.unpack("!2xH4s8x", raw)
    seen["orig"] = "%s:%d" % (socket.inet_ntoa(ip), port)
    conn.close()
t = threading.Thread(target=accept)
t.start()
socket.create_connection(("127.0.0.2", 8080), timeout=3).close()
t.join(3)
print("captured", seen.get("orig"))
def attempt(port):
    try:
        socket.create_connection(("127.0.0.2", port), timeout=3).close()
        return "connected"
    except ConnectionRefusedError:
        return "refused"
code = "import socket\ntry:\n socket.create_connection(('127.0.0.2', 8080), timeout=3).close(); print('connected')\nexcept ConnectionRefusedError: print('refused')"
exempt = subprocess.run(["setpriv", "--reuid", "1337", "--regid", "1337", "--clear-groups", sys.executable, "-c", code],
                        capture_output=True, text=True)
print("proxy-uid", exempt.stdout.strip() or exempt.stderr.strip())
print("excluded-port", attempt(22))
"#;

#[test]
fn connections_are_redirected_with_their_original_destination() {
    let ns = Netns::new();
    ns.run(&[
        BIN,
        "iptables",
        "install",
        "--proxy-uid",
        "1337",
        "--exclude-ports",
        "22",
    ]);
    let out = ns.run(&["python3", "-c", PROBE]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            // An application's connection lands on the proxy port, and the proxy can still see
            // where it was going.
            "captured 127.0.0.2:8080",
            // The proxy's own connection goes where it was sent (nothing listens there).
            "proxy-uid refused",
            "excluded-port refused",
        ],
        "{out}"
    );
}

/// What a UDP "QUIC" packet to 127.0.0.2:443 from `uid` gets: `reply` from the echo server,
/// `refused` (the send fails at once with EPERM, as a REJECT in OUTPUT makes it, or the ICMP
/// it sends comes back as ECONNREFUSED), or `timeout`.
fn quic_probe(ns: &Netns, uid: u32) -> String {
    let script = "import socket\n\
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
s.settimeout(2)\n\
s.connect(('127.0.0.2', 443))\n\
try:\n    s.send(b'quic')\n    print(s.recv(16).decode())\n\
except (ConnectionRefusedError, PermissionError):\n    print('refused')\n\
except socket.timeout:\n    print('timeout')\n";
    let uid = uid.to_string();
    let out = ns.run(&[
        "setpriv",
        "--reuid",
        &uid,
        "--regid",
        &uid,
        "--clear-groups",
        "/usr/bin/python3",
        "-c",
        script,
    ]);
    out.trim().to_string()
}

#[test]
fn quic_from_the_application_is_rejected_under_registry_only() {
    let ns = Netns::new();
    // A UDP echo server on 127.0.0.2:443 (not the excluded 127.0.0.1), for the traffic that
    // is let through.
    let mut echo = Command::new("ip")
        .args(["netns", "exec", &ns.0, "/usr/bin/python3", "-c"])
        .arg(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
s.bind(('127.0.0.2', 443))\nwhile True:\n    d, a = s.recvfrom(64)\n    s.sendto(b'reply', a)\n",
        )
        .spawn()
        .unwrap();
    let filter_before = ns.run(&["iptables", "-w", "-t", "filter", "-S"]);
    for _ in 0..50 {
        if quic_probe(&ns, 4242) == "reply" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(quic_probe(&ns, 4242), "reply", "before install");

    // ALLOW_ANY (the default): QUIC is left alone.
    ns.run(&[BIN, "iptables", "install", "--proxy-uid", "1337"]);
    assert_eq!(ns.run(&["iptables", "-w", "-t", "filter", "-S"]), filter_before);
    assert_eq!(quic_probe(&ns, 4242), "reply");

    // REGISTRY_ONLY: the application's QUIC is refused at once, the proxy's is not.
    ns.run(&[
        BIN,
        "iptables",
        "install",
        "--proxy-uid",
        "1337",
        "--outbound-policy",
        "REGISTRY_ONLY",
    ]);
    let filter = ns.run(&["iptables", "-w", "-t", "filter", "-S"]);
    assert!(
        filter
            .lines()
            .any(|l| l == "-A OUTPUT -p udp -m udp --dport 443 -j MESHENTRY_QUIC"),
        "{filter}"
    );
    assert_eq!(quic_probe(&ns, 4242), "refused");
    assert_eq!(quic_probe(&ns, 1337), "reply");

    // Asked not to, it does not.
    ns.run(&[
        BIN,
        "iptables",
        "install",
        "--proxy-uid",
        "1337",
        "--outbound-policy",
        "REGISTRY_ONLY",
        "--block-quic=false",
    ]);
    assert_eq!(quic_probe(&ns, 4242), "reply");

    // Removal restores the filter table exactly.
    ns.run(&[BIN, "iptables", "install", "--proxy-uid", "1337", "--block-quic"]);
    assert_eq!(quic_probe(&ns, 4242), "refused");
    ns.run(&[BIN, "iptables", "remove"]);
    assert_eq!(ns.run(&["iptables", "-w", "-t", "filter", "-S"]), filter_before);
    assert_eq!(quic_probe(&ns, 4242), "reply");
    let _ = echo.kill();
    let _ = echo.wait();
}

// === DNS capture ===

/// A DNS server and client for the DNS capture tests, run with /usr/bin/python3 (where any uid
/// can run it).
///
/// `serve LABEL PROTO,ADDR,PORT...` answers every query on those sockets with one TXT record,
/// LABEL, so a client can tell which listener its query reached; it prints `ready` once all
/// are bound. `query ADDR PROTO [--mark N] [--sport N]` sends one query to ADDR port 53 from a
/// connected socket (which only takes an answer from where it sent the query, as resolvers
/// do) and prints the label, `timeout` or `refused`.
const DNS_PY: &str = r#"
import socket, struct, sys, threading

def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET

def answer(query, label):
    end = 12
    while query[end] != 0:
        end += 1 + query[end]
    question = query[12:end + 5]
    text = label.encode()
    record = b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 0, len(text) + 1) + bytes([len(text)]) + text
    return query[:2] + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0) + question + record

def read_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data

def serve_udp(sock, label):
    while True:
        query, peer = sock.recvfrom(4096)
        sock.sendto(answer(query, label), peer)

def serve_tcp(sock, label):
    while True:
        conn, _ = sock.accept()
        try:
            (n,) = struct.unpack("!H", read_exact(conn, 2))
            reply = answer(read_exact(conn, n), label)
            conn.sendall(struct.pack("!H", len(reply)) + reply)
        except (EOFError, OSError):
            pass
        conn.close()

def serve(label, specs):
    for spec in specs:
        proto, addr, port = spec.split(",")
        if proto == "udp":
            sock = socket.socket(family(addr), socket.SOCK_DGRAM)
            sock.bind((addr, int(port)))
            target = serve_udp
        else:
            sock = socket.socket(family(addr), socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((addr, int(port)))
            sock.listen(64)
            target = serve_tcp
        threading.Thread(target=target, args=(sock, label), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()

def query(addr, proto, mark, sport):
    q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x03who\x04test\x00" + struct.pack("!HH", 16, 1)
    sock = socket.socket(family(addr), socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
    sock.settimeout(2)
    if mark:
        sock.setsockopt(socket.SOL_SOCKET, 36, mark)  # SO_MARK
    if sport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("", sport))
    try:
        sock.connect((addr, 53))
        if proto == "udp":
            sock.send(q)
            reply = sock.recv(4096)
        else:
            sock.sendall(struct.pack("!H", len(q)) + q)
            (n,) = struct.unpack("!H", read_exact(sock, 2))
            reply = read_exact(sock, n)
        n = reply[len(q) + 12]
        print(reply[len(q) + 13:len(q) + 13 + n].decode())
    except socket.timeout:
        print("timeout")
    except ConnectionRefusedError:
        print("refused")

if sys.argv[1] == "serve":
    serve(sys.argv[2], sys.argv[3:])
else:
    opts = dict(zip(sys.argv[4::2], sys.argv[5::2]))
    query(sys.argv[2], sys.argv[3], int(opts.get("--mark", "0"), 0), int(opts.get("--sport", "0")))
"#;

/// The uid and gid of a test application: neither the proxy's.
const APP: (u32, u32) = (4242, 4242);

/// A test's files: the DNS script, readable by every uid, and the namespace's resolv.conf in
/// /etc/netns/NAME/, which `ip netns exec` mounts on /etc/resolv.conf. Both go on drop.
struct DnsFiles {
    dir: tempfile::TempDir,
    script: PathBuf,
    etc: PathBuf,
}

impl DnsFiles {
    fn new(ns: &meshentry_testutil::Netns, resolv_conf: &str) -> DnsFiles {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("dns.py");
        std::fs::write(&script, DNS_PY).unwrap();
        make_accessible(dir.path());
        let etc = Path::new("/etc/netns").join(ns.name());
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("resolv.conf"), resolv_conf).unwrap();
        DnsFiles { dir, script, etc }
    }
}

impl Drop for DnsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

/// A `serve` process, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve label specs` in `ns` as `uid`, and waits until it listens.
fn serve(ns: &meshentry_testutil::Netns, files: &DnsFiles, uid: u32, label: &str, specs: &[String]) -> Server {
    let id = uid.to_string();
    let mut child = ns
        .command("setpriv")
        .args(["--reuid", &id, "--regid", &id, "--clear-groups", "/usr/bin/python3"])
        .arg(&files.script)
        .arg("serve")
        .arg(label)
        .args(specs)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    if line.trim() != "ready" {
        let out = child.wait_with_output().unwrap();
        panic!("{label} did not start: {}", String::from_utf8_lossy(&out.stderr));
    }
    Server(child)
}

/// `udp,ADDR,PORT` and `tcp,ADDR,PORT` for each of `addrs`.
fn both(addrs: &[&str], port: u16) -> Vec<String> {
    addrs
        .iter()
        .flat_map(|a| [format!("udp,{a},{port}"), format!("tcp,{a},{port}")])
        .collect()
}

/// What `dig` run as `uid`:`gid` gets for `TXT who.test` from `server`: the label of the listener
/// that answered, or dig's complaint.
fn dig(ns: &meshentry_testutil::Netns, (uid, gid): (u32, u32), server: &str, tcp: bool) -> String {
    let (uid, gid) = (uid.to_string(), gid.to_string());
    let at = format!("@{server}");
    let mut cmd = vec![
        "setpriv",
        "--reuid",
        &uid,
        "--regid",
        &gid,
        "--clear-groups",
        "dig",
        &at,
        "+short",
        "+time=2",
        "+tries=1",
    ];
    if tcp {
        cmd.push("+tcp");
    }
    cmd.extend(["TXT", "who.test"]);
    let out = ns.exec(&cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().trim_matches('"').to_string()
}

/// The script's `query`, as root (which may set the mark): `extra` is `--mark N`, `--sport N`.
fn query(
    ns: &meshentry_testutil::Netns,
    files: &DnsFiles,
    uid: u32,
    server: &str,
    proto: &str,
    extra: &[&str],
) -> String {
    let id = uid.to_string();
    let script = files.script.to_str().unwrap();
    let mut cmd = vec![
        "setpriv",
        "--reuid",
        &id,
        "--regid",
        &id,
        "--clear-groups",
        "/usr/bin/python3",
        script,
        "query",
        server,
        proto,
    ];
    cmd.extend(extra);
    ns.run(&cmd).trim().to_string()
}

/// The nat, filter and raw tables as iptables-save and ip6tables-save print them, less the
/// timestamps and the packet counters of the built-in chains (traffic changes those).
fn saved(ns: &meshentry_testutil::Netns) -> String {
    let mut all = String::new();
    for save in ["iptables-save", "ip6tables-save"] {
        for table in ["nat", "filter", "raw"] {
            for line in ns.run(&[save, "-t", table]).lines() {
                if line.starts_with('#') {
                    continue;
                }
                match line.strip_prefix(':').and_then(|l| l.rsplit_once(' ')) {
                    Some((chain, _counters)) => all.push_str(&format!(":{chain}\n")),
                    None => all.push_str(&format!("{line}\n")),
                }
            }
        }
    }
    all
}

fn meshentry(ns: &meshentry_testutil::Netns, args: &[&str]) -> String {
    let mut cmd = vec![BIN];
    cmd.extend(args);
    ns.run(&cmd)
}

/// The nameservers of the main test: on loopback but not 127.0.0.1 (as systemd-resolved's stub),
/// 127.0.0.1 itself (which the TCP capture leaves alone), an ordinary address (as a cluster's
/// DNS service), and IPv6 ones. All are local to the namespace, so each can have a real
/// nameserver listening on it.
const NAMESERVERS: [&str; 5] = ["127.0.0.53", "127.0.0.1", "198.51.100.53", "2001:db8::53", "::1"];

/// Not nameservers: port 53 there is not DNS capture's (without --capture-all-dns).
const ELSEWHERE: [&str; 2] = ["198.51.100.54", "2001:db8::54"];

#[test]
fn dns_capture_sends_the_applications_dns_to_the_dns_listener() {
    let ns = meshentry_testutil::Netns::new("me-ipt-dns");
    for ip in ["198.51.100.53", "198.51.100.54", "2001:db8::53", "2001:db8::54"] {
        ns.add_local_address(ip.parse().unwrap());
    }
    let resolv_conf: String = NAMESERVERS.iter().map(|ip| format!("nameserver {ip}\n")).collect();
    let files = DnsFiles::new(
        &ns,
        &format!("search default.svc.cluster.local\n{resolv_conf}options ndots:5\n"),
    );
    // The DNS listener runs as the proxy does: conntrack undoes the redirect on its answers by
    // their zone, which the rules give the proxy's packets by uid.
    let _proxy = serve(
        &ns,
        &files,
        PROXY_UID,
        "dns-listener",
        &both(&["127.0.0.1", "::1"], 15053),
    );
    let _nameservers = serve(&ns, &files, 0, "nameserver", &both(&NAMESERVERS, 53));
    let _elsewhere = serve(&ns, &files, 0, "elsewhere", &both(&ELSEWHERE, 53));
    // The TCP capture's outbound listener, answering DNS over TCP too.
    let _outbound = serve(
        &ns,
        &files,
        PROXY_UID,
        "outbound",
        &["tcp,127.0.0.1,15001".into(), "tcp,::1,15001".into()],
    );

    let before = saved(&ns);
    assert_eq!(dig(&ns, APP, "127.0.0.53", false), "nameserver", "before install");

    let install = ["iptables", "install", "--proxy-uid", "1337", "--capture-dns"];
    meshentry(&ns, &install);
    let installed = saved(&ns);
    meshentry(&ns, &install);
    assert_eq!(saved(&ns), installed, "installing twice leaves one set of rules");
    // The jumps from OUTPUT, nat's then raw's, for IPv4 then IPv6. In nat, DNS capture's come
    // before the TCP capture's, which would otherwise take TCP port 53 to the outbound port
    // (or, for 127.0.0.1, let it through).
    let nat_output: Vec<&str> = installed.lines().filter(|l| l.starts_with("-A OUTPUT ")).collect();
    assert_eq!(
        nat_output,
        [
            "-A OUTPUT -p udp -m udp --dport 53 -j MESHENTRY_DNS",
            "-A OUTPUT -p tcp -m tcp --dport 53 -j MESHENTRY_DNS",
            "-A OUTPUT -p tcp -j MESHENTRY_OUTPUT",
            "-A OUTPUT -p udp -j MESHENTRY_DNS",
            "-A OUTPUT -p udp -m udp --dport 53 -j MESHENTRY_DNS",
            "-A OUTPUT -p tcp -m tcp --dport 53 -j MESHENTRY_DNS",
            "-A OUTPUT -p tcp -j MESHENTRY_OUTPUT",
            "-A OUTPUT -p udp -j MESHENTRY_DNS",
        ],
        "{installed}"
    );
    for rule in [
        "-A MESHENTRY_DNS -d 127.0.0.53/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
        "-A MESHENTRY_DNS -d 198.51.100.53/32 -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053",
        "-A MESHENTRY_DNS -d 2001:db8::53/128 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
        "-A MESHENTRY_DNS -m owner --gid-owner 1337 -j RETURN",
        "-A MESHENTRY_DNS -p udp -m udp --sport 15053 -m owner --uid-owner 1337 -j CT --zone 2",
        "-A MESHENTRY_DNS_REPLY -s 198.51.100.53/32 -p udp -m udp --sport 53 -j CT --zone 1",
        "-A PREROUTING -p udp -m udp --sport 53 -j MESHENTRY_DNS_REPLY",
    ] {
        assert!(
            installed.lines().any(|l| l == rule),
            "missing {rule:?} in:\n{installed}"
        );
    }

    for server in NAMESERVERS {
        for tcp in [false, true] {
            let what = format!("{server} {}", if tcp { "TCP" } else { "UDP" });
            // The application's DNS, as any uid but the proxy's, reaches the DNS listener, and
            // the answer comes back from the address it asked (dig checks).
            assert_eq!(dig(&ns, APP, server, tcp), "dns-listener", "application, {what}");
            assert_eq!(dig(&ns, (0, 0), server, tcp), "dns-listener", "root, {what}");
            // The proxy's own reaches the nameserver.
            assert_eq!(
                dig(&ns, (PROXY_UID, PROXY_UID), server, tcp),
                "nameserver",
                "proxy uid, {what}"
            );
            // Another uid in the proxy's group is exempt from DNS capture, as under Istio, but
            // not from the TCP capture, which exempts the proxy by uid and mark only (and
            // never captures 127.0.0.1 and ::1).
            let tcp_capture = tcp && !["127.0.0.1", "::1"].contains(&server);
            let expected = if tcp_capture { "outbound" } else { "nameserver" };
            assert_eq!(dig(&ns, (APP.0, PROXY_UID), server, tcp), expected, "proxy gid, {what}");
        }
    }
    // And by the mark the proxy's sockets carry when it runs as root.
    for server in ["198.51.100.53", "2001:db8::53"] {
        for proto in ["udp", "tcp"] {
            assert_eq!(
                query(&ns, &files, 0, server, proto, &[]),
                "dns-listener",
                "{server} {proto}"
            );
            assert_eq!(
                query(&ns, &files, 0, server, proto, &["--mark", "0x539"]),
                "nameserver",
                "marked, {server} {proto}"
            );
        }
    }

    // Port 53 elsewhere is not the nameservers': UDP goes where it was sent, TCP is captured
    // like any other TCP connection (as under Istio).
    for server in ELSEWHERE {
        assert_eq!(dig(&ns, APP, server, false), "elsewhere", "{server} UDP");
        assert_eq!(dig(&ns, APP, server, true), "outbound", "{server} TCP");
    }

    // The proxy asks the nameserver from the address and port an application asked it from a
    // moment ago, whose redirected conntrack entry is still there: in the same conntrack zone,
    // the proxy's query would match that entry and be redirected back to the DNS listener.
    for (server, sport) in [("127.0.0.53", "40053"), ("2001:db8::53", "40054")] {
        assert_eq!(
            query(&ns, &files, APP.0, server, "udp", &["--sport", sport]),
            "dns-listener"
        );
        assert_eq!(
            query(&ns, &files, PROXY_UID, server, "udp", &["--sport", sport]),
            "nameserver"
        );
    }
    // The same without the zones (their jumps deleted by hand): the proxy's query loops, so
    // the check above can fail.
    for ipt in ["iptables", "ip6tables"] {
        ns.run(&[
            ipt,
            "-w",
            "-t",
            "raw",
            "-D",
            "OUTPUT",
            "-p",
            "udp",
            "-j",
            "MESHENTRY_DNS",
        ]);
    }
    for (server, sport) in [("127.0.0.53", "40055"), ("2001:db8::53", "40056")] {
        assert_eq!(
            query(&ns, &files, APP.0, server, "udp", &["--sport", sport]),
            "dns-listener"
        );
        assert_eq!(
            query(&ns, &files, PROXY_UID, server, "udp", &["--sport", sport]),
            "dns-listener"
        );
    }

    // --capture-all-dns: port 53 anywhere.
    meshentry(
        &ns,
        &["iptables", "install", "--proxy-uid", "1337", "--capture-all-dns"],
    );
    for server in ELSEWHERE.iter().chain(&NAMESERVERS) {
        for tcp in [false, true] {
            assert_eq!(dig(&ns, APP, server, tcp), "dns-listener", "all, {server} tcp={tcp}");
            let proxy = dig(&ns, (PROXY_UID, PROXY_UID), server, tcp);
            let expected = if ELSEWHERE.contains(server) {
                "elsewhere"
            } else {
                "nameserver"
            };
            assert_eq!(proxy, expected, "all, proxy, {server} tcp={tcp}");
        }
    }

    meshentry(&ns, &["iptables", "remove"]);
    assert_eq!(saved(&ns), before, "remove restores nat, filter and raw exactly");
    for server in NAMESERVERS {
        assert_eq!(dig(&ns, APP, server, false), "nameserver", "after remove, {server}");
        assert_eq!(dig(&ns, APP, server, true), "nameserver", "after remove, {server} TCP");
    }
}

#[test]
fn dns_capture_reads_the_nameservers_and_refuses_to_capture_nothing() {
    let ns = meshentry_testutil::Netns::new("me-ipt-dns");
    let files = DnsFiles::new(
        &ns,
        "nameserver 10.96.0.10\nnameserver dns.example\nnameserver fd00::a\n",
    );
    let dry = |extra: &[&str]| -> Output {
        let mut cmd = vec![BIN, "iptables", "install", "--proxy-uid", "1337", "--dry-run"];
        cmd.extend(extra);
        ns.exec(&cmd)
    };
    let out = dry(&["--capture-dns"]);
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout);
    for rule in [
        "iptables -w -t nat -A MESHENTRY_DNS -d 10.96.0.10/32 -p udp --dport 53 -j REDIRECT --to-ports 15053",
        "ip6tables -w -t nat -A MESHENTRY_DNS -d fd00::a/128 -p tcp --dport 53 -j REDIRECT --to-ports 15053",
    ] {
        assert!(printed.lines().any(|l| l == rule), "missing {rule:?} in:\n{printed}");
    }
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nameserver \"dns.example\" is not an IP address"),
        "{out:?}"
    );
    // --dns-port moves the redirect and the zone of the listener's answers with it.
    let out = dry(&["--capture-dns", "--dns-port", "5353"]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("-d 10.96.0.10/32 -p udp --dport 53 -j REDIRECT --to-ports 5353"),
        "{printed}"
    );
    assert!(
        printed.contains("--sport 5353 -m owner --uid-owner 1337 -j CT --zone 2"),
        "{printed}"
    );
    assert!(!printed.contains("15053"), "{printed}");

    // No DNS capture without the flag (or the mesh config's ISTIO_META_DNS_CAPTURE).
    let out = dry(&[]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("MESHENTRY_DNS"),
        "{out:?}"
    );
    let mesh = files.dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        "defaultConfig:\n  proxyMetadata:\n    ISTIO_META_DNS_CAPTURE: \"true\"\n",
    )
    .unwrap();
    let mesh = mesh.to_str().unwrap();
    let out = dry(&["--mesh-config", mesh]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("-j MESHENTRY_DNS"),
        "{out:?}"
    );
    let out = dry(&["--mesh-config", mesh, "--capture-dns=false"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("MESHENTRY_DNS"),
        "{out:?}"
    );

    // Contradictions are refused rather than half done.
    for extra in [
        &["--capture-dns", "--exclude-ports", "22,53"][..],
        &["--capture-dns=false", "--capture-all-dns"],
    ] {
        let out = dry(extra);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {out:?}");
    }

    // A resolv.conf without nameservers: capture would do nothing, so install refuses and
    // touches nothing; --capture-all-dns needs none.
    std::fs::write(files.etc.join("resolv.conf"), "search default.svc.cluster.local\n").unwrap();
    let before = saved(&ns);
    let out = ns.exec(&[BIN, "iptables", "install", "--proxy-uid", "1337", "--capture-dns"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("names no nameserver"),
        "{out:?}"
    );
    assert_eq!(saved(&ns), before);
    meshentry(
        &ns,
        &["iptables", "install", "--proxy-uid", "1337", "--capture-all-dns"],
    );
    assert!(saved(&ns).contains("-A MESHENTRY_DNS -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053"));
    meshentry(&ns, &["iptables", "remove"]);
    assert_eq!(saved(&ns), before);
}

#[test]
fn install_and_remove_say_what_they_did_and_port_zero_is_refused() {
    let ns = Netns::new();
    let out = ns.run(&[
        BIN,
        "iptables",
        "install",
        "--proxy-uid",
        "1337",
        "--exclude-ports",
        "22",
    ]);
    assert!(out.starts_with("meshentry: capture installed (iptables"), "{out}");
    assert!(
        out.contains("outbound TCP redirected to port 15001 (not uid 1337, mark 0x539, loopback, ports 22)"),
        "{out}"
    );
    let out = ns.run(&[
        BIN,
        "iptables",
        "install",
        "--proxy-uid",
        "1337",
        "--capture-all-dns",
        "--block-quic",
    ]);
    assert!(
        out.contains("DNS (UDP and TCP port 53, any address) redirected to port 15053"),
        "{out}"
    );
    assert!(out.contains("QUIC) rejected"), "{out}");
    let out = ns.run(&[BIN, "iptables", "remove"]);
    assert!(out.starts_with("meshentry: capture removed"), "{out}");
    assert!(!ns.nat_rules().contains("MESHENTRY"));
    // A port 0 would redirect everything nowhere: refused before any rule is written.
    for flag in ["--outbound-port", "--dns-port"] {
        let out = ns.exec(&[BIN, "iptables", "install", "--proxy-uid", "1337", flag, "0"]);
        assert_eq!(out.status.code(), Some(2), "{flag}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("0 is not in 1..=65535"));
        assert!(!ns.nat_rules().contains("MESHENTRY"), "{flag}");
    }
}
