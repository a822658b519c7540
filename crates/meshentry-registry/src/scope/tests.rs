//! Unit tests of Sidecar scoping: one per host form, the selection order, port listeners, the
//! VirtualServices imported and the services they route to, and the scoped registry. The
//! expected imports are what Istio's `SidecarScope` holds for the same input
//! (`pilot/pkg/model/sidecar.go`, `sidecar_test.go`).

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use meshentry_api::{LoadOptions, Loaded, Resource, load_str};

use super::*;
use crate::Registry;

/// A ServiceEntry of `host` in `ns` with `ports` (YAML flow list).
fn se_ports(ns: &str, host: &str, ports: &str, extra: &str) -> String {
    let name = format!("se-{}", host.replace('*', "w").replace('.', "-").to_ascii_lowercase());
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [\"{host}\"]\n  ports: {ports}\n  resolution: NONE\n{extra}"
    )
}

/// An HTTP ServiceEntry of `host` on port 80 in `ns`.
fn se(ns: &str, host: &str) -> String {
    se_ports(ns, host, "[{number: 80, name: http, protocol: HTTP}]", "")
}

/// A Sidecar `name` in `ns`; `selector` as a YAML flow map; `egress` as YAML under `egress:`.
fn sidecar(ns: &str, name: &str, selector: Option<&str>, egress: &str) -> String {
    let selector = selector.map_or(String::new(), |s| format!("  workloadSelector: {{labels: {s}}}\n"));
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{selector}  egress:\n{egress}"
    )
}

/// A Sidecar with one catch-all listener importing `hosts`.
fn hosts_sidecar(ns: &str, hosts: &[&str]) -> String {
    let list: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    sidecar(ns, "scope", None, &format!("  - hosts: [{}]\n", list.join(", ")))
}

/// Loads `docs`, every resource taken as valid: scoping is tested apart from validation (which
/// Istio runs first; `~ns/host` entries are valid in Istio).
fn load(docs: &[String]) -> Loaded {
    let mut loaded = load_str("t.yaml", &docs.join("---\n"), &LoadOptions::default());
    assert!(!loaded.resources.is_empty());
    for r in &mut loaded.resources {
        r.valid = true;
    }
    loaded
}

/// The scope of a proxy in `ns` with `labels`, under the Sidecar selected for it.
fn scope_of(loaded: &Loaded, ns: &str, labels: &[(&str, &str)]) -> (Registry, SidecarScope) {
    let resources: Vec<&Resource> = loaded.valid().collect();
    let registry = Registry::build(resources.iter().copied());
    let labels: Labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let selected = select_sidecar(&resources, ns, &labels, "istio-system");
    let scope = SidecarScope::compute(&registry, &resources, selected.as_ref(), ns);
    (registry, scope)
}

/// The (first) service of `host`.
fn by_host<'r>(registry: &'r Registry, host: &str) -> &'r Service {
    registry.services().find(|s| &*s.host == host).unwrap()
}

/// `ns/host` of every imported service, sorted.
fn imported(docs: &[String], ns: &str) -> Vec<String> {
    let loaded = load(docs);
    let (_, scope) = scope_of(&loaded, ns, &[]);
    let mut out: Vec<String> = scope
        .services
        .iter()
        .map(|i| format!("{}/{}", i.namespace, i.host))
        .collect();
    out.sort();
    out
}

/// Services in several namespaces, for the host forms.
fn mesh() -> Vec<String> {
    vec![
        se("default", "a.example.com"),
        se("default", "b.internal"),
        se("other", "c.example.com"),
        se("other", "d.internal"),
        se("third", "*.wild.example.com"),
        se("istio-system", "egress.example.com"),
    ]
}

fn with(mut docs: Vec<String>, more: String) -> Vec<String> {
    docs.push(more);
    docs
}

#[test]
fn dot_slash_star_imports_only_the_proxys_namespace() {
    let docs = with(mesh(), hosts_sidecar("default", &["./*"]));
    assert_eq!(
        imported(&docs, "default"),
        ["default/a.example.com", "default/b.internal"]
    );
}

