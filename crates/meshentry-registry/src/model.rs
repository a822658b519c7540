//! The resolved registry types: what a ServiceEntry host (or a Kubernetes Service) becomes
//! once Istio has converted it (`pilot/pkg/serviceregistry/serviceentry/conversion.go`,
//! `pilot/pkg/serviceregistry/kube/conversion.go`). They are named apart from the API
//! types (`Service`, not `ServiceEntry`) so raw and resolved configuration are never confused.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use meshentry_api::Origin;
pub use meshentry_api::model::{Location, Resolution};

/// Labels as Kubernetes writes them; shared between the endpoints of one workload.
pub type Labels = BTreeMap<String, String>;

/// Index of a [`Service`] in [`crate::Registry::services`].
pub type ServiceId = u32;

/// One service: a host of a ServiceEntry in the ServiceEntry's namespace (B1), merged with
/// the later ServiceEntries of the same host and namespace that Istio merges into it (B8).
#[derive(Clone, Debug)]
pub struct Service {
    /// `spec.hosts[i]` verbatim: short names are not expanded (B1). May be a wildcard
    /// (`*.example.com`).
    pub host: Arc<str>,
    /// The ServiceEntry's namespace (B1).
    pub namespace: Arc<str>,
    /// `spec.addresses`, converted per B2; empty when none are given (Istio then uses
    /// `0.0.0.0`, see [`Service::default_address`]).
    pub addresses: Arc<[Address]>,
    /// The VIPs istiod auto-allocated for this host (`status.addresses[]` whose `host` is this
    /// host; the last IPv4 and the last IPv6 one, in that order). Istio uses them only when
    /// `spec.addresses` is empty, the resolution is not NONE and the ServiceEntry has not opted
    /// out (label `networking.istio.io/enable-autoallocate-ip: "false"`); otherwise this is
    /// empty. Even then a sidecar listens on them only with DNS capture
    /// (`ISTIO_META_DNS_CAPTURE`), where its DNS proxy answers the host with them; without it
    /// the service keeps `0.0.0.0` ([`Service::default_address`]), as here.
    pub auto_addresses: Arc<[Address]>,
    /// Where [`Service::auto_addresses`] come from.
    pub auto: AutoAddresses,
    /// `spec.ports` of the oldest ServiceEntry, then ports (by new number) of later mergeable
    /// ones (B8).
    pub ports: Vec<Port>,
    /// `spec.resolution`; default NONE (B1).
    pub resolution: Resolution,
    /// `spec.location`; default MESH_EXTERNAL (B1).
    pub location: Location,
    /// `spec.exportTo` (B9).
    pub export_to: ExportTo,
    /// `spec.subjectAltNames`: Istio's `ServiceAccounts` of the service (B1, D8).
    pub subject_alt_names: Arc<[String]>,
    /// The ServiceEntry's `metadata.labels`: part of B8's merge condition.
    pub labels: Arc<Labels>,
    /// `spec.workloadSelector.labels` when a selector is set (B7); part of B8's merge
    /// condition.
    pub selector: Option<Arc<Labels>>,
    /// One entry per (endpoint, service port), grouped by port in port order; within a port,
    /// oldest ServiceEntry first, then in the order written (B5, B7, B8).
    pub endpoints: Vec<Endpoint>,
    /// The ServiceEntry this service comes from (the oldest, when merged).
    pub source: SourceId,
    /// Later ServiceEntries whose ports were merged into this service (B8).
    pub merged: Vec<SourceId>,
    /// Istio's oldest-first rank of [`Service::source`]: lower is older. A Kubernetes
    /// Service ranks as the oldest ServiceEntry of its host and namespace, which it takes
    /// precedence over.
    pub age: u32,
    /// Which registry the service comes from (Istio's `ServiceRegistry`).
    pub provider: Provider,
    /// The hosts of the ExternalName Services that are aliases of this one (Istio's
    /// `Attributes.Aliases`), sorted by namespace, then host: a request or SNI for one of them
    /// is matched to this service.
    pub aliases: Arc<[Arc<str>]>,
}

