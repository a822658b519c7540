//! Issue 15 item 8, second half, end to end: a Gateway server's `bind` (an IP, or
//! `unix://PATH`) is where `meshentry proxy --gateway` listens for it; `--gateway-bind` is only
//! the address of servers that name none. As in Istio (pilot/pkg/model/gateway.go
//! `mergeGateways`), each (port, bind) is a listener of its own: servers with different binds
//! share a port number and nothing else.
//!
//! Every test owns its loopback addresses (the binds are unique 127.x addresses), its DNS
//! server and its proxy process; the client is real curl (`--unix-socket` for the unix bind).

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use meshentry_testutil::{HttpUpstream, Proxy, TestDns, eventually, unique_loopback};

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");
const PATIENCE: Duration = Duration::from_secs(15);

fn ip(v4: Ipv4Addr) -> IpAddr {
    IpAddr::V4(v4)
}

/// What one curl run produced.
#[derive(Debug)]
struct CurlOut {
    code: i32,
    status: u16,
    body: String,
}

const STATUS_MARK: &str = "\n@@meshentry-status@@";

/// Runs curl with `args` (no proxy from the environment) off the runtime.
async fn curl(args: &[&str]) -> CurlOut {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = meshentry_testutil::curl_command();
        cmd.args(["-sS", "--max-time", "10", "--noproxy", "*", "-w"])
            .arg(format!("{STATUS_MARK}%{{http_code}}"))
            .args(&args);
        let out = cmd.output().unwrap_or_else(|e| {
            panic!("cannot run curl ({e}); these tests need it as a real client (scripts/test installs it)")
        });
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = stdout
            .rsplit_once(STATUS_MARK)
            .unwrap_or_else(|| panic!("curl output lacks the status marker: {stdout:?}"));
        CurlOut {
            code: out.status.code().unwrap_or(-1),
            status: status.trim().parse().unwrap_or(0),
            body: body.to_owned(),
        }
    })
    .await
    .unwrap()
}

/// `GET http://host/` sent to `at`: (curl's exit code, status, the upstream that answered).
async fn get_at(at: SocketAddr, host: &str) -> (i32, u16, String) {
    let resolve = format!("{host}:{}:{}", at.port(), at.ip());
    let out = curl(&["--resolve", &resolve, &format!("http://{host}:{}/", at.port())]).await;
    let upstream = upstream_of(&out);
    (out.code, out.status, upstream)
}

fn upstream_of(out: &CurlOut) -> String {
    serde_json::from_str::<serde_json::Value>(&out.body)
        .ok()
        .and_then(|j| j["upstream"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A STATIC ServiceEntry for `host` on port 80 with its endpoint `at`.
fn backend_se(name: &str, host: &str, at: Ipv4Addr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: istio-system}}
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: \"{at}\"}}]
---
"
    )
}

/// A VirtualService bound to the gateway: `host` to the service `to`.
fn route(name: &str, host: &str, to: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: istio-system}}
spec:
  hosts: [{host}]
  gateways: [gw]
  http: [{{route: [{{destination: {{host: {to}}}}}]}}]
---
"
    )
}

/// The Gateway `istio-system/gw` with `servers` (YAML flow items).
fn gateway(servers: &[String]) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: gw}}
  servers:
{}
",
        servers.iter().map(|s| format!("  - {s}\n")).collect::<String>()
    )
}

fn http_server(port: u16, host: &str, bind: Option<&str>) -> String {
    let bind = bind.map(|b| format!(", bind: \"{b}\"")).unwrap_or_default();
    // Port names are unique within a Gateway (validation): named after the host.
    let name = host.split('.').next().unwrap_or("x");
    format!("{{port: {{number: {port}, name: http-{name}, protocol: HTTP}}, hosts: [\"{host}\"]{bind}}}")
}

/// The proxy as the Gateway, its default bind (and admin) on `own`.
async fn gateway_proxy(own: Ipv4Addr, yaml: &str, dns: &TestDns) -> Proxy {
    Proxy::builder(BIN)
        .ip(own)
        .config(yaml)
        .dns(dns.addr())
        .args(["--gateway", "istio-system/gw", "--labels", "istio=gw", "--gateway-bind"])
        .arg(own.to_string())
        .args(["--reload-debounce", "20ms"])
        .start()
        .await
}