#[test]
fn namespace_slash_host_imports_that_host_of_that_namespace() {
    let docs = with(mesh(), hosts_sidecar("default", &["other/c.example.com"]));
    assert_eq!(imported(&docs, "default"), ["other/c.example.com"]);
    // The namespace must be the service's own.
    let docs = with(mesh(), hosts_sidecar("default", &["third/c.example.com"]));
    assert!(imported(&docs, "default").is_empty());
    let docs = with(mesh(), hosts_sidecar("default", &["./c.example.com"]));
    assert!(imported(&docs, "default").is_empty());
}

#[test]
fn namespace_slash_star_imports_a_whole_namespace() {
    let docs = with(mesh(), hosts_sidecar("default", &["./*", "other/*"]));
    assert_eq!(
        imported(&docs, "default"),
        [
            "default/a.example.com",
            "default/b.internal",
            "other/c.example.com",
            "other/d.internal"
        ]
    );
}

#[test]
fn star_slash_host_imports_the_host_from_any_namespace() {
    let docs = with(
        mesh(),
        hosts_sidecar("default", &["*/c.example.com", "*/egress.example.com"]),
    );
    assert_eq!(
        imported(&docs, "default"),
        ["istio-system/egress.example.com", "other/c.example.com"]
    );
}

#[test]
fn star_slash_star_imports_everything_visible() {
    let docs = with(mesh(), hosts_sidecar("default", &["*/*"]));
    assert_eq!(imported(&docs, "default").len(), 6);
}

#[test]
fn wildcard_hosts_cover_deeper_names_only_one_way() {
    // `*.example.com` covers a.example.com and the narrower wildcard *.wild.example.com, not
    // example.com; a wildcard service host is not covered by a name under it (SubsetOf).
    let docs = with(
        with(mesh(), se("default", "example.com")),
        hosts_sidecar("default", &["*/*.example.com", "third/x.wild.example.com"]),
    );
    assert_eq!(
        imported(&docs, "default"),
        [
            "default/a.example.com",
            "istio-system/egress.example.com",
            "other/c.example.com",
            "third/*.wild.example.com"
        ]
    );
    let docs = with(mesh(), hosts_sidecar("default", &["third/x.wild.example.com"]));
    assert!(imported(&docs, "default").is_empty());
}

#[test]
fn tilde_entries_exclude() {
    // `~/*` excludes everything: the proxy imports nothing.
    let docs = with(mesh(), hosts_sidecar("default", &["~/*"]));
    assert!(imported(&docs, "default").is_empty());
    // `~ns/host` takes one host out of a wider import, in that namespace only.
    let docs = with(mesh(), hosts_sidecar("default", &["*/*", "~other/c.example.com"]));
    let got = imported(&docs, "default");
    assert_eq!(got.len(), 5);
    assert!(!got.contains(&"other/c.example.com".to_string()), "{got:?}");
    // `~/host` in any namespace, and wildcards in exclusions.
    let docs = with(mesh(), hosts_sidecar("default", &["*/*", "~/*.internal"]));
    assert_eq!(
        imported(&docs, "default"),
        [
            "default/a.example.com",
            "istio-system/egress.example.com",
            "other/c.example.com",
            "third/*.wild.example.com"
        ]
    );
    // `~./host` is the proxy's namespace.
    let docs = with(mesh(), hosts_sidecar("default", &["./*", "~./b.internal"]));
    assert_eq!(imported(&docs, "default"), ["default/a.example.com"]);
}

#[test]
fn hosts_match_case_sensitively_as_istio_does() {
    let docs = with(mesh(), hosts_sidecar("default", &["*/A.example.com"]));
    assert!(imported(&docs, "default").is_empty());
}

#[test]
fn export_to_limits_what_any_host_imports() {
    let hidden = se_ports(
        "other",
        "hidden.example.com",
        "[{number: 80, name: http, protocol: HTTP}]",
        "  exportTo: [\".\"]\n",
    );
    let named = se_ports(
        "other",
        "named.example.com",
        "[{number: 80, name: http, protocol: HTTP}]",
        "  exportTo: [default]\n",
    );
    let docs = vec![hidden, named, hosts_sidecar("default", &["*/*"])];
    assert_eq!(imported(&docs, "default"), ["other/named.example.com"]);
    // Exact entries (Istio's lookup path) apply exportTo too.
    let mut docs = docs;
    docs[2] = hosts_sidecar("default", &["other/hidden.example.com", "other/named.example.com"]);
    assert_eq!(imported(&docs, "default"), ["other/named.example.com"]);
}

