//! Netns: code run with `block_on` lives in the namespace (its sockets, the servers it starts,
//! its blocking threads), routes send non-loopback connects to `dummy0` (which drops them),
//! iptables redirection works there, `spawn_as` drops privileges, and the namespace is gone
//! after drop even when the test panicked. Needs root, iproute2, iptables, setpriv, curl and
//! python3, which CI has.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use meshentry_testutil::netns::{DUMMY_V4, DUMMY_V6};
use meshentry_testutil::{HttpUpstream, Netns, PROXY_UID, eventually, make_accessible, unique_loopback};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The inode of the network namespace the calling thread is in (`net:[<inode>]`).
fn current_netns() -> String {
    std::fs::read_link("/proc/thread-self/ns/net")
        .unwrap()
        .display()
        .to_string()
}

fn netns_of(ns: &Netns) -> String {
    format!("net:[{}]", std::fs::metadata(ns.path()).unwrap().ino())
}

#[test]
fn block_on_runs_its_threads_in_the_namespace() {
    let ns = Netns::new("tu-netns");
    let host = current_netns();
    let inside = netns_of(&ns);
    assert_ne!(host, inside);
    let (thread, blocking) = ns.block_on(|| async {
        let blocking = tokio::task::spawn_blocking(current_netns).await.unwrap();
        (current_netns(), blocking)
    });
    assert_eq!(thread, inside);
    assert_eq!(blocking, inside);
    assert_eq!(current_netns(), host, "the calling thread must stay where it was");
}

/// A server started inside is reachable by a client run with `ip netns exec`, which proves it
/// is in the namespace: a client there cannot reach the host's sockets.
#[test]
fn servers_started_inside_serve_clients_of_ip_netns_exec() {
    let ns = Netns::new("tu-netns");
    ns.block_on(|| async {
        let ip = unique_loopback();
        let up = HttpUpstream::start(SocketAddr::new(IpAddr::V4(ip), 80), "in-ns");
        let out = ns
            .command("curl")
            .args(["-q", "-sS", "--max-time", "10", &format!("http://{ip}/hello")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(body["upstream"], "in-ns");
        assert_eq!(up.last().unwrap().path, "/hello");
    });
}

/// Non-loopback destinations are routed (so capture can see them) and then dropped: the connect
/// times out instead of failing with "network unreachable", and nothing answers.
#[test]
fn unrouted_connects_are_dropped_not_refused() {
    let ns = Netns::new("tu-netns");
    ns.block_on(|| async {
        for dst in [
            SocketAddr::from((Ipv4Addr::new(198, 51, 100, 9), 80)),
            SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9), 80)),
        ] {
            let attempt = tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(dst)).await;
            assert!(attempt.is_err(), "{dst}: the connect must hang, not end: {attempt:?}");
        }
    });
}

/// An iptables REDIRECT in the namespace sends an application's connection (python3, as root)
/// to a listener started inside, which reads the original destination, for IPv4 and IPv6.
#[test]
fn a_redirected_connection_keeps_its_original_destination() {
    let ns = Netns::new("tu-netns");
    for iptables in ["iptables", "ip6tables"] {
        ns.run(&[
            iptables,
            "-w",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "REDIRECT",
            "--to-ports",
            "15001",
        ]);
    }
    ns.block_on(|| async {
        let cases = [
            ("127.0.0.1:15001", "198.51.100.10", SocketAddr::from((Ipv4Addr::new(198, 51, 100, 10), 80)), IpAddr::V4(DUMMY_V4)),
            ("[::1]:15001", "2001:db8::5", SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5), 80)), IpAddr::V6(DUMMY_V6)),
        ];
        for (listen, target, original, source) in cases {
            let listener = TcpListener::bind(listen).await.unwrap();
            let script = format!(
                "import socket\ns = socket.create_connection(('{target}', 80), timeout=5)\ns.sendall(b'hello')\nprint(s.recv(100).decode())"
            );
            let mut cmd = ns.command("python3");
            cmd.args(["-c", &script]);
            let client = tokio::task::spawn_blocking(move || cmd.output());
            let (mut conn, peer) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
                .await
                .unwrap()
                .unwrap();
            let sock = socket2::SockRef::from(&conn);
            let orig = match original {
                SocketAddr::V4(_) => sock.original_dst_v4(),
                SocketAddr::V6(_) => sock.original_dst_v6(),
            };
            assert_eq!(orig.unwrap().as_socket(), Some(original));
            assert_eq!(peer.ip(), source, "the source is dummy0's address, as the route chose it");
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"hello");
            conn.write_all(b"redirected").await.unwrap();
            let out = client.await.unwrap().unwrap();
            assert!(out.status.success(), "{out:?}");
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "redirected");
        }
    });
}

/// `spawn_as` runs the binary itself (same pid) in the namespace, as the uid and group given
/// with no supplementary groups; `make_accessible` opens a private directory to it.
#[test]
fn spawn_as_drops_to_the_uid_in_the_namespace() {
    let ns = Netns::new("tu-netns");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), "readable").unwrap();
    make_accessible(dir.path());
    let file = dir.path().join("config.yaml");
    let script = format!(
        "echo pid $$; id -u; id -g; id -G; readlink /proc/self/ns/net; cat {}; echo; exec sleep 30",
        file.display()
    );
    let inside = netns_of(&ns);
    ns.block_on(|| async {
        let mut p = ns.spawn_as(PROXY_UID, "/bin/sh", ["-c", &script], [("X", "1")]);
        let lines = eventually(Duration::from_secs(10), || async {
            let out = p.stdout();
            (out.lines().count() >= 6).then(|| out.lines().map(str::to_owned).collect::<Vec<_>>())
        })
        .await;
        let uid = PROXY_UID.to_string();
        assert_eq!(
            lines,
            [
                format!("pid {}", p.pid()),
                uid.clone(),
                uid.clone(),
                uid,
                inside.clone(),
                "readable".into()
            ],
            "{}",
            p.output()
        );
        p.kill();
    });
}

#[test]
fn the_namespace_is_deleted_on_drop_even_after_a_panic() {
    let path;
    let result = {
        let ns = Netns::new("tu-netns");
        path = ns.path();
        assert!(path.exists());
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ns.block_on(|| async { panic!("failing inside the namespace") })
        }))
    };
    let payload = result.unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"failing inside the namespace"));
    assert_eq!(std::fs::metadata(&path).unwrap_err().kind(), ErrorKind::NotFound);
}

/// A namespace left by a killed test process (its drop never ran) is removed by the next
/// process that uses the same prefix; namespaces of live processes are left alone.
#[test]
fn namespaces_of_dead_processes_are_removed() {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let orphan = format!("tu-orphan-{dead}-0");
    let alive = format!("tu-orphan-{}-999", std::process::id());
    for name in [&orphan, &alive] {
        let out = std::process::Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let ns = Netns::new("tu-orphan");
    let exists = |name: &str| std::path::Path::new("/var/run/netns").join(name).exists();
    assert!(!exists(&orphan), "{orphan} was not removed");
    assert!(exists(&alive), "{alive} belongs to a live process");
    assert!(exists(ns.name()));
    let _ = std::process::Command::new("ip").args(["netns", "del", &alive]).output();
}