fn listener_addresses(dump: &serde_json::Value) -> Vec<String> {
    dump["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == "gateway" && l["state"] == "open")
        .map(|l| l["address"].as_str().unwrap().to_string())
        .collect()
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// ---------------------------------------------------------------------------------------------

/// `bind: <a 127.x of the test's own>` (the issue's `127.0.11.1`): the server listens there
/// and only there; the same port on `--gateway-bind`'s address is refused. A reload that
/// moves the bind moves the listener.
#[tokio::test]
async fn a_server_bind_is_where_it_listens_and_nowhere_else() {
    let dns = TestDns::start(unique_loopback());
    let (own, bind, moved, app_at) = (
        unique_loopback(),
        unique_loopback(),
        unique_loopback(),
        unique_loopback(),
    );
    let app = HttpUpstream::start(SocketAddr::new(ip(app_at), 80), "app");
    let config = |at: Ipv4Addr| {
        format!(
            "{}{}{}",
            backend_se("app", "app.internal", app_at),
            route("app", "app.example.com", "app.internal"),
            gateway(&[http_server(80, "app.example.com", Some(&at.to_string()))])
        )
    };
    let proxy = gateway_proxy(own, &config(bind), &dns).await;
    let there = SocketAddr::new(ip(bind), 80);
    let default = SocketAddr::new(ip(own), 80);

    assert_eq!(get_at(there, "app.example.com").await, (0, 200, "app".to_string()));
    let (code, status, _) = get_at(default, "app.example.com").await;
    assert_eq!(
        (code, status),
        (7, 0),
        "curl exit 7: connection refused on --gateway-bind's address"
    );
    assert!(tokio::net::TcpStream::connect(default).await.is_err());
    let dump = proxy.config_dump().await;
    assert_eq!(listener_addresses(&dump), [there.to_string()]);

    // The bind moves on a reload: the listener goes with it.
    write_atomically(&proxy.config_file(), &config(moved));
    let now = SocketAddr::new(ip(moved), 80);
    eventually(PATIENCE, || async {
        listener_addresses(&proxy.config_dump().await) == [now.to_string()]
    })
    .await;
    assert_eq!(get_at(now, "app.example.com").await, (0, 200, "app".to_string()));
    assert_eq!(get_at(there, "app.example.com").await.0, 7, "the old bind is closed");
    assert_eq!(app.requests(), 2);
}

/// Two servers on one port with different binds, and a third with none: three listeners on
/// port 80, each serving only its own server's hosts (a listener per port and bind, as in
/// Istio: `http.80.<bind>` is a route configuration of its own).
#[tokio::test]
async fn servers_with_different_binds_share_a_port_and_nothing_else() {
    let dns = TestDns::start(unique_loopback());
    let (own, bind_a, bind_b) = (unique_loopback(), unique_loopback(), unique_loopback());
    let (a_at, b_at, c_at) = (unique_loopback(), unique_loopback(), unique_loopback());
    let _a = HttpUpstream::start(SocketAddr::new(ip(a_at), 80), "a");
    let _b = HttpUpstream::start(SocketAddr::new(ip(b_at), 80), "b");
    let _c = HttpUpstream::start(SocketAddr::new(ip(c_at), 80), "c");
    let yaml = format!(
        "{}{}{}{}{}{}{}",
        backend_se("a", "a.internal", a_at),
        backend_se("b", "b.internal", b_at),
        backend_se("c", "c.internal", c_at),
        route("a", "a.example.com", "a.internal"),
        route("b", "b.example.com", "b.internal"),
        route("c", "c.example.com", "c.internal"),
        gateway(&[
            http_server(80, "a.example.com", Some(&bind_a.to_string())),
            http_server(80, "b.example.com", Some(&bind_b.to_string())),
            http_server(80, "c.example.com", None),
        ])
    );
    let proxy = gateway_proxy(own, &yaml, &dns).await;
    let (at_a, at_b, at_c) = (
        SocketAddr::new(ip(bind_a), 80),
        SocketAddr::new(ip(bind_b), 80),
        SocketAddr::new(ip(own), 80),
    );
    for (at, host, upstream) in [
        (at_a, "a.example.com", "a"),
        (at_b, "b.example.com", "b"),
        (at_c, "c.example.com", "c"),
    ] {
        assert_eq!(get_at(at, host).await, (0, 200, upstream.to_string()), "{host} at {at}");
    }
    // Each listener has only its own server's virtual hosts.
    for (at, host) in [
        (at_a, "b.example.com"),
        (at_b, "c.example.com"),
        (at_c, "a.example.com"),
    ] {
        assert_eq!(get_at(at, host).await.1, 404, "{host} at {at}");
    }
    let mut listeners = listener_addresses(&proxy.config_dump().await);
    listeners.sort();
    let mut want = vec![at_a.to_string(), at_b.to_string(), at_c.to_string()];
    want.sort();
    assert_eq!(listeners, want);
}

/// `bind: unix:///PATH`: the server is served on a unix socket at PATH (its port number 0,
/// as Istio's documentation asks), and on no TCP address.
#[tokio::test]
async fn a_unix_bind_serves_on_a_unix_socket() {
    let dns = TestDns::start(unique_loopback());
    let (own, app_at) = (unique_loopback(), unique_loopback());
    let app = HttpUpstream::start(SocketAddr::new(ip(app_at), 80), "app");
    let dir = tempfile::Builder::new().prefix("meshentry-gw-uds-").tempdir().unwrap();
    let socket = dir.path().join("gateway.sock");
    let bind = format!("unix://{}", socket.display());
    let yaml = format!(
        "{}{}{}",
        backend_se("app", "app.internal", app_at),
        route("app", "app.example.com", "app.internal"),
        gateway(&[http_server(0, "app.example.com", Some(&bind))])
    );
    let proxy = gateway_proxy(own, &yaml, &dns).await;
    let socket_arg = socket.display().to_string();
    let out = eventually(PATIENCE, || {
        let socket_arg = socket_arg.clone();
        async move {
            let out = curl(&["--unix-socket", &socket_arg, "http://app.example.com/over-uds"]).await;
            (out.code == 0).then_some(out)
        }
    })
    .await;
    assert_eq!(out.status, 200, "{out:?}");
    assert_eq!(upstream_of(&out), "app", "{out:?}");
    assert_eq!(app.last().unwrap().uri, "/over-uds");
    let dump = proxy.config_dump().await;
    assert_eq!(listener_addresses(&dump), [bind]);
}
