//! The service lookup `istioctl analyze` does (`pkg/config/analysis/analyzers/util/
//! service_lookup.go`): its verdicts on VirtualService destinations (IST0101, IST0112) and
//! DestinationRule hosts (IST0174, IST0173) come from it, not from istiod's registry, so
//! meshentry reproduces it as it is, quirks included:
//!
//! - every host, a ServiceEntry's too, is made a FQDN the way short names are
//!   (`name` -> `name.<namespace>.svc.cluster.local`);
//! - a service is keyed by `(scope, FQDN)`, scope `*` when exported everywhere, else each
//!   namespace of `exportTo` (`.` = its own);
//! - a reference from namespace `ns` with `exportTo` finds the key `(*, host)`, then `(ns,
//!   host)` (no exportTo) or `(e, host)` for each of its `exportTo`; then a wildcard service of
//!   scope `*` or `ns` whose host (without `*`) ends the reference's host (without `*`).
//!
//! Offline (`istioctl analyze --use-kube=false`) the Kubernetes Services it knows are the
//! ones in the files plus the ingress gateway Service (and a Pod) istioctl adds by default;
//! against a live cluster, the cluster's.
//!
//! istioctl's analyzers always use the domain `cluster.local`; meshentry uses the cluster
//! domain it is given (`--cluster-domain`), the one its Kubernetes Service hosts are in.

use meshentry_api::model::ServiceEntry;
use meshentry_api::{Resource, Spec};

use crate::hash::FxHashMap as HashMap;
use crate::model::Labels;

/// Istio's `util.ConvertHostToFQDN`: a host with neither a `*` prefix nor a dot gets the
/// namespace's cluster domain (`suffix` is `.svc.<domain>`). Unlike [`super::expand_host`],
/// case is kept (Istio compares strings).
pub fn fqdn(namespace: &str, host: &str, suffix: &str) -> String {
    if host.starts_with('*') || host.contains('.') {
        host.to_string()
    } else {
        format!("{host}.{namespace}{suffix}")
    }
}

/// Istio's `util.GetResourceNameFromHost`: `name.ns.svc.cluster.local` is `(ns, name)`, any other
/// host `(namespace, host)`. DestinationRule subsets are keyed by it (IST0101 on subsets).
pub fn resource_name(namespace: &str, host: &str, suffix: &str) -> (String, String) {
    if let Some(rest) = host.strip_suffix(suffix)
        && let Some((name, ns)) = rest.rsplit_once('.')
        && !name.is_empty()
        && !ns.is_empty()
    {
        return (ns.to_string(), name.to_string());
    }
    (namespace.to_string(), host.to_string())
}

/// A Kubernetes Service as the analyzers see one.
#[derive(Clone, Debug)]
pub struct KubeService {
    pub namespace: String,
    pub name: String,
    pub ports: Vec<KubePort>,
    pub selector: Labels,
    /// The `networking.istio.io/exportTo` annotation, split; empty = everywhere.
    pub export_to: Vec<String>,
    /// Where it comes from, for messages.
    pub origin: String,
}

#[derive(Clone, Debug)]
pub struct KubePort {
    pub port: u32,
    pub target_port: u32,
    pub protocol: &'static str,
}

/// A Pod as the analyzers see one (the default ingress gateway Pod has no resource).
#[derive(Clone, Debug)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub annotations: Labels,
}

/// Istio's root namespace, where `istioctl analyze --use-kube=false` adds its defaults.
const ISTIO_NAMESPACE: &str = super::ROOT_NAMESPACE;
/// MeshConfig `ingressService` by default.
const INGRESS_SERVICE: &str = "istio-ingressgateway";

/// The ingress gateway Service istioctl adds when analysing files alone
/// (`pkg/config/analysis/local/defaults.go`): its ports and the labels it selects.
pub fn default_ingress_service() -> KubeService {
    let port = |port, target_port| KubePort {
        port,
        target_port,
        protocol: "TCP",
    };
    KubeService {
        namespace: ISTIO_NAMESPACE.into(),
        name: INGRESS_SERVICE.into(),
        ports: vec![port(80, 80), port(443, 443), port(31400, 31400), port(15443, 15443)],
        selector: [("istio".to_string(), "ingressgateway".to_string())].into(),
        export_to: Vec::new(),
        origin: "the ingress gateway Service istioctl assumes".into(),
    }
}