/// Whether a service has auto-allocated addresses, and whose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AutoAddresses {
    /// Istio would not use any (addresses given, resolution NONE, opted out, a Kubernetes
    /// Service).
    NotUsed,
    /// Eligible, and none allocated (allocation is off, or not done yet).
    Wanted,
    /// From the ServiceEntry's `status.addresses` (istiod's allocation).
    Status,
    /// Allocated by meshentry ([`crate::allocate`]).
    Allocated,
}

/// Istio's `provider.ID`: the registry a service comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Provider {
    /// A ServiceEntry (Istio's `External`).
    External,
    /// A Kubernetes Service.
    Kubernetes,
}

impl Service {
    /// Istio's `DefaultAddress`: the first address, or `0.0.0.0` when there is none (B2).
    pub fn default_address(&self) -> &str {
        self.addresses.first().map_or("0.0.0.0", |a| &*a.text)
    }

    /// The port with this number.
    pub fn port(&self, number: u32) -> Option<&Port> {
        self.ports.iter().find(|p| p.number == number)
    }

    /// Whether `spec.hosts[i]` is a wildcard (`*.a.com`, or a partial `*a.com`).
    pub fn is_wildcard(&self) -> bool {
        self.host.starts_with('*')
    }

    /// The endpoints of one service port (by its name, as Istio's EDS matches them).
    pub fn endpoints_for<'a>(&'a self, port: &'a Port) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.endpoints.iter().filter(move |e| *e.port_name == *port.name)
    }

    /// B10's preference for a proxy in `ns` (lower wins): its own namespace, then Istio's
    /// list order (private, exported by name, public), then oldest. `None` when `ns` does not
    /// see the service (B9).
    pub fn preference(&self, ns: &str) -> Option<(bool, u8, u32)> {
        let group = self.export_to.rank_for(&self.namespace, ns)?;
        Some((*self.namespace != *ns, group, self.age))
    }

    /// B9: whether a proxy in namespace `ns` sees this service.
    pub fn is_visible_to(&self, ns: &str) -> bool {
        self.export_to.is_visible(ns)
    }
}

/// A service port (`spec.ports[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub name: Arc<str>,
    pub number: u32,
    /// From `protocol` only; port-name prefixes are not used for ServiceEntries (B3).
    pub protocol: Protocol,
    /// `targetPort`, when set (B4).
    pub target_port: Option<u32>,
}

/// Istio's protocols (A3); `Unset` means auto-detection (B3), not TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Unset,
    Tcp,
    Udp,
    Grpc,
    GrpcWeb,
    Http,
    HttpProxy,
    Http2,
    Https,
    Tls,
    Mongo,
    Redis,
    Mysql,
}

impl Protocol {
    /// Case-insensitive, as Istio parses it. Validation has rejected unknown names (A3), so
    /// an unknown one here can only come from an unvalidated resource and reads as unset.
    pub fn parse(s: &str) -> Protocol {
        const ALL: [Protocol; 12] = [
            Protocol::Tcp,
            Protocol::Udp,
            Protocol::Grpc,
            Protocol::GrpcWeb,
            Protocol::Http,
            Protocol::HttpProxy,
            Protocol::Http2,
            Protocol::Https,
            Protocol::Tls,
            Protocol::Mongo,
            Protocol::Redis,
            Protocol::Mysql,
        ];
        ALL.into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .unwrap_or(Protocol::Unset)
    }