#[test]
fn one_namespace_per_host_own_first_else_the_first_imported() {
    // shared.example.com in three namespaces; `other`'s is the oldest.
    let docs = vec![
        se("other", "shared.example.com"),
        se("third", "shared.example.com"),
        se("default", "shared.example.com"),
        hosts_sidecar("default", &["*/shared.example.com"]),
    ];
    assert_eq!(imported(&docs, "default"), ["default/shared.example.com"]);
    // Without one in the proxy's namespace, the oldest imported one.
    assert_eq!(
        imported(
            &docs[..2]
                .iter()
                .cloned()
                .chain([hosts_sidecar("default", &["*/*"])])
                .collect::<Vec<_>>(),
            "default"
        ),
        ["other/shared.example.com"]
    );
    // A Sidecar that names only `third` gets third's, although other's is older (the
    // unscoped registry would pick other's).
    let docs = vec![
        se("other", "shared.example.com"),
        se("third", "shared.example.com"),
        hosts_sidecar("default", &["third/*"]),
    ];
    assert_eq!(imported(&docs, "default"), ["third/shared.example.com"]);
}

#[test]
fn a_port_listener_imports_only_services_with_its_port() {
    let docs = vec![
        se_ports(
            "default",
            "two.example.com",
            "[{number: 80, name: http, protocol: HTTP}, {number: 9080, name: alt, protocol: HTTP}]",
            "",
        ),
        se("default", "web.example.com"),
        sidecar(
            "default",
            "scope",
            None,
            "  - port: {number: 9080, protocol: HTTP, name: alt}\n    hosts: [\"./*\"]\n",
        ),
    ];
    let loaded = load(&docs);
    let (_, scope) = scope_of(&loaded, "default", &[]);
    assert_eq!(scope.services.len(), 1, "{:?}", scope.services);
    let two = &scope.services[0];
    assert_eq!(&*two.host, "two.example.com");
    assert_eq!(two.ports, [9080]);
    assert_eq!(two.routable, [9080]);
    assert_eq!(scope.listeners[0].role, Role::Port(9080));
}

#[test]
fn a_port_listener_holds_its_port_against_the_catch_all() {
    // Port 9080 is scoped to namespace `a`; the catch-all imports everything else.
    let docs = vec![
        se_ports(
            "a",
            "in-a.example.com",
            "[{number: 9080, name: http, protocol: HTTP}]",
            "",
        ),
        se_ports(
            "b",
            "in-b.example.com",
            "[{number: 80, name: http, protocol: HTTP}, {number: 9080, name: alt, protocol: HTTP}]",
            "",
        ),
        // A TCP service with its own VIP keeps its listener (VIP:9080) even on a held port;
        // one without address would share 0.0.0.0:9080 and loses it.
        se_ports(
            "b",
            "db.example.com",
            "[{number: 9080, name: tcp, protocol: TCP}]",
            "  addresses: [10.1.2.3]\n",
        ),
        se_ports("b", "raw.example.com", "[{number: 9080, name: tcp, protocol: TCP}]", ""),
        sidecar(
            "default",
            "scope",
            None,
            "  - port: {number: 9080, protocol: HTTP, name: alt}\n    hosts: [\"a/*\"]\n  - hosts: [\"*/*\"]\n",
        ),
    ];
    let loaded = load(&docs);
    let (registry, scope) = scope_of(&loaded, "default", &[]);
    let routable = |h: &str| scope.services.iter().find(|i| &*i.host == h).unwrap().routable.clone();
    let held = |h: &str| scope.services.iter().find(|i| &*i.host == h).unwrap().ports.clone();
    assert_eq!(routable("in-a.example.com"), [9080]);
    assert_eq!(held("in-b.example.com"), [80, 9080]);
    assert_eq!(routable("in-b.example.com"), [80]);
    assert_eq!(routable("db.example.com"), [9080]);
    assert!(routable("raw.example.com").is_empty());
    let why = scope.why_not(&registry, by_host(&registry, "in-b.example.com"), 9080);
    assert!(
        why.iter().any(|l| l.contains("egress[0] (port 9080) holds port 9080")),
        "{why:?}"
    );

    // The scoped registry routes in-b on 80 only; 9080 belongs to in-a.
    let scoped = registry.scoped(&scope);
    let view = scoped.view("default");
    assert_eq!(view.lookup_host("in-b.example.com").unwrap().ports.len(), 1);
    assert_eq!(
        view.services_on_port(9080).map(|s| &*s.host).collect::<Vec<_>>(),
        ["in-a.example.com", "db.example.com"]
    );
    assert!(view.lookup_port(9080).is_none(), "raw.example.com lost 0.0.0.0:9080");
}