/// The Pod istioctl adds with it.
pub fn default_ingress_pod() -> PodInfo {
    PodInfo {
        namespace: ISTIO_NAMESPACE.into(),
        name: format!("{INGRESS_SERVICE}-dummypod"),
        labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
        annotations: Labels::new(),
    }
}

/// What a lookup finds.
#[derive(Clone, Copy, Debug)]
pub enum Found<'a> {
    Entry(&'a Resource, &'a ServiceEntry),
    Kube(&'a KubeService),
}

impl Found<'_> {
    /// The port numbers, in the order written.
    pub fn ports(&self) -> Vec<u32> {
        match self {
            Found::Entry(_, se) => se.ports.iter().map(|p| p.number).collect(),
            Found::Kube(s) => s.ports.iter().map(|p| p.port).collect(),
        }
    }
}

/// The index `InitServiceEntryHostMap` builds.
pub struct Services<'a> {
    by_key: HashMap<(String, String), Found<'a>>,
    /// The wildcard keys, by the host's text after `*` when it starts with a dot
    /// (`.example.com`), in the order written; other wildcards (`*`, `*foo.com`) in `odd`.
    wildcards: HashMap<String, Vec<(String, Found<'a>)>>,
    odd: Vec<(String, String, Found<'a>)>,
    /// `.svc.<cluster domain>`.
    suffix: String,
}

impl<'a> Services<'a> {
    /// From ServiceEntries (oldest first; for one key the oldest is kept) and Kubernetes
    /// Services (which replace a ServiceEntry of the same key, as Istio adds them last).
    pub fn new(entries: &[&'a Resource], kube: &'a [KubeService], suffix: &str) -> Self {
        let mut by_key: HashMap<(String, String), Found<'a>> = HashMap::default();
        for &r in entries {
            let Spec::ServiceEntry(se) = &r.spec else { continue };
            let scopes = scopes(&se.export_to, &r.namespace);
            for h in &se.hosts {
                let host = fqdn(&r.namespace, h, suffix);
                for scope in &scopes {
                    by_key
                        .entry((scope.clone(), host.clone()))
                        .or_insert(Found::Entry(r, se));
                }
            }
        }
        for s in kube {
            let host = fqdn(&s.namespace, &s.name, suffix);
            for scope in scopes(&s.export_to, &s.namespace) {
                by_key.insert((scope, host.clone()), Found::Kube(s));
            }
        }
        let mut keys: Vec<&(String, String)> = by_key.keys().filter(|(_, h)| h.starts_with('*')).collect();
        keys.sort();
        let mut wildcards: HashMap<String, Vec<(String, Found<'a>)>> = HashMap::default();
        let mut odd = Vec::new();
        for (scope, host) in keys {
            let found = by_key[&(scope.clone(), host.clone())];
            let suffix = &host[1..];
            if suffix.starts_with('.') {
                wildcards
                    .entry(suffix.to_string())
                    .or_default()
                    .push((scope.clone(), found));
            } else {
                odd.push((scope.clone(), suffix.to_string(), found));
            }
        }
        Services {
            by_key,
            wildcards,
            odd,
            suffix: suffix.to_string(),
        }
    }

    /// Istio's `GetDestinationHost` for a reference to `host` from namespace `ns` whose
    /// resource has `export_to`. Where Istio would pick among several wildcards at random (it
    /// walks a map), the longest suffix is taken.
    pub fn lookup(&self, ns: &str, export_to: &[String], host: &str) -> Option<Found<'a>> {
        let name = fqdn(ns, host, &self.suffix);
        let get = |scope: &str| self.by_key.get(&(scope.to_string(), name.clone())).copied();
        if let Some(f) = get("*") {
            return Some(f);
        }
        if export_to.is_empty() {
            if let Some(f) = get(ns) {
                return Some(f);
            }
        } else {
            for e in export_to {
                let scope = if e == "." { ns } else { e.as_str() };
                if let Some(f) = get(scope) {
                    return Some(f);
                }
            }
        }
        // Wildcard services visible from `ns` whose host, `*` removed, ends `host`'s.
        let bare = name.strip_prefix('*').unwrap_or(&name);
        let visible = |scope: &str| scope == "*" || scope == ns;
        for (i, _) in bare.match_indices('.') {
            if let Some(list) = self.wildcards.get(&bare[i..])
                && let Some((_, f)) = list.iter().find(|(scope, _)| visible(scope))
            {
                return Some(*f);
            }
        }
        self.odd
            .iter()
            .filter(|(scope, suffix, _)| visible(scope) && bare.ends_with(suffix.as_str()))
            .max_by_key(|(_, suffix, _)| suffix.len())
            .map(|(_, _, f)| *f)
    }
}

/// The scopes a resource's `exportTo` puts it in (`*`, or namespaces; `.` = its own).
fn scopes(export_to: &[String], own: &str) -> Vec<String> {
    if export_to.is_empty() || export_to.iter().any(|e| e == "*") {
        return vec!["*".into()];
    }
    let mut out: Vec<String> = export_to
        .iter()
        .map(|e| if e == "." { own.to_string() } else { e.clone() })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use meshentry_api::{LoadOptions, load_str};

    use super::*;

    #[test]
    fn names() {
        const S: &str = ".svc.cluster.local";
        assert_eq!(fqdn("ns", "reviews", S), "reviews.ns.svc.cluster.local");
        assert_eq!(
            fqdn("ns", "reviews", ".svc.corp.example"),
            "reviews.ns.svc.corp.example"
        );
        assert_eq!(fqdn("ns", "a.b", S), "a.b");
        assert_eq!(fqdn("ns", "*", S), "*");
        assert_eq!(
            resource_name("x", "reviews.prod.svc.cluster.local", S),
            ("prod".into(), "reviews".into())
        );
        assert_eq!(
            resource_name("x", "a.b.prod.svc.cluster.local", S),
            ("prod".into(), "a.b".into())
        );
        assert_eq!(
            resource_name("x", "api.example.com", S),
            ("x".into(), "api.example.com".into())
        );
    }

    #[test]
    fn lookup_follows_istios_order_and_quirks() {
        let yaml = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: pub, namespace: a}
spec:
  hosts: [api.example.com, \"*.cdn.example\", short]
  ports: [{number: 80, name: http}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: b}
spec:
  hosts: [db.example.com, \"*.b.example\"]
  exportTo: [., c]
  ports: [{number: 5432, name: tcp}]
";
        let loaded = load_str("t.yaml", yaml, &LoadOptions::default());
        let entries: Vec<&Resource> = loaded.analyzable().collect();
        let kube = vec![default_ingress_service()];
        let s = Services::new(&entries, &kube, ".svc.cluster.local");
        let name = |f: Option<Found<'_>>| match f {
            Some(Found::Entry(r, _)) => r.meta.name.clone(),
            Some(Found::Kube(k)) => k.name.clone(),
            None => "-".into(),
        };
        assert_eq!(name(s.lookup("x", &[], "api.example.com")), "pub");
        assert_eq!(name(s.lookup("x", &[], "img.cdn.example")), "pub");
        assert_eq!(name(s.lookup("x", &[], "*.img.cdn.example")), "pub");
        assert_eq!(name(s.lookup("x", &[], "cdn.example")), "-");
        // A ServiceEntry's short host is made a FQDN of its namespace.
        assert_eq!(name(s.lookup("a", &[], "short")), "pub");
        assert_eq!(name(s.lookup("x", &[], "short.a.svc.cluster.local")), "pub");
        // Scoped: from its namespace (no exportTo), or through the referrer's exportTo.
        assert_eq!(name(s.lookup("b", &[], "db.example.com")), "private");
        assert_eq!(name(s.lookup("x", &[], "db.example.com")), "-");
        assert_eq!(name(s.lookup("x", &["c".into()], "db.example.com")), "private");
        assert_eq!(name(s.lookup("b", &["*".into()], "db.example.com")), "-");
        // Wildcards: only of scope `*` or the referrer's namespace, whatever its exportTo.
        assert_eq!(name(s.lookup("b", &[], "x.b.example")), "private");
        assert_eq!(name(s.lookup("c", &[], "x.b.example")), "private");
        assert_eq!(name(s.lookup("d", &["c".into()], "x.b.example")), "-");
        assert_eq!(
            name(s.lookup("x", &[], "istio-ingressgateway.istio-system.svc.cluster.local")),
            "istio-ingressgateway"
        );
        assert_eq!(name(s.lookup("x", &[], "reviews.prod.svc.cluster.local")), "-");
    }
}
