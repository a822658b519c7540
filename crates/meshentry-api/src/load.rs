//! Reading resources from files, directories and stdin, and validating them.
//!
//! Loading never stops at the first problem: every document is decoded and validated, and all
//! findings come back together in [`Loaded::findings`], sorted by file and position. Only I/O
//! problems (a missing file, an unreadable directory) are errors of the load itself.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::de::{DecodeCx, Issue, decode};
use crate::model::ObjectMeta;
use crate::resource::{
    Finding, GATEWAY_API_GROUPS, ISTIO_SERVED, Kind, KubeGateway, Origin, Resource, Spec, Treatment, is_istio_group,
    other_kind,
};
use crate::suggest::did_you_mean;
use crate::validate::{self, Report, Severity, common::is_dns1123_label};
use crate::yaml::{Item, Node, Pos, Value, parse_stream_each, read_stream};

/// API group of the Istio networking kinds.
pub const ISTIO_GROUP: &str = "networking.istio.io";
/// The versions that share one schema.
pub const ISTIO_VERSIONS: [&str; 3] = ["v1alpha3", "v1beta1", "v1"];

/// How decode issues about unknown fields start ([`crate::de`]): the only ones Istio's reader
/// passes over.
const UNKNOWN_FIELD: &str = "unknown field `";

/// How to read resources.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The namespace of resources without `metadata.namespace` (`--namespace`).
    pub default_namespace: String,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            default_namespace: "default".into(),
        }
    }
}

/// Istio's default cluster domain (`constants.DefaultClusterLocalDomain`).
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// The DNS domain of a cluster's Services: `NAME.NAMESPACE.svc.<domain>` (istiod's
/// `--domain`, Kubernetes' `--cluster-domain`), `cluster.local` unless told otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterDomain(Arc<str>);

impl Default for ClusterDomain {
    fn default() -> Self {
        ClusterDomain(DEFAULT_CLUSTER_DOMAIN.into())
    }
}

impl ClusterDomain {
    /// A domain of lower-case DNS labels (one trailing dot is dropped); the reason otherwise.
    pub fn new(domain: &str) -> Result<ClusterDomain, String> {
        let d = domain.strip_suffix('.').unwrap_or(domain);
        if d.is_empty() || d.len() > 253 || !d.split('.').all(is_dns1123_label) {
            return Err(format!(
                "invalid cluster domain {domain:?}: must be lower-case DNS labels separated by dots (e.g. cluster.local)"
            ));
        }
        Ok(ClusterDomain(d.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `.svc.<domain>`: how every Kubernetes Service host ends.
    pub fn service_suffix(&self) -> String {
        format!(".svc.{}", self.0)
    }

    /// Istio's `ServiceHostname`: `NAME.NAMESPACE.svc.<domain>`.
    pub fn service_host(&self, name: &str, namespace: &str) -> String {
        format!("{name}.{namespace}.svc.{}", self.0)
    }
}

impl std::fmt::Display for ClusterDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which Kubernetes Services the resources hold all of, so that analysis can tell a
/// `NAME.NS.svc.<domain>` host no Service has from one it has merely not read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ServicesKnown {
    /// No `kind: Service` was read: any cluster host may exist (`istioctl analyze
    /// --use-kube=false` knows only its default ingress gateway Service then).
    #[default]
    Unknown,
    /// `kind: Service` documents were read from files: they are taken to be the cluster's
    /// Services, as `istioctl analyze --use-kube=false` takes the files'.
    Files,
    /// Read from a cluster that serves Services (`--kubernetes`), in every namespace or in
    /// one: istioctl analysing a live cluster.
    Cluster { namespace: Option<String> },
}

impl ServicesKnown {
    /// Whether every Kubernetes Service of namespace `ns` was read.
    pub fn known_in(&self, ns: &str) -> bool {
        match self {
            ServicesKnown::Unknown => false,
            ServicesKnown::Files | ServicesKnown::Cluster { namespace: None } => true,
            ServicesKnown::Cluster { namespace: Some(n) } => n == ns,
        }
    }

    /// Whether the configuration is a live cluster's, where istioctl assumes no default
    /// ingress gateway (the cluster has its own, or none).
    pub fn is_live(&self) -> bool {
        matches!(self, ServicesKnown::Cluster { .. })
    }
}

/// A path that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The reason is in the message, and deliberately not a `source`: a chain printer
    /// (anyhow's `{:#}`) would print it a second time.
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
}

/// Everything read from a set of paths.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// Every resource decoded, valid or not, in load order.
    pub resources: Vec<Resource>,
    /// Errors and warnings, sorted by file (in load order) and position.
    pub findings: Vec<Finding>,
    /// What meshentry does with each kind it does not read (used, or ignored and why), one
    /// line per kind in order of first appearance, naming where it first appears; made by
    /// [`Loaded::finish`].
    pub notices: Vec<String>,
    /// The Kubernetes Gateway API Gateways, which VirtualService `gateways` may name.
    pub kube_gateways: Vec<KubeGateway>,
    /// The kinds behind [`Loaded::notices`].
    kind_notes: Vec<KindNote>,
    /// The mesh settings the resources are read under (`--mesh-config`; Istio's defaults
    /// unless [`crate::MeshConfig::apply`] set them).
    pub mesh: crate::mesh_config::MeshConfig,
    /// The cluster domain the resources are read under (`--cluster-domain`): the domain of
    /// Kubernetes Service hosts and of expanded short names.
    pub cluster_domain: ClusterDomain,
    /// Whose Kubernetes Services were read: set by the loader for `kind: Service` documents
    /// and by [`Loaded::read_from_cluster`].
    pub services_known: ServicesKnown,
    files: Vec<Arc<str>>,
    /// The text of each stream that holds a kind checks across resources report on, by file
    /// name, so that [`Loaded::place`] can put their findings on a field. Streams of other
    /// kinds (the bulk of large configurations: ServiceEntries) are not kept.
    texts: HashMap<Arc<str>, Arc<str>>,
    /// [`Resource::order`] of the resources Istio's file reader would not keep (see
    /// [`Loaded::analyzable`]).
    unreadable: HashSet<usize>,
}