#[test]
fn a_tcp_port_listener_holds_only_the_addresses_it_uses() {
    // A TCP port listener of a service with a VIP takes VIP:5432 only: a catch-all service
    // without address keeps 0.0.0.0:5432.
    let docs = vec![
        se_ports(
            "a",
            "pg-a.example.com",
            "[{number: 5432, name: pg, protocol: TCP}]",
            "  addresses: [10.0.0.5]\n",
        ),
        se_ports("b", "pg-b.example.com", "[{number: 5432, name: pg, protocol: TCP}]", ""),
        sidecar(
            "default",
            "scope",
            None,
            "  - port: {number: 5432, protocol: TCP, name: pg}\n    hosts: [\"a/*\"]\n  - hosts: [\"b/*\"]\n",
        ),
    ];
    let loaded = load(&docs);
    let (_, scope) = scope_of(&loaded, "default", &[]);
    for s in &scope.services {
        assert_eq!(s.routable, [5432], "{}", s.host);
    }
}

#[test]
fn unix_bound_and_http_proxy_listeners() {
    let docs = vec![
        se_ports(
            "default",
            "two.example.com",
            "[{number: 80, name: http, protocol: HTTP}, {number: 443, name: tls, protocol: TLS}]",
            "",
        ),
        sidecar(
            "default",
            "scope",
            None,
            "  - port: {number: 0, protocol: HTTP, name: uds}\n    bind: unix:///var/run/app.sock\n    hosts: [\"./*\"]\n",
        ),
    ];
    let loaded = load(&docs);
    let (_, scope) = scope_of(&loaded, "default", &[]);
    assert_eq!(scope.listeners[0].role, Role::Unix);
    assert_eq!(scope.services[0].ports, [80, 443]);
    assert!(scope.services[0].routable.is_empty());

    let docs = vec![
        docs[0].clone(),
        sidecar(
            "default",
            "scope",
            None,
            "  - port: {number: 15080, protocol: HTTP_PROXY, name: proxy}\n    hosts: [\"./*\"]\n",
        ),
    ];
    let loaded = load(&docs);
    let (_, scope) = scope_of(&loaded, "default", &[]);
    assert_eq!(scope.listeners[0].role, Role::HttpProxy);
    assert_eq!(scope.services[0].routable, [80, 443]);
}

/// Sidecars: a selector-less one in `default`, one selecting `app: web`, one in the root
/// namespace.
fn sidecars() -> Vec<String> {
    vec![
        se("default", "a.example.com"),
        se("other", "c.example.com"),
        se("istio-system", "egress.example.com"),
        sidecar("default", "ns-wide", None, "  - hosts: [\"./*\"]\n"),
        sidecar("default", "web", Some("{app: web}"), "  - hosts: [\"other/*\"]\n"),
        sidecar(
            "istio-system",
            "mesh-default",
            None,
            "  - hosts: [\"istio-system/*\"]\n",
        ),
        sidecar("istio-system", "selected", Some("{app: web}"), "  - hosts: [\"*/*\"]\n"),
    ]
}

fn selected_name(docs: &[String], ns: &str, labels: &[(&str, &str)]) -> Option<(String, Selection)> {
    let loaded = load(docs);
    let resources: Vec<&Resource> = loaded.valid().collect();
    let labels: Labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    select_sidecar(&resources, ns, &labels, "istio-system")
        .map(|s| (format!("{}/{}", s.resource.namespace, s.resource.name()), s.selection))
}

