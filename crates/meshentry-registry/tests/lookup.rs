//! Table tests for the data-plane lookups (host, SNI, destination IP:port, port), each from a
//! proxy namespace.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::IpAddr;
use std::sync::OnceLock;

use meshentry_api::{LoadOptions, load_str};
use meshentry_registry::Registry;
use test_case::test_case;

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wildcards, namespace: web}
spec:
  hosts: ["*.a.com", "*.b.a.com", "exact.a.com", "*.com"]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partial, namespace: web}
spec:
  hosts: ["*-api.example.org", "*.example.org"]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: hidden, namespace: secret}
spec:
  hosts: ["*.hidden.com", "only.secret.io"]
  exportTo: ["."]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dup, namespace: web}
spec:
  hosts: [dup.example.net]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dup, namespace: secret}
spec:
  hosts: [dup.example.net]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vips, namespace: data}
spec:
  hosts: [vip.data.internal]
  addresses: [10.0.0.1, "2001:db8::7"]
  ports: [{number: 5432, name: pg, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 1.1.1.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wide, namespace: data}
spec:
  hosts: [wide.data.internal]
  addresses: [10.1.0.0/16]
  ports: [{number: 5432, name: pg, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 1.1.1.2}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: narrow, namespace: data}
spec:
  hosts: [narrow.data.internal]
  addresses: [10.1.2.0/24, "2001:db8:1::/48"]
  ports: [{number: 5432, name: pg, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 1.1.1.3}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: legacy-vm, namespace: data}
spec:
  address: 172.16.0.9
  labels: {app: legacy}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: data}
spec:
  hosts: [legacy.data.internal]
  ports: [{number: 7000, name: tcp, protocol: TCP}]
  resolution: NONE
  workloadSelector: {labels: {app: legacy}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: raw-tcp, namespace: data}
spec:
  hosts: [raw.data.internal]
  exportTo: [".", web]
  ports: [{number: 6000, name: tcp, protocol: TCP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tls, namespace: web}
spec:
  hosts: [tls.example.com, "*.tls.example.com"]
  ports: [{number: 443, name: tls, protocol: TLS}, {number: 80, name: http, protocol: HTTP}]
  resolution: NONE
"#;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| {
        let loaded = load_str("lookup.yaml", CONFIG, &LoadOptions::default());
        let errors: Vec<String> = loaded.errors().map(|f| f.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}");
        Registry::build(&loaded.resources)
    })
}

fn ns_of(s: Option<&meshentry_registry::Service>) -> Option<(String, String)> {
    s.map(|s| (s.host.to_string(), s.namespace.to_string()))
}

#[test_case("web", "exact.a.com", Some("exact.a.com"); "exact beats wildcard")]
#[test_case("web", "x.a.com", Some("*.a.com"); "wildcard")]
#[test_case("web", "x.b.a.com", Some("*.b.a.com"); "most specific wildcard")]
#[test_case("web", "y.x.b.a.com", Some("*.b.a.com"); "wildcard covers several labels")]
#[test_case("web", "a.com", Some("*.com"); "wildcard does not cover its base")]
#[test_case("web", "X.B.A.COM.", Some("*.b.a.com"); "case and trailing dot")]
#[test_case("web", "*.a.com", Some("*.a.com"); "wildcard host by its own name")]
#[test_case("web", "orders-api.example.org", Some("*-api.example.org"); "partial wildcard is more specific")]
#[test_case("web", "orders.example.org", Some("*.example.org"); "label wildcard")]
#[test_case("web", "-api.example.org", Some("*.example.org"); "partial wildcard needs a character")]
#[test_case("web", "example.org", None; "nothing")]
#[test_case("web", "x.hidden.com", Some("*.com"); "invisible wildcard falls through")]
#[test_case("secret", "x.hidden.com", Some("*.hidden.com"); "own namespace sees private wildcard")]
#[test_case("web", "only.secret.io", None; "private exact host")]
#[test_case("secret", "only.secret.io", Some("only.secret.io"); "private exact host in own namespace")]
fn lookup_host(ns: &str, host: &str, want: Option<&str>) {
    let got = registry().view(ns).lookup_host(host).map(|s| s.host.to_string());
    assert_eq!(got.as_deref(), want);
}

