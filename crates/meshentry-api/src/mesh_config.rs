//! Istio's mesh-wide settings (`MeshConfig`, istio.io/api mesh/v1alpha1), read from the file
//! `--mesh-config` names: either the bare MeshConfig object, or the `istio` ConfigMap whose
//! `data.mesh` holds it as YAML text (as istiod reads it).
//!
//! MeshConfig has well over a hundred fields; meshentry applies the ones that change what it
//! computes and accepts the rest, with a note for each field it does not apply. A value of an
//! applied field that Istio could not use is an error placed on its file, line and field.
//! Without a file every field has Istio's default, so behaviour is exactly as before.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::de::{DecodeCx, decode};
use crate::load::Loaded;
use crate::model::OutboundTrafficPolicyMode;
use crate::resource::{Finding, Spec};
use crate::validate::Severity;
use crate::validate::common::is_dns1123_label;
use crate::yaml::{Item, Node, Pos, Value, read_stream};

/// Istio's default root namespace.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// The MeshConfig fields meshentry applies, with Istio's defaults when absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshConfig {
    /// The file it was read from; `None` for Istio's defaults.
    pub source: Option<Arc<str>>,
    /// `outboundTrafficPolicy.mode`: the policy of proxies no Sidecar sets one for (Istio's
    /// default ALLOW_ANY).
    pub outbound_policy: OutboundTrafficPolicyMode,
    /// `trustDomain`: the SPIFFE trust domain of mesh identities (`cluster.local`).
    pub trust_domain: String,
    /// `rootNamespace`: whose Sidecar is every namespace's default and whose DestinationRules
    /// apply to every namespace last (`istio-system`).
    pub root_namespace: String,
    /// `defaultServiceExportTo`: the exportTo of a ServiceEntry that has none (empty: `*`).
    pub default_service_export_to: Vec<String>,
    /// `defaultVirtualServiceExportTo` (empty: `*`).
    pub default_virtual_service_export_to: Vec<String>,
    /// `defaultDestinationRuleExportTo` (empty: `*`).
    pub default_destination_rule_export_to: Vec<String>,
    /// `enableAutoMtls`: mesh-internal services whose endpoints all have a sidecar get mutual
    /// TLS without a DestinationRule (default true).
    pub enable_auto_mtls: bool,
    /// `defaultConfig.proxyMetadata.ISTIO_META_DNS_CAPTURE`: proxies answer DNS for the
    /// registry's hosts (default false).
    pub dns_capture: bool,
    /// `defaultConfig.proxyMetadata.ISTIO_META_DNS_AUTO_ALLOCATE` (or
    /// `PILOT_ENABLE_IP_AUTOALLOCATE` there): ServiceEntries without addresses get one, which
    /// proxies capturing DNS hand out.
    pub dns_auto_allocate: bool,
    /// Whether ServiceEntries without addresses are allocated one (istiod's
    /// `PILOT_ENABLE_IP_AUTOALLOCATE`, default true; `false` in
    /// `defaultConfig.proxyMetadata` switches meshentry's allocation off).
    pub ip_autoallocate: bool,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            source: None,
            outbound_policy: OutboundTrafficPolicyMode::AllowAny,
            trust_domain: "cluster.local".into(),
            root_namespace: DEFAULT_ROOT_NAMESPACE.into(),
            default_service_export_to: Vec::new(),
            default_virtual_service_export_to: Vec::new(),
            default_destination_rule_export_to: Vec::new(),
            enable_auto_mtls: true,
            dns_capture: false,
            dns_auto_allocate: false,
            ip_autoallocate: true,
        }
    }
}