    /// Upper case; `""` when unset.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Unset => "",
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-WEB",
            Protocol::Http => "HTTP",
            Protocol::HttpProxy => "HTTP_PROXY",
            Protocol::Http2 => "HTTP2",
            Protocol::Https => "HTTPS",
            Protocol::Tls => "TLS",
            Protocol::Mongo => "MONGO",
            Protocol::Redis => "REDIS",
            Protocol::Mysql => "MYSQL",
        }
    }

    /// A3's HTTP family: HTTP, HTTP2, HTTP_PROXY, GRPC, GRPC-WEB.
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Http2 | Protocol::HttpProxy | Protocol::Grpc | Protocol::GrpcWeb
        )
    }

    /// A3's TLS family: HTTPS, TLS (routed by SNI, C4).
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }

    /// Protocols whose outbound listener forwards by destination alone (C5): the TCP family
    /// without SNI, plus unset (its TCP chain, C6).
    pub fn is_opaque_tcp(self) -> bool {
        matches!(
            self,
            Protocol::Unset | Protocol::Tcp | Protocol::Mongo | Protocol::Redis | Protocol::Mysql
        )
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `spec.addresses` entry after B2: an IP, or a CIDR (a full-length CIDR is a bare IP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// As Istio keeps it: the text as written, or the bare IP of a `/32` / `/128`.
    pub text: Box<str>,
    /// The network, host bits cleared (Envoy's prefix ranges ignore them); an IP is a
    /// full-length prefix.
    pub net: IpNet,
}

impl Address {
    /// B2. `None` for text that is neither an IP nor a CIDR (Istio drops it).
    pub fn parse(text: &str) -> Option<Address> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Some(Address {
                text: text.into(),
                net: IpNet::from(ip),
            });
        }
        let net: IpNet = text.parse().ok()?;
        if net.prefix_len() == net.max_prefix_len() {
            return Some(Address {
                text: net.addr().to_string().into(),
                net,
            });
        }
        Some(Address {
            text: text.into(),
            net: net.trunc(),
        })
    }

    /// Whether this is a range rather than a single IP.
    pub fn is_cidr(&self) -> bool {
        self.net.prefix_len() < self.net.max_prefix_len()
    }
}

/// `spec.exportTo`, kept as written and resolved for B9's visibility test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportTo {
    /// As written; empty when absent.
    pub written: Arc<[String]>,
    pub scope: Scope,
}

/// Who sees a service (B9).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `*`, or exportTo absent (the mesh `defaultServiceExportTo` is `*`).
    Public,
    /// `~`: no proxy sees it, not even its own namespace's.
    Nobody,
    /// Named namespaces, `.` resolved to the service's own; sorted, deduplicated.
    Namespaces(Arc<[Box<str>]>),
}

impl ExportTo {
    /// B9: `*` anywhere makes it public, else `~` hides it from everyone, else the named
    /// namespaces (`.` = `own`).
    pub fn new(written: &[String], own: &str) -> ExportTo {
        let scope = if written.is_empty() || written.iter().any(|e| e == "*") {
            Scope::Public
        } else if written.iter().any(|e| e == "~") {
            Scope::Nobody
        } else {
            let mut names: Vec<Box<str>> = written
                .iter()
                .map(|e| if e == "." { own.into() } else { e.as_str().into() })
                .collect();
            names.sort();
            names.dedup();
            Scope::Namespaces(names.into())
        };
        ExportTo {
            written: written.into(),
            scope,
        }
    }

    /// B9: visible to a proxy in `ns`.
    pub fn is_visible(&self, ns: &str) -> bool {
        match &self.scope {
            Scope::Public => true,
            Scope::Nobody => false,
            Scope::Namespaces(names) => names.iter().any(|n| **n == *ns),
        }
    }

    /// Istio's service list for a proxy in `ns` is: own-namespace private services, then
    /// services exported to `ns` by name, then public ones (`servicesExportedToNamespace`).
    /// Returns that group (0, 1, 2), or `None` when invisible.
    pub fn rank_for(&self, own: &str, ns: &str) -> Option<u8> {
        match &self.scope {
            Scope::Public => Some(2),
            Scope::Nobody => None,
            Scope::Namespaces(names) if names.iter().any(|n| **n == *ns) => Some(if own == ns { 0 } else { 1 }),
            Scope::Namespaces(_) => None,
        }
    }

    /// Whether some namespace sees both.
    pub fn overlaps(&self, other: &ExportTo) -> bool {
        match (&self.scope, &other.scope) {
            (Scope::Nobody, _) | (_, Scope::Nobody) => false,
            (Scope::Public, _) | (_, Scope::Public) => true,
            (Scope::Namespaces(a), Scope::Namespaces(b)) => a.iter().any(|n| b.contains(n)),
        }
    }