#[test_case("web", Some("web"), 80; "own namespace copy")]
#[test_case("secret", Some("secret"), 8080; "other own namespace copy")]
#[test_case("elsewhere", Some("web"), 80; "third namespace gets the oldest public")]
fn same_host_in_two_namespaces(ns: &str, want_ns: Option<&str>, port: u32) {
    let s = registry().view(ns).lookup_host("dup.example.net");
    assert_eq!(s.map(|s| &*s.namespace), want_ns);
    assert_eq!(s.map(|s| s.ports[0].number), Some(port));
}

#[test_case("any", "10.0.0.1", 5432, Some("vip.data.internal"); "vip")]
#[test_case("any", "10.0.0.1", 5433, None; "vip wrong port")]
#[test_case("any", "2001:db8::7", 5432, Some("vip.data.internal"); "ipv6 vip")]
#[test_case("any", "10.1.2.3", 5432, Some("narrow.data.internal"); "longest prefix")]
#[test_case("any", "10.1.3.3", 5432, Some("wide.data.internal"); "shorter prefix")]
#[test_case("any", "10.2.0.1", 5432, None; "outside every cidr")]
#[test_case("any", "2001:db8:1::5", 5432, Some("narrow.data.internal"); "ipv6 cidr")]
#[test_case("any", "172.16.0.9", 7000, Some("legacy.data.internal"); "NONE with selector listens on endpoint IPs")]
fn lookup_addr(ns: &str, ip: &str, port: u32, want: Option<&str>) {
    let ip: IpAddr = ip.parse().unwrap();
    let got = registry().view(ns).lookup_addr(ip, port).map(|s| s.host.to_string());
    assert_eq!(got.as_deref(), want);
}

#[test_case("data", 6000, Some("raw.data.internal"); "own namespace")]
#[test_case("web", 6000, Some("raw.data.internal"); "exported by name")]
#[test_case("other", 6000, None; "not exported")]
#[test_case("data", 7000, None; "NONE with selector has no wildcard listener")]
#[test_case("data", 5432, None; "services with addresses are not wildcard")]
fn lookup_port(ns: &str, port: u32, want: Option<&str>) {
    let got = registry().view(ns).lookup_port(port).map(|s| s.host.to_string());
    assert_eq!(got.as_deref(), want);
}

#[test_case("web", "tls.example.com", 443, Some("tls.example.com"); "exact")]
#[test_case("web", "api.tls.example.com", 443, Some("*.tls.example.com"); "wildcard")]
#[test_case("web", "tls.example.com", 80, None; "http port is not an SNI port")]
#[test_case("web", "x.a.com", 443, None; "host without a TLS port")]
fn lookup_sni(ns: &str, sni: &str, port: u32, want: Option<&str>) {
    let got = registry().view(ns).lookup_sni(sni, port).map(|s| s.host.to_string());
    assert_eq!(got.as_deref(), want);
}

#[test]
fn visible_lists_one_service_per_host() {
    let r = registry();
    let hosts = |ns: &str| {
        r.visible(ns)
            .iter()
            .map(|s| format!("{}@{}", s.host, s.namespace))
            .collect::<Vec<_>>()
    };
    let web = hosts("web");
    assert!(web.contains(&"dup.example.net@web".to_string()));
    assert!(web.contains(&"raw.data.internal@data".to_string()));
    assert!(!web.iter().any(|h| h.starts_with("only.secret.io")));
    assert_eq!(web.iter().filter(|h| h.starts_with("dup.example.net")).count(), 1);
    let other = hosts("other");
    assert!(!other.iter().any(|h| h.starts_with("raw.data.internal")));
    assert_eq!(
        ns_of(r.view("secret").lookup_host("only.secret.io")),
        Some(("only.secret.io".into(), "secret".into()))
    );
}

#[test]
fn services_on_port() {
    let r = registry();
    let hosts: Vec<String> = r
        .view("web")
        .services_on_port(5432)
        .map(|s| s.host.to_string())
        .collect();
    assert_eq!(
        hosts,
        ["vip.data.internal", "wide.data.internal", "narrow.data.internal"]
    );
    assert_eq!(
        r.view("web").services_on_port(8080).count(),
        0,
        "secret's dup is shadowed in web"
    );
}