/// A kind meshentry does not read, as seen so far.
#[derive(Clone, Debug)]
struct KindNote {
    group: String,
    kind: String,
    /// `None` for a kind meshentry does not know.
    treatment: Option<Treatment>,
    /// How the group is shown: `core` for Kubernetes' core group.
    shown_group: String,
    count: usize,
    first: Origin,
}

impl KindNote {
    fn line(&self) -> String {
        let what = match self.treatment {
            Some(t) => t.to_string(),
            None => "ignored: not a kind meshentry knows".to_string(),
        };
        let mut line = format!("{}: note: {} ({}): {what}", self.first, self.kind, self.shown_group);
        if self.count > 1 {
            line.push_str(&format!(" ({} documents of this kind; this is the first)", self.count));
        }
        line
    }
}

/// The kinds whose streams [`Loaded`] keeps, so that checks spanning resources can place their
/// findings on a field.
const LOCATED_KINDS: [Kind; 4] = [
    Kind::VirtualService,
    Kind::DestinationRule,
    Kind::Gateway,
    Kind::Sidecar,
];

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    /// The Gateway API Gateway `namespace/name`, if one was loaded.
    pub fn kube_gateway(&self, namespace: &str, name: &str) -> Option<&KubeGateway> {
        self.kube_gateways
            .iter()
            .find(|g| g.namespace == namespace && g.name == name)
    }

    /// Notes that the resources come from a cluster (in `namespace`, or all), before its
    /// objects are added: when it serves Kubernetes Services (`services_served`; a bare
    /// apiextensions-apiserver serves none), they are all known, as `istioctl analyze` knows a
    /// live cluster's.
    pub fn read_from_cluster(&mut self, services_served: bool, namespace: Option<&str>) {
        if !services_served {
            return;
        }
        self.services_known = match (namespace, &self.services_known) {
            (None, _) => ServicesKnown::Cluster { namespace: None },
            // Every Service was already read from files: reading one namespace adds nothing.
            (Some(_), ServicesKnown::Cluster { namespace: None }) => return,
            (Some(ns), _) => ServicesKnown::Cluster {
                namespace: Some(ns.to_string()),
            },
        };
    }

    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.severity == Severity::Error)
    }

    /// The resources that passed validation.
    pub fn valid(&self) -> impl Iterator<Item = &Resource> {
        self.resources.iter().filter(|r| r.valid)
    }

    /// The resources `istioctl analyze` would analyze: every one Istio's file reader keeps,
    /// valid or not. It drops a document it cannot decode (a value of the wrong type, an unknown
    /// enum value, a duplicate key) but not one with unknown fields (Istio's JSON decoding
    /// allows them); of two resources with one kind and name, the first is kept.
    pub fn analyzable(&self) -> impl Iterator<Item = &Resource> {
        self.resources.iter().filter(|r| !self.unreadable.contains(&r.order))
    }

    /// Sorts findings and adds the checks that span resources (duplicate names). Call once
    /// after the last `add_*`.
    pub fn finish(&mut self) {
        let mut seen: HashMap<(Kind, &str, &str), &Origin> = HashMap::new();
        let mut dups = Vec::new();
        for r in &self.resources {
            if r.meta.name.is_empty() {
                continue;
            }
            match seen.get(&(r.kind(), r.namespace.as_str(), r.meta.name.as_str())) {
                Some(first) => dups.push((
                    r.order,
                    finding_for(
                        r,
                        "metadata.name",
                        r.origin.pos,
                        Severity::Error,
                        format!(
                            "duplicate {} {}/{}: first defined at {first}",
                            r.kind(),
                            r.namespace,
                            r.meta.name
                        ),
                    ),
                )),
                None => {
                    seen.insert((r.kind(), &r.namespace, &r.meta.name), &r.origin);
                }
            }
        }
        for (order, f) in dups {
            self.findings.push(f);
            self.resources[order].valid = false;
            self.unreadable.insert(order);
        }
        self.notices = self.kind_notes.iter().map(KindNote::line).collect();
        self.sort_findings();
    }

    /// Adds findings of checks that span resources (made with [`Loaded::finding`]): places
    /// them on their fields ([`Loaded::place`]), then keeps [`Loaded::findings`] sorted by file
    /// and position; at one position, earlier findings stay first.
    pub fn add_findings(&mut self, findings: impl IntoIterator<Item = Finding>) {
        let mut findings: Vec<Finding> = findings.into_iter().collect();
        self.place(&mut findings);
        self.findings.extend(findings);
        self.sort_findings();
    }

    fn sort_findings(&mut self) {
        let rank: HashMap<&str, usize> = self.files.iter().enumerate().map(|(i, f)| (&**f, i)).collect();
        self.findings.sort_by_key(|f| {
            (
                rank.get(f.file.as_str()).copied().unwrap_or(usize::MAX),
                f.line,
                f.column,
            )
        });
    }

    /// A finding about field `path` of resource `r`, at the start of the resource's document
    /// until [`Loaded::place`] (or [`Loaded::add_findings`]) puts it on the field.
    pub fn finding(&self, r: &Resource, path: &str, severity: Severity, message: String) -> Finding {
        finding_for(r, path, r.origin.pos, severity, message)
    }

    /// Moves findings made with [`Loaded::finding`] from their document onto their field, in
    /// the streams that hold a VirtualService, DestinationRule, Gateway or Sidecar (the only
    /// ones kept): each is parsed again, once, and only when some finding is about it. Other
    /// findings stay where they are.
    pub fn place(&self, findings: &mut [Finding]) {
        // File -> document position -> the findings about that document.
        let mut wanted: HashMap<&str, HashMap<Pos, Vec<usize>>> = HashMap::new();
        for (i, f) in findings.iter().enumerate() {
            if !f.kind.is_empty() && !f.field.is_empty() {
                let pos = Pos {
                    line: f.line,
                    column: f.column,
                };
                wanted
                    .entry(f.file.as_str())
                    .or_default()
                    .entry(pos)
                    .or_default()
                    .push(i);
            }
        }
        let mut moves: Vec<(usize, Pos)> = Vec::new();
        for (file, docs) in &wanted {
            let Some(text) = self.texts.get(*file) else { continue };
            let text = text.strip_prefix('\u{feff}').unwrap_or(text);
            // The stream parsed before, so it parses again; a failure only leaves positions.
            let _ = parse_stream_each(text, |doc| place_in(&doc, docs, findings, &mut moves, 0));
        }
        for (i, pos) in moves {
            findings[i].line = pos.line;
            findings[i].column = pos.column;
        }
    }

    /// Reads one file, or every `.yaml`, `.yml` and `.json` file below a directory (sorted,
    /// recursive); `-` reads stdin.
    pub fn add_path(&mut self, path: &Path, opts: &LoadOptions) -> Result<(), LoadError> {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|error| LoadError::Io {
                    path: "<stdin>".into(),
                    error,
                })?;
            self.add_str("<stdin>", &text, opts);
            return Ok(());
        }
        let io = |error| LoadError::Io {
            path: path.display().to_string(),
            error,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.is_dir() {
            let mut files = Vec::new();
            collect_dir(path, &mut files)?;
            files.sort();
            for f in files {
                self.add_file(&f, opts)?;
            }
            Ok(())
        } else {
            self.add_file(path, opts)
        }
    }

    fn add_file(&mut self, path: &Path, opts: &LoadOptions) -> Result<(), LoadError> {
        let bytes = std::fs::read(path).map_err(|error| LoadError::Io {
            path: path.display().to_string(),
            error,
        })?;
        let name = path.display().to_string();
        match String::from_utf8(bytes) {
            Ok(text) => self.add_str(&name, &text, opts),
            Err(e) => {
                let file: Arc<str> = name.into();
                self.files.push(file.clone());
                self.findings.push(plain_finding(
                    &file,
                    Pos { line: 1, column: 1 },
                    format!("file is not UTF-8 text ({e})"),
                ));
            }
        }
        Ok(())
    }

    /// Reads a YAML or JSON stream; `file` names it in findings.
    pub fn add_str(&mut self, file: &str, text: &str, opts: &LoadOptions) {
        let file: Arc<str> = file.into();
        self.files.push(file.clone());
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let first = self.resources.len();
        read_stream(text, |item| match item {
            Item::Document(doc) => self.add_document(&file, &doc, opts, 0),
            Item::Error(e) => self
                .findings
                .push(plain_finding(&file, e.pos, format!("invalid YAML: {}", e.message))),
            Item::Warning(w) => self.findings.push(Finding {
                severity: Severity::Warning,
                ..plain_finding(&file, w.pos, w.message)
            }),
        });
        if self.resources[first..]
            .iter()
            .any(|r| LOCATED_KINDS.contains(&r.kind()))
        {
            self.texts.insert(file.clone(), text.into());
        }
    }

    fn add_document(&mut self, file: &Arc<str>, doc: &Node, opts: &LoadOptions, depth: usize) {
        let map = match &doc.value {
            Value::Null => return,
            Value::Map(m) => m,
            _ => {
                self.findings.push(plain_finding(
                    file,
                    doc.pos,
                    format!("a resource must be an object, found {}", doc.kind_name()),
                ));
                return;
            }
        };
        let api_version = text_of(doc, "apiVersion");
        let kind_text = text_of(doc, "kind");
        if kind_text.is_empty() {
            self.findings
                .push(located(file, doc, "kind", "", "", "kind is required"));
            return;
        }
        if kind_text == "List" || kind_text.ends_with("List") && doc.get("items").is_some() {
            if let Some(items) = doc.get("items") {
                match &items.value {
                    Value::Seq(items) if depth < 4 => {
                        for item in items {
                            self.add_document(file, item, opts, depth + 1);
                        }
                    }
                    Value::Null => {}
                    _ => self.findings.push(located(
                        file,
                        doc,
                        "items",
                        kind_text,
                        "",
                        "items must be a list of resources",
                    )),
                }
            }
            return;
        }
        let (group, version) = match api_version.rsplit_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let kind = match self.classify(file, doc, group, version, kind_text, opts) {
            Some(k) => k,
            None => return,
        };
        let api_ok = match kind.kube_api_version() {
            None => group == ISTIO_GROUP && ISTIO_VERSIONS.contains(&version),
            Some(v) => api_version == v,
        };
        if !api_ok {
            let want = match kind.kube_api_version() {
                None => ISTIO_VERSIONS.map(|v| format!("{ISTIO_GROUP}/{v}")).join(", "),
                Some(v) => v.to_string(),
            };
            self.findings.push(located(
                file,
                doc,
                "apiVersion",
                kind.as_str(),
                &opts.default_namespace,
                unsupported_api_version(api_version, kind.as_str(), &want),
            ));
            return;
        }

        let cx = DecodeCx::new(kind.is_istio());
        let mut top_level = Vec::new();
        for (key, _) in map {
            let Some(k) = key.as_str() else { continue };
            let allowed: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];
            if !allowed.contains(&k) && kind.is_istio() {
                let hint = did_you_mean(k, allowed.iter().copied())
                    .map(|s| format!(", did you mean `{s}`?"))
                    .unwrap_or_default();
                top_level.push(Issue {
                    pos: key.pos,
                    path: k.to_string(),
                    message: format!("unknown field `{k}`{hint}"),
                });
            }
        }
        let meta: ObjectMeta = match doc.get("metadata") {
            Some(m) => decode(m, "metadata", &cx),
            None => ObjectMeta::default(),
        };
        let spec = match kind {
            Kind::ServiceEntry => {
                let mut se: crate::model::ServiceEntry = decode_spec(doc, &cx);
                // Written by istiod, not users: read leniently and never reported.
                if let Some(status) = doc.get("status") {
                    se.status = decode(status, "status", &DecodeCx::new(false));
                }
                Spec::ServiceEntry(se)
            }
            Kind::WorkloadEntry => Spec::WorkloadEntry(decode_spec(doc, &cx)),
            Kind::WorkloadGroup => Spec::WorkloadGroup(decode_spec(doc, &cx)),
            Kind::DestinationRule => Spec::DestinationRule(decode_spec(doc, &cx)),
            Kind::VirtualService => Spec::VirtualService(decode_spec(doc, &cx)),
            Kind::Gateway => Spec::Gateway(decode_spec(doc, &cx)),
            Kind::Sidecar => Spec::Sidecar(decode_spec(doc, &cx)),
            Kind::Pod => Spec::Pod {
                spec: decode_spec(doc, &cx),
                status: doc.get("status").map(|s| decode(s, "status", &cx)).unwrap_or_default(),
            },
            Kind::Namespace => Spec::Namespace,
            Kind::Service => Spec::Service(crate::model::KubernetesService {
                spec: decode_spec(doc, &cx),
                export_to: meta
                    .annotations
                    .get(crate::model::EXPORT_TO_ANNOTATION)
                    .filter(|a| !a.is_empty())
                    .map(|a| a.split(',').map(|ns| ns.trim().to_string()).collect())
                    .unwrap_or_default(),
            }),
            // An EndpointSlice has no `spec`: its fields are at the top.
            Kind::EndpointSlice => {
                let field = |key: &str| doc.get(key);
                Spec::EndpointSlice(crate::model::EndpointSlice {
                    address_type: field("addressType")
                        .map(|n| decode(n, "addressType", &cx))
                        .unwrap_or_default(),
                    endpoints: field("endpoints")
                        .map(|n| decode(n, "endpoints", &cx))
                        .unwrap_or_default(),
                    ports: field("ports").map(|n| decode(n, "ports", &cx)).unwrap_or_default(),
                })
            }
        };
        if kind == Kind::Service && self.services_known == ServicesKnown::Unknown {
            self.services_known = ServicesKnown::Files;
        }
        let mut issues = top_level;
        issues.extend(cx.into_issues());
        let namespace = match kind {
            Kind::Namespace => String::new(),
            _ => meta
                .namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| opts.default_namespace.clone()),
        };
        let mut resource = Resource {
            api_version: api_version.to_string(),
            meta,
            namespace,
            spec,
            origin: Origin {
                file: file.clone(),
                pos: doc.pos,
            },
            order: self.resources.len(),
            valid: true,
        };

        let mut report = Report::default();
        validate_meta(&resource, &mut report);
        // `template: {}` is a template; no template, or `null`, is none (Istio's nil).
        let template_given = doc
            .get("spec")
            .and_then(|s| s.get("template"))
            .is_some_and(|t| t.value != Value::Null);
        validate_with(&resource, template_given, &mut report);

        let mut valid = true;
        for issue in &issues {
            valid = false;
            self.findings.push(finding_for(
                &resource,
                &issue.path,
                issue.pos,
                Severity::Error,
                issue.message.clone(),
            ));
        }
        for p in report.problems {
            if covered_by_decode_issue(&p.path, &issues) {
                continue;
            }
            if p.severity == Severity::Error {
                valid = false;
            }
            let pos = doc.locate(&p.path);
            self.findings
                .push(finding_for(&resource, &p.path, pos, p.severity, p.message));
        }
        resource.valid = valid;
        if issues.iter().any(|i| !i.message.starts_with(UNKNOWN_FIELD)) {
            self.unreadable.insert(resource.order);
        }
        self.resources.push(resource);
    }
}