    /// The first namespace that sees both, for messages; `None` means "every namespace".
    pub fn common<'a>(&'a self, other: &'a ExportTo) -> Option<&'a str> {
        match (&self.scope, &other.scope) {
            (Scope::Namespaces(a), Scope::Namespaces(b)) => a.iter().find(|n| b.contains(n)).map(|n| &**n),
            (Scope::Namespaces(a), _) | (_, Scope::Namespaces(a)) => a.first().map(|n| &**n),
            _ => None,
        }
    }
}

/// One endpoint of one service port (Istio's `IstioEndpoint`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The workload, shared by the endpoints it yields on every port and host.
    pub workload: Arc<Workload>,
    /// B4: 0 for unix sockets; else the workload's `ports[<port name>]`, else `targetPort`,
    /// else the service port number.
    pub port: u32,
    /// The service port this endpoint serves (Istio's `ServicePortName`).
    pub port_name: Arc<str>,
}

impl Endpoint {
    /// The address as written (`unix://` kept), or the service host for B6.
    pub fn address(&self) -> &str {
        &self.workload.address
    }
}

/// A backend: an inline `spec.endpoints[]` entry, a selected WorkloadEntry or Pod, or the
/// service host itself (B6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// IP, hostname, or `unix://path`.
    pub address: Box<str>,
    /// Port name -> port (WorkloadEntry `ports`; Pod named TCP container ports); shared by
    /// the workloads that name the same ports.
    pub ports: Arc<BTreeMap<String, u32>>,
    /// WorkloadEntry: `spec.labels` overlaid by `metadata.labels` (B7); Pod: its labels.
    pub labels: Arc<Labels>,
    pub network: Box<str>,
    pub locality: Box<str>,
    /// LB weight; 0 = unset (weight 1).
    pub weight: u32,
    /// The Kubernetes service account name (not the SPIFFE id; see [`Workload::spiffe_id`]).
    pub service_account: Box<str>,
    /// B5: label `security.istio.io/tlsMode`, else `istio` with a service account, else
    /// `disabled`.
    pub tls_mode: TlsMode,
    /// Where it was declared.
    pub source: SourceId,
}

impl Workload {
    /// Whether the address is a `unix://` socket.
    pub fn is_unix(&self) -> bool {
        self.address.starts_with(UNIX_PREFIX)
    }

    /// B5: `spiffe://<trust domain>/ns/<service namespace>/sa/<sa>`, when a service account
    /// is set.
    pub fn spiffe_id(&self, trust_domain: &str, service_namespace: &str) -> Option<String> {
        (!self.service_account.is_empty()).then(|| {
            format!(
                "spiffe://{trust_domain}/ns/{service_namespace}/sa/{}",
                self.service_account
            )
        })
    }
}

/// Prefix of unix domain socket addresses.
pub const UNIX_PREFIX: &str = "unix://";

/// Istio's endpoint `tlsMode` (B5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsMode {
    Istio,
    Disabled,
}

/// Index of a [`Source`] in [`crate::Registry::sources`].
pub type SourceId = u32;

/// A resource that contributed to the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// `Kind namespace/name`.
    pub display_name: String,
    pub origin: Origin,
}

/// A conflict Istio resolves without telling anyone; names every resource involved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub message: String,
    /// `(Kind namespace/name, where)` of each resource involved, oldest first.
    pub resources: Vec<(String, Origin)>,
}

impl fmt::Display for Warning {
    /// `warning: MESSAGE`, then one indented line per resource: `Kind ns/name at FILE:LINE:COL`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "warning: {}", self.unlabelled())
    }
}

impl Warning {
    /// The message and its resources without the `warning: ` label, for a log line whose
    /// level already says it (`WARN warning: ...` says it twice).
    pub fn unlabelled(&self) -> impl fmt::Display + '_ {
        struct Unlabelled<'w>(&'w Warning);
        impl fmt::Display for Unlabelled<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0.message)?;
                for (name, origin) in &self.0.resources {
                    write!(f, "\n    {name} at {origin}")?;
                }
                Ok(())
            }
        }
        Unlabelled(self)
    }
}
