//! `meshentry iptables install|remove` in a network namespace this test creates (never the
//! host's own tables): the rules are the ones Istio users expect, installing twice leaves one
//! set, removing restores the table exactly, and connections really are redirected, with
//! SO_ORIGINAL_DST intact, except the proxy's own uid and excluded ports. Needs root, ip
//! (iproute2), iptables, setpriv and python3, which CI has.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

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