impl Loaded {
    /// Decides what a document of `kind_text` in API `group` is: `Some` for a kind meshentry
    /// reads (the caller checks its apiVersion), `None` when it was dealt with here. In Istio's
    /// own groups, a kind or version Istio's CRDs do not serve is an error, as Istio's API
    /// server refuses it; any other kind is noted once per run, with what meshentry does
    /// with it, and never fails the file.
    fn classify(
        &mut self,
        file: &Arc<str>,
        doc: &Node,
        group: &str,
        version: &str,
        kind_text: &str,
        opts: &LoadOptions,
    ) -> Option<Kind> {
        let ours = Kind::parse(kind_text);
        if is_istio_group(group) {
            let in_group = || ISTIO_SERVED.iter().filter(|(g, _, _)| *g == group).map(|(_, k, _)| *k);
            let Some((_, _, versions)) = ISTIO_SERVED.iter().find(|(g, k, _)| *g == group && *k == kind_text) else {
                let msg = match did_you_mean(kind_text, in_group()) {
                    Some(s) => format!("unknown kind `{kind_text}`, did you mean `{s}`?"),
                    None => format!(
                        "unknown kind `{kind_text}`: Istio's {group} API has no such kind (it has {})",
                        in_group().collect::<Vec<_>>().join(", ")
                    ),
                };
                self.findings.push(located(file, doc, "kind", "", "", msg));
                return None;
            };
            if group == ISTIO_GROUP && ours.is_some() {
                return ours;
            }
            if !versions.contains(&version) {
                let want = versions
                    .iter()
                    .map(|v| format!("{group}/{v}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let api_version = text_of(doc, "apiVersion");
                self.findings.push(located(
                    file,
                    doc,
                    "apiVersion",
                    kind_text,
                    &opts.default_namespace,
                    unsupported_api_version(api_version, kind_text, &want),
                ));
                return None;
            }
        } else if let Some(k) = ours {
            // A kind of ours outside its group is a mistake in the apiVersion when the group
            // is missing or looks like Istio's; in another API group it is that group's kind.
            let foreign =
                group.contains('.') && !group.contains("istio") && did_you_mean(group, [ISTIO_GROUP]).is_none();
            let read = match k.kube_group() {
                None => !foreign,
                Some(g) => group == g,
            };
            if read {
                return Some(k);
            }
        }
        if kind_text == "Gateway" && group == GATEWAY_API_GROUPS[0] {
            self.add_kube_gateway(file, doc, opts);
        }
        let shown_group = match (group, version) {
            (_, "") => "no apiVersion".to_string(),
            ("", _) => "core".to_string(),
            (g, _) => g.to_string(),
        };
        match self
            .kind_notes
            .iter_mut()
            .find(|n| n.group == group && n.kind == kind_text)
        {
            Some(n) => n.count += 1,
            None => self.kind_notes.push(KindNote {
                group: group.to_string(),
                kind: kind_text.to_string(),
                treatment: other_kind(group, kind_text).map(|k| k.treatment),
                shown_group,
                count: 1,
                first: Origin {
                    file: file.clone(),
                    pos: doc.pos,
                },
            }),
        }
        None
    }

    fn add_kube_gateway(&mut self, file: &Arc<str>, doc: &Node, opts: &LoadOptions) {
        let meta = doc.get("metadata");
        let meta_text = |key: &str| meta.and_then(|m| m.get(key)).and_then(Node::as_str).unwrap_or("");
        let name = meta_text("name");
        if name.is_empty() {
            return;
        }
        let namespace = match meta_text("namespace") {
            "" => opts.default_namespace.as_str(),
            ns => ns,
        };
        let hostnames = match doc.get("spec").and_then(|s| s.get("listeners")) {
            Some(Node {
                value: Value::Seq(listeners),
                ..
            }) => listeners
                .iter()
                .map(|l| {
                    l.get("hostname")
                        .and_then(Node::as_str)
                        .filter(|h| !h.is_empty())
                        .map(str::to_string)
                })
                .collect(),
            _ => Vec::new(),
        };
        self.kube_gateways.push(KubeGateway {
            namespace: namespace.to_string(),
            name: name.to_string(),
            hostnames,
            origin: Origin {
                file: file.clone(),
                pos: doc.pos,
            },
        });
    }
}

fn text_of<'a>(doc: &'a Node, key: &str) -> &'a str {
    doc.get(key).and_then(Node::as_str).unwrap_or("")
}