#[test]
fn selection_workload_selector_then_namespace_then_root() {
    let docs = sidecars();
    assert_eq!(
        selected_name(&docs, "default", &[("app", "web"), ("v", "1")]),
        Some(("default/web".into(), Selection::WorkloadSelector))
    );
    assert_eq!(
        selected_name(&docs, "default", &[("app", "db")]),
        Some(("default/ns-wide".into(), Selection::Namespace))
    );
    // A namespace without a Sidecar gets the root namespace's selector-less one, whatever
    // the labels (a root Sidecar with a selector applies only in the root namespace).
    assert_eq!(
        selected_name(&docs, "other", &[("app", "web")]),
        Some(("istio-system/mesh-default".into(), Selection::RootNamespace))
    );
    assert_eq!(
        selected_name(&docs, "istio-system", &[("app", "web")]),
        Some(("istio-system/selected".into(), Selection::WorkloadSelector))
    );
    // Only selector Sidecars that do not match, and no root one: none.
    let docs = vec![docs[4].clone()];
    assert_eq!(selected_name(&docs, "default", &[]), None);
}

#[test]
fn selection_oldest_first() {
    let docs = vec![
        sidecar("default", "b-old", None, "  - hosts: [\"./*\"]\n"),
        sidecar("default", "a-new", None, "  - hosts: [\"*/*\"]\n"),
        sidecar("default", "z-sel-old", Some("{app: web}"), "  - hosts: [\"./*\"]\n"),
        sidecar("default", "y-sel-new", Some("{app: web}"), "  - hosts: [\"*/*\"]\n"),
    ];
    assert_eq!(selected_name(&docs, "default", &[]).unwrap().0, "default/b-old");
    assert_eq!(
        selected_name(&docs, "default", &[("app", "web")]).unwrap().0,
        "default/z-sel-old"
    );
}

#[test]
fn the_selected_sidecar_decides_the_imports() {
    let docs = sidecars();
    let loaded = load(&docs);
    let (_, web) = scope_of(&loaded, "default", &[("app", "web")]);
    assert_eq!(
        web.services.iter().map(|i| &*i.host).collect::<Vec<_>>(),
        ["c.example.com"]
    );
    let (_, other) = scope_of(&loaded, "default", &[]);
    assert_eq!(
        other.services.iter().map(|i| &*i.host).collect::<Vec<_>>(),
        ["a.example.com"]
    );
    // The root namespace's Sidecar resolves `.` and imports for the proxy's namespace.
    let (_, root) = scope_of(&loaded, "third", &[]);
    assert_eq!(root.sidecar.as_ref().unwrap().name, "mesh-default");
    assert_eq!(
        root.services.iter().map(|i| &*i.host).collect::<Vec<_>>(),
        ["egress.example.com"]
    );
}

#[test]
fn the_default_scope_is_the_namespace_view() {
    let docs = vec![
        se("other", "shared.example.com"),
        se("default", "shared.example.com"),
        se("other", "c.example.com"),
        se_ports(
            "other",
            "hidden.example.com",
            "[{number: 80, name: http, protocol: HTTP}]",
            "  exportTo: [\".\"]\n",
        ),
    ];
    let loaded = load(&docs);
    let (registry, scope) = scope_of(&loaded, "default", &[]);
    assert!(scope.sidecar.is_none());
    let mut got: Vec<String> = scope
        .services
        .iter()
        .map(|i| format!("{}/{}", i.namespace, i.host))
        .collect();
    got.sort();
    let mut want: Vec<String> = registry
        .visible("default")
        .iter()
        .map(|s| format!("{}/{}", s.namespace, s.host))
        .collect();
    want.sort();
    assert_eq!(got, want);
}

const VS_TO_GATEWAY: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: via-egress, namespace: default}
spec:
  hosts: [a.example.com]
  http:
  - route:
    - destination: {host: egress.example.com, port: {number: 80}}
";