/// The fields meshentry reads, as written; anything else is accepted and noted.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Raw {
    outbound_traffic_policy: Option<RawOutbound>,
    trust_domain: Option<String>,
    root_namespace: Option<String>,
    default_service_export_to: Option<Vec<String>>,
    default_virtual_service_export_to: Option<Vec<String>>,
    default_destination_rule_export_to: Option<Vec<String>>,
    enable_auto_mtls: Option<bool>,
    default_config: Option<RawProxyConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawOutbound {
    mode: Option<OutboundTrafficPolicyMode>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct RawProxyConfig {
    proxy_metadata: BTreeMap<String, String>,
}

/// The top-level fields applied; the rest of MeshConfig is noted as not applied.
const APPLIED: [&str; 8] = [
    "outboundTrafficPolicy",
    "trustDomain",
    "rootNamespace",
    "defaultServiceExportTo",
    "defaultVirtualServiceExportTo",
    "defaultDestinationRuleExportTo",
    "enableAutoMtls",
    "defaultConfig",
];

/// The proxyMetadata switches applied.
const DNS_CAPTURE: &str = "ISTIO_META_DNS_CAPTURE";
const DNS_AUTO_ALLOCATE: &str = "ISTIO_META_DNS_AUTO_ALLOCATE";
const IP_AUTOALLOCATE: &str = "PILOT_ENABLE_IP_AUTOALLOCATE";

/// Where the MeshConfig object sits in the file, for placing findings.
struct Frame<'a> {
    file: &'a str,
    /// `ConfigMap namespace/name` when read from a ConfigMap.
    configmap: Option<(String, String)>,
    /// Prefix of field paths (`data.mesh.` in a ConfigMap).
    prefix: &'static str,
    /// Maps a position in the MeshConfig text to the file: lines move down by `line_offset`;
    /// columns move right by `first_column_offset` on the text's first line and by
    /// `column_offset` on the others (a `data.mesh: |` block is indented on every line).
    line_offset: u32,
    first_column_offset: u32,
    column_offset: u32,
}

impl Frame<'_> {
    fn finding(&self, pos: Pos, field: &str, severity: Severity, message: String) -> Finding {
        let (kind, namespace, name) = match &self.configmap {
            Some((ns, name)) => ("ConfigMap".to_string(), ns.clone(), name.clone()),
            None => (String::new(), String::new(), String::new()),
        };
        Finding {
            file: self.file.to_string(),
            line: pos.line + self.line_offset,
            column: pos.column
                + if pos.line == 1 {
                    self.first_column_offset
                } else {
                    self.column_offset
                },
            kind,
            namespace,
            name,
            field: if field.is_empty() {
                self.prefix.trim_end_matches('.').to_string()
            } else {
                format!("{}{field}", self.prefix)
            },
            severity,
            code: String::new(),
            message,
        }
    }
}