fn unsupported_api_version(api_version: &str, kind: &str, want: &str) -> String {
    if api_version.is_empty() {
        format!("apiVersion is required (one of {want})")
    } else {
        format!("unsupported apiVersion {api_version:?} for {kind} (expected one of {want})")
    }
}

/// [`Loaded::place`] for one document, and the items of a `List` document, as
/// [`Loaded::add_document`] reads them.
fn place_in(
    doc: &Node,
    docs: &HashMap<Pos, Vec<usize>>,
    findings: &[Finding],
    moves: &mut Vec<(usize, Pos)>,
    depth: usize,
) {
    if let Some(ids) = docs.get(&doc.pos) {
        moves.extend(ids.iter().map(|&i| (i, doc.locate(&findings[i].field))));
    }
    if depth < 4
        && let Some(Node {
            value: Value::Seq(items),
            ..
        }) = doc.get("items")
    {
        for item in items {
            place_in(item, docs, findings, moves, depth + 1);
        }
    }
}

fn decode_spec<T: DeserializeOwned + Default>(doc: &Node, cx: &DecodeCx) -> T {
    match doc.get("spec") {
        Some(s) => decode(s, "spec", cx),
        None => T::default(),
    }
}

fn validate_meta(r: &Resource, report: &mut Report) {
    if r.meta.name.is_empty() {
        report.error("metadata.name", "name is required");
    } else if !is_dns1123_subdomain(&r.meta.name) {
        report.error(
            "metadata.name",
            format!("invalid name {:?}: must be a lowercase RFC 1123 subdomain", r.meta.name),
        );
    }
    if r.kind() != Kind::Namespace && !is_dns1123_label(&r.namespace) {
        report.error(
            "metadata.namespace",
            format!(
                "invalid namespace {:?}: must be a lowercase RFC 1123 label",
                r.namespace
            ),
        );
    }
}

fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Runs the kind's validator. A WorkloadGroup is taken to have a `template`: only the
/// document can tell (see [`Loaded::add_str`], which checks).
pub fn validate_resource(r: &Resource, report: &mut Report) {
    validate_with(r, true, report);
}

fn validate_with(r: &Resource, template_given: bool, report: &mut Report) {
    let ns = r.namespace.as_str();
    match &r.spec {
        Spec::ServiceEntry(s) => validate::validate_service_entry(s, ns, &r.meta.labels, report),
        Spec::WorkloadEntry(s) => validate::validate_workload_entry(s, report),
        Spec::WorkloadGroup(s) => validate::validate_workload_group(s, template_given, report),
        Spec::DestinationRule(s) => validate::validate_destination_rule(s, ns, report),
        Spec::VirtualService(s) => validate::validate_virtual_service(s, ns, report),
        Spec::Gateway(s) => validate::validate_gateway(s, &r.meta.name, report),
        Spec::Sidecar(s) => validate::validate_sidecar(s, ns, report),
        Spec::Service(s) => validate::kube::validate_service(&s.spec, report),
        Spec::EndpointSlice(s) => validate::kube::validate_endpoint_slice(s, &r.meta.labels, report),
        Spec::Pod { .. } | Spec::Namespace => {}
    }
    for (path, note) in validate::not_applied::not_applied(&r.spec) {
        report.info(path, note);
    }
}