#[test]
fn virtual_services_are_imported_by_their_hosts_and_namespace() {
    let docs = with(
        with(mesh(), VS_TO_GATEWAY.to_string()),
        hosts_sidecar("default", &["./*"]),
    );
    let loaded = load(&docs);
    let (_, scope) = scope_of(&loaded, "default", &[]);
    assert!(scope.imports_virtual_service("default/via-egress"));
    // A host in another namespace does not import it: the entry's namespace is the
    // VirtualService's.
    let docs = with(
        with(mesh(), VS_TO_GATEWAY.to_string()),
        hosts_sidecar("default", &["other/a.example.com"]),
    );
    let loaded = load(&docs);
    let (_, scope) = scope_of(&loaded, "default", &[]);
    assert!(!scope.imports_virtual_service("default/via-egress"));
    // Either way round: a wildcard VirtualService host meets an exact entry.
    let wild = VS_TO_GATEWAY.replace("hosts: [a.example.com]", "hosts: [\"*.example.com\"]");
    let docs = with(with(mesh(), wild), hosts_sidecar("default", &["./a.example.com"]));
    let loaded = load(&docs);
    let (_, scope) = scope_of(&loaded, "default", &[]);
    assert!(scope.imports_virtual_service("default/via-egress"));
    // An exclusion of the matching host keeps it out.
    let docs = with(
        with(mesh(), VS_TO_GATEWAY.to_string()),
        hosts_sidecar("default", &["./*", "~./a.example.com"]),
    );
    let loaded = load(&docs);
    let (_, scope) = scope_of(&loaded, "default", &[]);
    assert!(!scope.imports_virtual_service("default/via-egress"));
}

#[test]
fn a_virtual_services_destinations_are_held_but_not_routed() {
    let docs = with(
        with(mesh(), VS_TO_GATEWAY.to_string()),
        hosts_sidecar("default", &["./*"]),
    );
    let loaded = load(&docs);
    let (registry, scope) = scope_of(&loaded, "default", &[]);
    let egress = scope.imported("egress.example.com", "istio-system").unwrap();
    assert_eq!(egress.ports, [80]);
    assert!(egress.routable.is_empty());
    assert_eq!(
        egress.via,
        Via::Destination {
            listener: 0,
            vs: "default/via-egress".into()
        }
    );
    // Lookups do not find it; VirtualService destinations do.
    let scoped = registry.scoped(&scope);
    assert!(scoped.view("default").lookup_host("egress.example.com").is_none());
    assert!(
        scoped
            .cluster_view("default")
            .lookup_host("egress.example.com")
            .is_some()
    );
    assert!(scoped.view("default").lookup_host("a.example.com").is_some());
    assert!(scoped.view("default").lookup_host("c.example.com").is_none());
    // A sourceNamespace naming another namespace drops the rule's destinations.
    let vs = VS_TO_GATEWAY.replace("  - route:", "  - match: [{sourceNamespace: other}]\n    route:");
    let docs = with(with(mesh(), vs), hosts_sidecar("default", &["./*"]));
    let loaded = load(&docs);
    let (_, scope) = scope_of(&loaded, "default", &[]);
    assert!(scope.imported("egress.example.com", "istio-system").is_none());
}

#[test]
fn the_scoped_registry_holds_only_the_imports() {
    let docs = with(mesh(), hosts_sidecar("default", &["./*", "*/egress.example.com"]));
    let loaded = load(&docs);
    let (registry, scope) = scope_of(&loaded, "default", &[]);
    let scoped = registry.scoped(&scope);
    assert!(scoped.is_scoped());
    let hosts: Vec<&str> = scoped.services().map(|s| &*s.host).collect();
    assert_eq!(hosts, ["a.example.com", "b.internal", "egress.example.com"]);
    assert_eq!(scoped.visible("default").len(), 3);
    // Explain's answer for one left out.
    let why = scope.why_not(&registry, by_host(&registry, "c.example.com"), 80);
    assert_eq!(
        why,
        ["Sidecar default/scope egress[0]: no host of [\"./*\", \"*/egress.example.com\"] covers other/c.example.com"]
    );
    let docs = with(mesh(), hosts_sidecar("default", &["*/*", "~other/*"]));
    let loaded = load(&docs);
    let (registry, scope) = scope_of(&loaded, "default", &[]);
    let why = scope.why_not(&registry, by_host(&registry, "c.example.com"), 80);
    assert_eq!(
        why,
        ["Sidecar default/scope egress[0]: other/c.example.com is excluded by hosts[1] \"~other/*\""]
    );
    assert_eq!(
        scope.describe_via(&scope.imported("a.example.com", "default").unwrap().via),
        "Sidecar default/scope egress[0].hosts[0] \"*/*\""
    );
}