impl MeshConfig {
    /// Reads a MeshConfig file: the bare object or a ConfigMap with `data.mesh`. Returns the
    /// config (Istio's defaults where the file is silent or wrong) and its findings: errors for
    /// values Istio could not use, notes for fields meshentry does not apply.
    pub fn parse(file: &str, text: &str) -> (MeshConfig, Vec<Finding>) {
        let mut findings = Vec::new();
        let mut first: Option<Node> = None;
        let bare = Frame {
            file,
            configmap: None,
            prefix: "",
            line_offset: 0,
            first_column_offset: 0,
            column_offset: 0,
        };
        read_stream(text, |item| match item {
            Item::Document(doc) if first.is_none() && doc.value != Value::Null => first = Some(doc),
            Item::Document(_) => {}
            Item::Error(e) => {
                findings.push(bare.finding(e.pos, "", Severity::Error, format!("invalid YAML: {}", e.message)))
            }
            Item::Warning(w) => findings.push(bare.finding(w.pos, "", Severity::Warning, w.message)),
        });
        let mut mesh = MeshConfig {
            source: Some(file.into()),
            ..MeshConfig::default()
        };
        // An empty file is an empty MeshConfig: every default, as istiod reads it.
        let Some(doc) = first else { return (mesh, findings) };
        if doc.get("kind").and_then(Node::as_str) == Some("ConfigMap") {
            let meta = doc.get("metadata");
            let field = |k: &str| {
                meta.and_then(|m| m.get(k))
                    .and_then(Node::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            let cm = Frame {
                file,
                configmap: Some((field("namespace"), field("name"))),
                prefix: "",
                line_offset: 0,
                first_column_offset: 0,
                column_offset: 0,
            };
            let Some(value) = doc.get("data").and_then(|d| d.get("mesh")) else {
                findings.push(cm.finding(
                    doc.pos,
                    "data.mesh",
                    Severity::Error,
                    "a MeshConfig ConfigMap holds the MeshConfig as YAML text in data.mesh (as the `istio` ConfigMap does); this one has no data.mesh".into(),
                ));
                return (mesh, findings);
            };
            let Some(inner) = value.as_str() else {
                findings.push(cm.finding(
                    value.pos,
                    "data.mesh",
                    Severity::Error,
                    format!("expected the MeshConfig as YAML text, found {}", value.kind_name()),
                ));
                return (mesh, findings);
            };
            // A block scalar (`mesh: |`) is placed at its first content line, and every line of it
            // is indented alike; a quoted one is placed at its opening quote, and only its first
            // line can be mapped exactly.
            let quoted = text
                .lines()
                .nth(value.pos.line.saturating_sub(1) as usize)
                .and_then(|l| l.chars().nth(value.pos.column.saturating_sub(1) as usize))
                .is_some_and(|c| c == '"' || c == '\'');
            let indent = value.pos.column - 1;
            let frame = Frame {
                file,
                configmap: cm.configmap,
                prefix: "data.mesh.",
                line_offset: value.pos.line - 1,
                first_column_offset: if quoted { indent + 1 } else { indent },
                column_offset: if quoted { 0 } else { indent },
            };
            let mut inner_doc = None;
            read_stream(inner, |item| match item {
                Item::Document(d) if inner_doc.is_none() => inner_doc = Some(d),
                Item::Document(_) => {}
                Item::Error(e) => {
                    findings.push(frame.finding(e.pos, "", Severity::Error, format!("invalid YAML: {}", e.message)))
                }
                Item::Warning(w) => findings.push(frame.finding(w.pos, "", Severity::Warning, w.message)),
            });
            if let Some(d) = inner_doc {
                mesh.read(&d, &frame, &mut findings);
            }
        } else {
            mesh.read(&doc, &bare, &mut findings);
        }
        (mesh, findings)
    }

    /// Reads the MeshConfig object `doc`.
    fn read(&mut self, doc: &Node, frame: &Frame<'_>, findings: &mut Vec<Finding>) {
        match &doc.value {
            Value::Map(_) => {}
            Value::Null => return,
            _ => {
                findings.push(frame.finding(
                    doc.pos,
                    "",
                    Severity::Error,
                    format!("a MeshConfig must be an object, found {}", doc.kind_name()),
                ));
                return;
            }
        }
        let cx = DecodeCx::new(false);
        let mut raw: Raw = decode(doc, "mesh", &cx);
        // The decoder reads a wrong value as the field's zero value; a wrong field keeps
        // Istio's default instead.
        let mut wrong: Vec<String> = Vec::new();
        for issue in cx.into_issues() {
            let field = issue.path.strip_prefix("mesh.").unwrap_or(&issue.path).to_string();
            findings.push(frame.finding(issue.pos, &field, Severity::Error, issue.message));
            wrong.push(field);
        }
        let is_wrong = |top: &str| {
            wrong
                .iter()
                .any(|w| w == top || w.starts_with(&format!("{top}.")) || w.starts_with(&format!("{top}[")))
        };
        if is_wrong("outboundTrafficPolicy") {
            raw.outbound_traffic_policy = None;
        }
        if is_wrong("enableAutoMtls") {
            raw.enable_auto_mtls = None;
        }
        if is_wrong("trustDomain") {
            raw.trust_domain = None;
        }
        if is_wrong("rootNamespace") {
            raw.root_namespace = None;
        }
        if is_wrong("defaultServiceExportTo") {
            raw.default_service_export_to = None;
        }
        if is_wrong("defaultVirtualServiceExportTo") {
            raw.default_virtual_service_export_to = None;
        }
        if is_wrong("defaultDestinationRuleExportTo") {
            raw.default_destination_rule_export_to = None;
        }
        if let Some(c) = raw.default_config.as_mut() {
            c.proxy_metadata.retain(|k, _| {
                !is_wrong(&format!("defaultConfig.proxyMetadata.{k}"))
                    && !is_wrong(&format!("defaultConfig.proxyMetadata[\"{k}\"]"))
            });
        }
        let pos_of = |path: &str| doc.locate(path);
        let mut error = |path: &str, message: String| {
            findings.push(frame.finding(pos_of(path), path, Severity::Error, message));
        };
        if let Some(mode) = raw.outbound_traffic_policy.and_then(|o| o.mode) {
            self.outbound_policy = mode;
        }
        if let Some(td) = raw.trust_domain {
            match trust_domain_error(&td) {
                Some(e) => error("trustDomain", e),
                None => self.trust_domain = td,
            }
        }
        if let Some(ns) = raw.root_namespace {
            if is_dns1123_label(&ns) {
                self.root_namespace = ns;
            } else {
                error(
                    "rootNamespace",
                    format!("root namespace {ns:?} is not a namespace name (a DNS-1123 label)"),
                );
            }
        }
        let exports = [
            (
                "defaultServiceExportTo",
                raw.default_service_export_to,
                &mut self.default_service_export_to,
            ),
            (
                "defaultVirtualServiceExportTo",
                raw.default_virtual_service_export_to,
                &mut self.default_virtual_service_export_to,
            ),
            (
                "defaultDestinationRuleExportTo",
                raw.default_destination_rule_export_to,
                &mut self.default_destination_rule_export_to,
            ),
        ];
        for (name, written, slot) in exports {
            let Some(written) = written else { continue };
            let mut ok = true;
            for (i, e) in written.iter().enumerate() {
                if !matches!(e.as_str(), "." | "*" | "~") && !is_dns1123_label(e) {
                    ok = false;
                    error(
                        &format!("{name}[{i}]"),
                        format!("{e:?} is not `.`, `*`, `~` or a namespace name"),
                    );
                }
            }
            if ok {
                *slot = written;
            }
        }
        if let Some(b) = raw.enable_auto_mtls {
            self.enable_auto_mtls = b;
        }
        let metadata = raw.default_config.map(|c| c.proxy_metadata).unwrap_or_default();
        for (key, slot) in [
            (DNS_CAPTURE, &mut self.dns_capture),
            (DNS_AUTO_ALLOCATE, &mut self.dns_auto_allocate),
        ] {
            if let Some(v) = metadata.get(key) {
                match go_parse_bool(v) {
                    Some(b) => *slot = b,
                    None => error(
                        &format!("defaultConfig.proxyMetadata.{key}"),
                        format!("{v:?} is not a boolean (\"true\" or \"false\")"),
                    ),
                }
            }
        }
        match metadata.get(IP_AUTOALLOCATE).and_then(|v| go_parse_bool(v)) {
            Some(true) => self.dns_auto_allocate = true,
            Some(false) => self.ip_autoallocate = false,
            None => {}
        }
        if metadata.contains_key(DNS_AUTO_ALLOCATE) {
            let path = format!("defaultConfig.proxyMetadata.{DNS_AUTO_ALLOCATE}");
            findings.push(frame.finding(
                doc.locate(&path),
                &path,
                Severity::Warning,
                "'ISTIO_META_DNS_AUTO_ALLOCATE' is deprecated; review https://istio.io/latest/docs/ops/configuration/traffic-management/dns-proxy/#dns-auto-allocation-v2 for information about replacement functionality".into(),
            ));
        }
        if self.dns_capture {
            let path = format!("defaultConfig.proxyMetadata.{DNS_CAPTURE}");
            findings.push(frame.finding(
                doc.locate(&path),
                &path,
                Severity::Info,
                "applied: `meshentry proxy` answers DNS on 127.0.0.1:15053 (unless --dns says otherwise) with the mesh's names and auto-allocated addresses; `meshentry iptables install --capture-dns` sends the applications' DNS there".into(),
            ));
        }
        if self.dns_auto_allocate {
            let path = format!("defaultConfig.proxyMetadata.{DNS_AUTO_ALLOCATE}");
            findings.push(frame.finding(
                doc.locate(&path),
                &path,
                Severity::Info,
                "accepted: with DNS capture, meshentry's proxy allocates addresses to ServiceEntries without any (as PILOT_ENABLE_IP_AUTOALLOCATE, on unless set to \"false\"); istioctl analyze then no longer asks them for addresses (IST0134)".into(),
            ));
        }
        self.note_ignored(doc, frame, findings);
    }

    /// One note per field meshentry accepts but does not apply.
    fn note_ignored(&self, doc: &Node, frame: &Frame<'_>, findings: &mut Vec<Finding>) {
        let Value::Map(entries) = &doc.value else { return };
        for (key, value) in entries {
            let Some(name) = key.as_str() else { continue };
            if !APPLIED.contains(&name) {
                findings.push(frame.finding(
                    key.pos,
                    name,
                    Severity::Info,
                    format!("accepted, not applied: meshentry does not use MeshConfig's {name}"),
                ));
                continue;
            }
            if name != "defaultConfig" {
                continue;
            }
            let Value::Map(config) = &value.value else { continue };
            for (k, v) in config {
                let Some(field) = k.as_str() else { continue };
                if field != "proxyMetadata" {
                    findings.push(frame.finding(
                        k.pos,
                        &format!("defaultConfig.{field}"),
                        Severity::Info,
                        format!("accepted, not applied: meshentry does not use defaultConfig.{field}"),
                    ));
                    continue;
                }
                let Value::Map(meta) = &v.value else { continue };
                for (mk, _) in meta {
                    let Some(var) = mk.as_str() else { continue };
                    if ![DNS_CAPTURE, DNS_AUTO_ALLOCATE, IP_AUTOALLOCATE].contains(&var) {
                        findings.push(frame.finding(
                            mk.pos,
                            &format!("defaultConfig.proxyMetadata.{var}"),
                            Severity::Info,
                            format!("accepted, not applied: meshentry does not use the proxy setting {var}"),
                        ));
                    }
                }
            }
        }
    }

    /// Reads `path` (`-` is not allowed: stdin holds no MeshConfig here).
    pub fn load(path: &std::path::Path) -> std::io::Result<(MeshConfig, Vec<Finding>)> {
        let text = std::fs::read_to_string(path)?;
        Ok(Self::parse(&path.display().to_string(), &text))
    }

    /// Whether IST0134's "addresses are required" does not apply: Istio's analyzer skips it
    /// when proxies capture DNS and addresses are auto-allocated.
    pub fn addresses_auto_allocated(&self) -> bool {
        self.dns_capture && self.dns_auto_allocate
    }

    /// Applies the mesh defaults to loaded resources: an absent `exportTo` becomes the mesh's
    /// default for the kind (Istio reads an absent exportTo as that default), and the config is
    /// kept on `loaded` for the checks that need the root namespace. Call after loading (so
    /// validation sees what was written) and before the registry is built.
    pub fn apply(&self, loaded: &mut Loaded) {
        for r in &mut loaded.resources {
            let (export_to, default) = match &mut r.spec {
                Spec::ServiceEntry(s) => (&mut s.export_to, &self.default_service_export_to),
                Spec::VirtualService(s) => (&mut s.export_to, &self.default_virtual_service_export_to),
                Spec::DestinationRule(s) => (&mut s.export_to, &self.default_destination_rule_export_to),
                // Istio's `serviceExportTo` gives Kubernetes Services the same default.
                Spec::Service(s) => (&mut s.export_to, &self.default_service_export_to),
                _ => continue,
            };
            if export_to.is_empty() {
                export_to.clone_from(default);
            }
        }
        loaded.mesh = self.clone();
    }
}

/// Istio's `ValidateTrustDomain`: dot-separated DNS-1123 labels (a trailing dot allowed).
fn trust_domain_error(domain: &str) -> Option<String> {
    if domain.is_empty() {
        return Some("empty domain name not allowed".into());
    }
    let parts: Vec<&str> = domain.split('.').collect();
    for (i, label) in parts.iter().enumerate() {
        if i == parts.len() - 1 && label.is_empty() {
            return None;
        }
        if !crate::validate::common::is_dns1123_label_ci(label) || label.bytes().any(|b| b.is_ascii_uppercase()) {
            return Some(format!("trust domain name {domain:?} invalid"));
        }
    }
    None
}

/// Go's `strconv.ParseBool`, as Istio reads boolean environment settings.
fn go_parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(f: &[Finding]) -> Vec<String> {
        f.iter()
            .filter(|f| f.severity == Severity::Error)
            .map(|f| format!("{}:{}: {}: {}", f.line, f.column, f.field, f.message))
            .collect()
    }

    const BARE: &str = "\
outboundTrafficPolicy:
  mode: REGISTRY_ONLY
trustDomain: example.org
rootNamespace: mesh-root
defaultServiceExportTo: [\".\"]
defaultVirtualServiceExportTo: [\"*\"]
defaultDestinationRuleExportTo: [\"~\"]
enableAutoMtls: false
accessLogFile: /dev/stdout
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
  proxyMetadata:
    ISTIO_META_DNS_CAPTURE: \"true\"
    ISTIO_META_DNS_AUTO_ALLOCATE: \"true\"
    OTHER: x
";

    fn applied() -> MeshConfig {
        MeshConfig {
            source: Some("m.yaml".into()),
            outbound_policy: OutboundTrafficPolicyMode::RegistryOnly,
            trust_domain: "example.org".into(),
            root_namespace: "mesh-root".into(),
            default_service_export_to: vec![".".into()],
            default_virtual_service_export_to: vec!["*".into()],
            default_destination_rule_export_to: vec!["~".into()],
            enable_auto_mtls: false,
            dns_capture: true,
            dns_auto_allocate: true,
            ip_autoallocate: true,
        }
    }

    #[test]
    fn bare_object() {
        let (mesh, findings) = MeshConfig::parse("m.yaml", BARE);
        assert_eq!(errors(&findings), Vec::<String>::new());
        assert_eq!(mesh, applied());
        let notes: Vec<&str> = findings
            .iter()
            .filter(|f| f.severity == Severity::Info)
            .map(|f| f.field.as_str())
            .collect();
        assert_eq!(
            notes,
            vec![
                "defaultConfig.proxyMetadata.ISTIO_META_DNS_CAPTURE",
                "defaultConfig.proxyMetadata.ISTIO_META_DNS_AUTO_ALLOCATE",
                "accessLogFile",
                "defaultConfig.discoveryAddress",
                "defaultConfig.proxyMetadata.OTHER"
            ]
        );
        assert!(
            findings
                .iter()
                .any(|f| f.severity == Severity::Warning && f.message.contains("deprecated"))
        );
    }

    #[test]
    fn configmap_with_data_mesh() {
        let indented: String = BARE.lines().map(|l| format!("    {l}\n")).collect();
        let cm = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio\n  namespace: istio-system\ndata:\n  meshNetworks: 'networks: {{}}'\n  mesh: |-\n{indented}"
        );
        let (mesh, findings) = MeshConfig::parse("m.yaml", &cm);
        assert_eq!(errors(&findings), Vec::<String>::new());
        assert_eq!(mesh, applied());
        // Notes point into the block: accessLogFile is the block's 9th line, file line 17.
        let note = findings.iter().find(|f| f.field == "data.mesh.accessLogFile").unwrap();
        assert_eq!((note.line, note.column, note.kind.as_str()), (17, 5, "ConfigMap"));
        assert_eq!((note.namespace.as_str(), note.name.as_str()), ("istio-system", "istio"));
    }

    #[test]
    fn defaults_without_a_file_or_with_an_empty_one() {
        let (mesh, findings) = MeshConfig::parse("m.yaml", "");
        assert!(findings.is_empty());
        assert_eq!(MeshConfig { source: None, ..mesh }, MeshConfig::default());
        assert_eq!(MeshConfig::default().root_namespace, "istio-system");
        assert_eq!(
            MeshConfig::default().outbound_policy,
            OutboundTrafficPolicyMode::AllowAny
        );
    }

    #[test]
    fn invalid_values_of_applied_fields_are_errors_with_positions() {
        let text = "\
outboundTrafficPolicy: {mode: REGISTRY_ONYL}
trustDomain: Bad_Domain
rootNamespace: Istio.System
defaultServiceExportTo: [\".\", \"not a namespace\"]
enableAutoMtls: maybe
defaultConfig:
  proxyMetadata:
    ISTIO_META_DNS_CAPTURE: \"yes please\"
";
        let (mesh, findings) = MeshConfig::parse("m.yaml", text);
        assert_eq!(
            errors(&findings),
            vec![
                "1:31: outboundTrafficPolicy.mode: unknown value `REGISTRY_ONYL`, did you mean `REGISTRY_ONLY`?",
                "5:17: enableAutoMtls: expected a boolean (true or false), found a string",
                "2:14: trustDomain: trust domain name \"Bad_Domain\" invalid",
                "3:16: rootNamespace: root namespace \"Istio.System\" is not a namespace name (a DNS-1123 label)",
                "4:31: defaultServiceExportTo[1]: \"not a namespace\" is not `.`, `*`, `~` or a namespace name",
                "8:29: defaultConfig.proxyMetadata.ISTIO_META_DNS_CAPTURE: \"yes please\" is not a boolean (\"true\" or \"false\")",
            ]
        );
        // Wrong values leave Istio's defaults in place.
        assert_eq!(MeshConfig { source: None, ..mesh }, MeshConfig::default());
    }

    #[test]
    fn configmap_without_data_mesh() {
        let (_, findings) = MeshConfig::parse(
            "m.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio}\ndata: {}\n",
        );
        assert_eq!(errors(&findings).len(), 1);
        assert!(errors(&findings)[0].contains("no data.mesh"), "{findings:?}");
    }
}