/// A semantic finding on a field that already failed to decode would only repeat it.
fn covered_by_decode_issue(path: &str, issues: &[Issue]) -> bool {
    issues.iter().any(|i| {
        path == i.path
            || path
                .strip_prefix(i.path.as_str())
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    })
}

fn finding_for(r: &Resource, field: &str, pos: Pos, severity: Severity, message: String) -> Finding {
    Finding {
        file: r.origin.file.to_string(),
        line: pos.line,
        column: pos.column,
        kind: r.kind().to_string(),
        namespace: r.namespace.clone(),
        name: r.meta.name.clone(),
        field: field.to_string(),
        severity,
        code: String::new(),
        message,
    }
}

fn plain_finding(file: &Arc<str>, pos: Pos, message: String) -> Finding {
    Finding {
        file: file.to_string(),
        line: pos.line,
        column: pos.column,
        kind: String::new(),
        namespace: String::new(),
        name: String::new(),
        field: String::new(),
        severity: Severity::Error,
        code: String::new(),
        message,
    }
}

/// A finding about a top-level field of a document whose resource could not be built.
/// `default_ns` is empty when the kind is unknown: there is no resource to name yet.
fn located(
    file: &Arc<str>,
    doc: &Node,
    field: &str,
    kind: &str,
    default_ns: &str,
    message: impl Into<String>,
) -> Finding {
    let name = doc
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Node::as_str)
        .unwrap_or("");
    let namespace = doc
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Node::as_str)
        .unwrap_or("");
    let namespace = if namespace.is_empty() { default_ns } else { namespace };
    Finding {
        file: file.to_string(),
        line: doc.locate(field).line,
        column: doc.locate(field).column,
        kind: kind.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
        field: field.to_string(),
        severity: Severity::Error,
        code: String::new(),
        message: message.into(),
    }
}

fn collect_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let io = |error| LoadError::Io {
        path: dir.display().to_string(),
        error,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        let ft = entry.file_type().map_err(io)?;
        if ft.is_dir() || (ft.is_symlink() && path.is_dir()) {
            // Kubernetes ConfigMap mounts keep the real files in `..data`-style hidden dirs
            // next to symlinks; reading both would load everything twice.
            if !entry.file_name().to_string_lossy().starts_with('.') {
                collect_dir(&path, out)?;
            }
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
            out.push(path);
        }
    }
    Ok(())
}

/// The files [`load_paths`] reads for `paths`, in the order it reads them (stdin, `-`, is left
/// out), so that a caller can tell whether a configuration changed before loading it again.
pub fn source_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut out = Vec::new();
    for path in paths.iter().filter(|p| p.as_os_str() != "-") {
        let meta = std::fs::metadata(path).map_err(|error| LoadError::Io {
            path: path.display().to_string(),
            error,
        })?;
        if meta.is_dir() {
            let mut files = Vec::new();
            collect_dir(path, &mut files)?;
            files.sort();
            out.extend(files);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// Loads and validates `paths` in order.
pub fn load_paths(paths: &[PathBuf], opts: &LoadOptions) -> Result<Loaded, LoadError> {
    let mut loaded = Loaded::default();
    for p in paths {
        loaded.add_path(p, opts)?;
    }
    loaded.finish();
    Ok(loaded)
}

/// Loads and validates one stream; for tests and stdin.
pub fn load_str(file: &str, text: &str, opts: &LoadOptions) -> Loaded {
    let mut loaded = Loaded::default();
    loaded.add_str(file, text, opts);
    loaded.finish();
    loaded
}
