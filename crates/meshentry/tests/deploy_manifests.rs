//! Issue 17 item 6: the manifests in `deploy/kubernetes` are checked for real, each check for
//! what it can prove:
//!
//! - **Schema.** Every document is read as kubectl reads it (meshentry's YAML reader follows
//!   sigs.k8s.io/yaml) and decoded into its `k8s-openapi` type, which is generated from
//!   Kubernetes' own OpenAPI spec; encoded again, it must be the same JSON. A field the schema
//!   does not know is dropped by that round trip, so a misspelt or misplaced field fails the test
//!   by its path (kubectl only warns about those, and a cluster then ignores them silently).
//!   Not proven: server-side defaulting, admission (Pod Security), CEL rules.
//! - **Least privilege and consistency.** The default ClusterRole grants read verbs on exactly
//!   the resources the proxy watches, Secrets only from the optional file; the meshentry
//!   containers' arguments are flags the built binary has and values it accepts, the probes
//!   point at `--admin`, the capture rules exempt the uid the proxy runs as, `--labels` are the
//!   pod's labels.
//! - **kubectl.** `kubectl kustomize` builds the base offline. `kubectl apply --dry-run=client`
//!   needs the API server's discovery to map each kind to its resource, and the test API server
//!   (`scripts/k8s-apiserver`) serves only CustomResourceDefinitions: against it, every built-in
//!   kind fails with "no matches for kind". So the dry run talks to a stub serving discovery
//!   documents generated from the same `k8s-openapi` types (their resource names and scopes come
//!   from Kubernetes' spec), and proves that kubectl decodes every object, maps it to a resource
//!   of the right scope and would create it. Not proven: what only a real cluster decides
//!   (admission, RBAC escalation checks, images, the pods actually running). The real API server
//!   is used where it has the answer: the names of Istio's resources in the ClusterRole.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::any::TypeId;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec, SecurityContext, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::{NamespaceResourceScope, Resource};
use meshentry_testutil::KubeApi;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");

/// The uid the proxy runs as and the capture rules exempt (Istio's).
const PROXY_UID: i64 = 1337;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

// === Reading the manifests ===

/// One document of a manifest file, as the JSON kubectl would send.
struct Doc {
    /// `file#index`, for messages.
    place: String,
    json: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.json["kind"].as_str().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.json["metadata"]["name"].as_str().unwrap_or("")
    }

    fn typed<K: DeserializeOwned>(&self) -> K {
        serde_json::from_value(self.json.clone()).unwrap_or_else(|e| panic!("{}: {e}", self.place))
    }
}

/// Every manifest (`*.yaml` under deploy/kubernetes, the kustomization aside: it is not an
/// object, and `kubectl kustomize` checks it).
fn manifest_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml") && !path.ends_with("kustomization.yaml") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&deploy(), &mut files);
    files.sort();
    files
}

fn parse(place: &str, text: &str) -> Vec<Doc> {
    let nodes = meshentry_api::yaml::parse_stream(text).unwrap_or_else(|e| {
        panic!("{place}:{}:{}: not YAML: {e}", e.pos.line, e.pos.column);
    });
    nodes
        .iter()
        .map(|n| n.to_json())
        .filter(|j| !j.is_null())
        .enumerate()
        .map(|(i, json)| Doc {
            place: format!("{place}#{i}"),
            json,
        })
        .collect()
}

fn documents_of(path: &Path) -> Vec<Doc> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let place = path.strip_prefix(deploy()).unwrap_or(path).display().to_string();
    parse(&place, &text)
}

fn documents() -> Vec<Doc> {
    let docs: Vec<Doc> = manifest_files().iter().flat_map(|f| documents_of(f)).collect();
    assert!(
        docs.len() >= 8,
        "deploy/kubernetes has fewer objects than it should: {}",
        docs.len()
    );
    docs
}

// === The built-in kinds, from k8s-openapi ===

/// A kind the manifests may use, with what Kubernetes' spec says about it.
struct BuiltIn {
    api_version: &'static str,
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    /// The resource (URL path segment) that serves it.
    plural: &'static str,
    namespaced: bool,
    round_trip: fn(&Value) -> Result<Value, String>,
}

impl BuiltIn {
    /// The path of one object, as kubectl requests it.
    fn object_path(&self, namespace: Option<&str>, name: &str) -> String {
        let base = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match namespace {
            Some(ns) => format!("{base}/namespaces/{ns}/{}/{name}", self.plural),
            None => format!("{base}/{}/{name}", self.plural),
        }
    }

    /// How `kubectl apply` names an object it created.
    fn printed(&self, name: &str) -> String {
        let kind = self.kind.to_lowercase();
        if self.group.is_empty() {
            format!("{kind}/{name}")
        } else {
            format!("{kind}.{}/{name}", self.group)
        }
    }
}

fn round_trip<K: DeserializeOwned + Serialize>(written: &Value) -> Result<Value, String> {
    let typed: K = serde_json::from_value(written.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

fn built_in<K>() -> BuiltIn
where
    K: Resource + DeserializeOwned + Serialize,
    K::Scope: 'static,
{
    BuiltIn {
        api_version: K::API_VERSION,
        group: K::GROUP,
        version: K::VERSION,
        kind: K::KIND,
        plural: K::URL_PATH_SEGMENT,
        namespaced: TypeId::of::<K::Scope>() == TypeId::of::<NamespaceResourceScope>(),
        round_trip: round_trip::<K>,
    }
}

/// The kinds the manifests may use. A new kind in deploy/ fails the schema test until it is
/// added here, with its type.
fn built_ins() -> Vec<BuiltIn> {
    vec![
        built_in::<Namespace>(),
        built_in::<ServiceAccount>(),
        built_in::<Service>(),
        built_in::<ClusterRole>(),
        built_in::<ClusterRoleBinding>(),
        built_in::<Role>(),
        built_in::<RoleBinding>(),
        built_in::<Deployment>(),
    ]
}

fn built_in_of<'a>(kinds: &'a [BuiltIn], doc: &Doc) -> &'a BuiltIn {
    let api_version = doc.json["apiVersion"].as_str().unwrap_or("");
    kinds
        .iter()
        .find(|k| k.api_version == api_version && k.kind == doc.kind())
        .unwrap_or_else(|| {
            panic!(
                "{}: {api_version} {} is not a kind this test knows the schema of (add it to built_ins)",
                doc.place,
                doc.kind()
            )
        })
}

/// Where `read_back` (the typed round trip) differs from `written`, each as a field path and
/// what happened to it.
fn differences(path: &str, written: &Value, read_back: &Value, out: &mut Vec<String>) {
    match (written, read_back) {
        (Value::Object(w), Value::Object(r)) => {
            for (key, value) in w {
                let here = format!("{path}.{key}");
                match r.get(key) {
                    Some(back) => differences(&here, value, back, out),
                    None => out.push(format!(
                        "{here}: not a field of the schema (dropped by the typed round trip)"
                    )),
                }
            }
            for key in r.keys().filter(|k| !w.contains_key(*k)) {
                out.push(format!(
                    "{path}.{key}: absent, but the schema writes it (a required field?)"
                ));
            }
        }
        (Value::Array(w), Value::Array(r)) if w.len() == r.len() => {
            for (i, (a, b)) in w.iter().zip(r).enumerate() {
                differences(&format!("{path}[{i}]"), a, b, out);
            }
        }
        _ if written != read_back => out.push(format!("{path}: written {written}, read back as {read_back}")),
        _ => {}
    }
}

fn schema_problems(kinds: &[BuiltIn], doc: &Doc) -> Vec<String> {
    let kind = built_in_of(kinds, doc);
    match (kind.round_trip)(&doc.json) {
        Ok(read_back) => {
            let mut out = Vec::new();
            differences("", &doc.json, &read_back, &mut out);
            out
        }
        Err(e) => vec![format!("does not decode as {} {}: {e}", kind.api_version, kind.kind)],
    }
}

#[test]
fn every_document_has_the_schema_of_its_kind_and_no_field_it_lacks() {
    let kinds = built_ins();
    let mut problems = Vec::new();
    for doc in documents() {
        for p in schema_problems(&kinds, &doc) {
            problems.push(format!("{} ({} {}): {p}", doc.place, doc.kind(), doc.name()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The schema check is not vacuous: a misspelt field (`readOnlyRootFileSystem`, which a
/// cluster would silently ignore, leaving the root filesystem writable) is named.
#[test]
fn the_schema_check_names_a_field_the_schema_does_not_know() {
    let kinds = built_ins();
    let mut doc = documents().into_iter().find(|d| d.kind() == "Deployment").unwrap();
    doc.json["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = json!(true);
    assert_eq!(
        schema_problems(&kinds, &doc),
        [
            ".spec.template.spec.containers[0].securityContext.readOnlyRootFileSystem: not a field of the schema (dropped by the typed round trip)"
        ]
    );
}

// === RBAC ===

type Grants = BTreeMap<(String, String), BTreeSet<String>>;

/// (API group, resource) -> verbs, with every rule's shape checked: no wildcards, no names, no
/// non-resource URLs.
fn grants(place: &str, rules: &[PolicyRule]) -> Grants {
    let mut out = Grants::new();
    for rule in rules {
        assert!(rule.resource_names.is_none(), "{place}: resourceNames: {rule:?}");
        assert!(rule.non_resource_urls.is_none(), "{place}: nonResourceURLs: {rule:?}");
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                let verbs = out.entry((group.clone(), resource.clone())).or_default();
                verbs.extend(rule.verbs.iter().cloned());
            }
        }
    }
    for ((group, resource), verbs) in &out {
        assert!(
            group != "*" && resource != "*" && !verbs.contains("*"),
            "{place}: a wildcard in {group}/{resource} {verbs:?}"
        );
    }
    out
}

fn read_only() -> BTreeSet<String> {
    ["get", "list", "watch"].map(String::from).into()
}

fn role_named<'a>(docs: &'a [Doc], name: &str) -> &'a Doc {
    let found: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.kind() == "ClusterRole" && d.name() == name)
        .collect();
    assert_eq!(found.len(), 1, "one ClusterRole {name}");
    found[0]
}

/// The resources of Istio's networking group the ClusterRole grants.
fn istio_resources(role: &ClusterRole) -> BTreeSet<String> {
    grants("ClusterRole meshentry", role.rules.as_deref().unwrap_or_default())
        .into_keys()
        .filter(|(group, _)| group == meshentry_kube::GROUP)
        .map(|(_, resource)| resource)
        .collect()
}

#[test]
fn the_default_role_reads_exactly_what_the_proxy_watches_and_no_secrets() {
    let docs = documents();
    let role: ClusterRole = role_named(&docs, "meshentry").typed();
    assert!(
        role.aggregation_rule.is_none(),
        "an aggregated role grants what others add to it"
    );
    let granted = grants("ClusterRole meshentry", role.rules.as_deref().unwrap_or_default());

    // Istio's seven networking kinds meshentry reads (the API server's plurals; the live test
    // below checks them against a real server), and the Kubernetes resources, named by their
    // types' own resource names.
    let mut expected: Vec<(&str, &str)> = [
        "serviceentries",
        "workloadentries",
        "workloadgroups",
        "destinationrules",
        "virtualservices",
        "gateways",
        "sidecars",
    ]
    .iter()
    .map(|r| (meshentry_kube::GROUP, *r))
    .collect();
    assert_eq!(expected.len(), meshentry_api::Kind::ISTIO.len());
    for (group, plural) in [
        (Namespace::GROUP, Namespace::URL_PATH_SEGMENT),
        (Pod::GROUP, Pod::URL_PATH_SEGMENT),
        (Service::GROUP, Service::URL_PATH_SEGMENT),
        (EndpointSlice::GROUP, EndpointSlice::URL_PATH_SEGMENT),
    ] {
        expected.push((group, plural));
    }
    let expected: Grants = expected
        .into_iter()
        .map(|(g, r)| ((g.to_string(), r.to_string()), read_only()))
        .collect();
    assert_eq!(granted, expected);

    // Secrets: in no role but the optional one, which grants reading them and nothing else, and
    // only in its own namespace (a RoleBinding; no ClusterRoleBinding refers to it).
    let secrets = (
        k8s_openapi::api::core::v1::Secret::GROUP.to_string(),
        k8s_openapi::api::core::v1::Secret::URL_PATH_SEGMENT.to_string(),
    );
    for doc in docs.iter().filter(|d| d.kind() == "ClusterRole" || d.kind() == "Role") {
        let rules = match doc.kind() {
            "Role" => doc.typed::<Role>().rules,
            _ => doc.typed::<ClusterRole>().rules,
        };
        let g = grants(&doc.place, rules.as_deref().unwrap_or_default());
        if doc.name() == "meshentry-secrets" {
            assert!(doc.place.starts_with("secrets-rbac.yaml"), "{}", doc.place);
            assert_eq!(g, Grants::from([(secrets.clone(), read_only())]), "{}", doc.place);
        } else {
            assert!(!g.contains_key(&secrets), "{}: grants Secrets", doc.place);
        }
    }
    let mut secret_bindings = 0;
    for doc in &docs {
        let (role_ref, subjects) = match doc.kind() {
            "ClusterRoleBinding" => {
                let b: ClusterRoleBinding = doc.typed();
                (b.role_ref, b.subjects)
            }
            "RoleBinding" => {
                let b: RoleBinding = doc.typed();
                assert!(
                    b.metadata.namespace.is_some(),
                    "{}: the RoleBinding's namespace",
                    doc.place
                );
                (b.role_ref, b.subjects)
            }
            _ => continue,
        };
        if role_ref.name == "meshentry-secrets" {
            assert_eq!(doc.kind(), "RoleBinding", "{}: Secrets cluster-wide", doc.place);
            secret_bindings += 1;
        }
        // Bound to service accounts only, never to a group or a user.
        for s in subjects.iter().flatten() {
            assert_eq!(s.kind, "ServiceAccount", "{}", doc.place);
        }
    }
    assert_eq!(secret_bindings, 1);
}

/// The Istio resources the role names are the ones a real API server with Istio's CRDs serves
/// for the kinds meshentry reads: a misspelt plural would be a rule that grants nothing, and
/// the proxy's watch of that kind would be forbidden.
#[test]
fn the_role_names_istios_resources_as_a_real_api_server_serves_them() {
    let docs = documents();
    let role: ClusterRole = role_named(&docs, "meshentry").typed();
    let kube = KubeApi::start();
    let get = |path: &str| -> Value {
        let out = kube.kubectl(&["get", "--raw", path]);
        assert!(out.status.success(), "{path}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let group = get(&format!("/apis/{}", meshentry_kube::GROUP));
    let mut served: BTreeMap<String, String> = BTreeMap::new();
    for version in group["versions"].as_array().unwrap() {
        let list = get(&format!("/apis/{}", version["groupVersion"].as_str().unwrap()));
        for r in list["resources"].as_array().unwrap() {
            let (kind, name) = (r["kind"].as_str().unwrap(), r["name"].as_str().unwrap());
            if !name.contains('/') {
                served.insert(kind.to_string(), name.to_string());
            }
        }
    }
    let wanted: BTreeSet<String> = meshentry_api::Kind::ISTIO
        .iter()
        .map(|k| {
            served
                .get(k.as_str())
                .unwrap_or_else(|| panic!("the API server serves no {}: {served:?}", k.as_str()))
                .clone()
        })
        .collect();
    assert_eq!(istio_resources(&role), wanted);
}

// === The containers ===

/// Kubernetes' `$(VAR)` expansion of command and args, with the container's environment as the
/// kubelet would fill it for a pod made from `template_labels` in `namespace`. A reference to a
/// variable the container does not define is left as written by the kubelet, and fails here.
fn environment(
    place: &str,
    c: &Container,
    namespace: &str,
    template_labels: &BTreeMap<String, String>,
) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for var in c.env.iter().flatten() {
        let value = if let Some(v) = &var.value {
            v.clone()
        } else {
            let field = var
                .value_from
                .as_ref()
                .and_then(|f| f.field_ref.as_ref())
                .map(|f| f.field_path.as_str())
                .unwrap_or_else(|| panic!("{place}: {} is neither a value nor a fieldRef", var.name));
            if field == "metadata.namespace" {
                namespace.to_string()
            } else if let Some(key) = field
                .strip_prefix("metadata.labels['")
                .and_then(|k| k.strip_suffix("']"))
            {
                // A label the pod does not have would be an empty value: a selector that never
                // matches, silently.
                template_labels
                    .get(key)
                    .unwrap_or_else(|| panic!("{place}: {} reads label {key}, which the pod does not have", var.name))
                    .clone()
            } else {
                panic!("{place}: {}: fieldRef {field} is not one this test resolves", var.name);
            }
        };
        env.insert(var.name.clone(), value);
    }
    env
}

fn expand(place: &str, arg: &str, env: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find(')')
            .unwrap_or_else(|| panic!("{place}: unclosed $( in {arg:?}"));
        let name = &rest[start + 2..start + end];
        let value = env
            .get(name)
            .unwrap_or_else(|| panic!("{place}: {arg:?} refers to ${name}, which the container does not define"));
        out.push_str(value);
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

/// A meshentry container of some Deployment, its arguments expanded.
struct Meshentry {
    place: String,
    container: Container,
    pod: PodSpec,
    labels: BTreeMap<String, String>,
    /// The subcommand (`proxy`, `iptables install`).
    subcommand: Vec<String>,
    /// The flags and values after it.
    args: Vec<String>,
}

impl Meshentry {
    /// The value of `--flag` (the last, as clap takes it), written `--flag VALUE` or
    /// `--flag=VALUE`; a test asking for one that is absent fails naming it.
    fn flag(&self, flag: &str) -> &str {
        let mut value = None;
        for (i, arg) in self.args.iter().enumerate() {
            if arg == flag {
                value = self.args.get(i + 1).map(String::as_str);
            } else if let Some(v) = arg.strip_prefix(flag).and_then(|rest| rest.strip_prefix('=')) {
                value = Some(v);
            }
        }
        value.unwrap_or_else(|| panic!("{}: no {flag} in {:?}", self.place, self.args))
    }

    fn security(&self) -> SecurityContext {
        self.container.security_context.clone().unwrap_or_default()
    }

    /// The uid it runs as: its own, else the pod's.
    fn uid(&self) -> Option<i64> {
        self.security()
            .run_as_user
            .or_else(|| self.pod.security_context.as_ref().and_then(|s| s.run_as_user))
    }

    fn run_as_non_root(&self) -> Option<bool> {
        self.security()
            .run_as_non_root
            .or_else(|| self.pod.security_context.as_ref().and_then(|s| s.run_as_non_root))
    }
}

fn meshentry_containers() -> Vec<Meshentry> {
    let mut out = Vec::new();
    for doc in documents().iter().filter(|d| d.kind() == "Deployment") {
        let deployment: Deployment = doc.typed();
        // The base's objects get their namespace from kustomization.yaml.
        let namespace = deployment.metadata.namespace.as_deref().unwrap_or("istio-system");
        let spec = deployment.spec.unwrap();
        let labels = spec.template.metadata.unwrap_or_default().labels.unwrap_or_default();
        let pod = spec.template.spec.unwrap();
        for c in pod.init_containers.iter().flatten().chain(&pod.containers) {
            if !c
                .command
                .iter()
                .flatten()
                .next()
                .is_some_and(|cmd| cmd.ends_with("/meshentry"))
            {
                continue;
            }
            let place = format!("{} container {}", doc.place, c.name);
            let env = environment(&place, c, namespace, &labels);
            let all: Vec<String> = c.args.iter().flatten().map(|a| expand(&place, a, &env)).collect();
            let at = all.iter().position(|a| a.starts_with('-')).unwrap_or(all.len());
            out.push(Meshentry {
                place,
                container: c.clone(),
                pod: pod.clone(),
                labels: labels.clone(),
                subcommand: all[..at].to_vec(),
                args: all[at..].to_vec(),
            });
        }
    }
    out
}

fn run(args: &[String]) -> Output {
    Command::new(BIN).args(args).output().expect("run meshentry")
}

/// Whether `--help` output lists `flag` (as `--flag`, `--flag <VALUE>` or `--flag[=<V>]`).
fn help_lists(help: &str, flag: &str) -> bool {
    help.split(|c: char| c.is_whitespace() || c == ',')
        .any(|token| token.split(['[', '=']).next() == Some(flag))
}

#[test]
fn the_containers_run_meshentry_with_flags_it_has_and_values_it_takes() {
    let containers = meshentry_containers();
    let subcommands: BTreeSet<String> = containers.iter().map(|m| m.subcommand.join(" ")).collect();
    assert_eq!(
        subcommands,
        BTreeSet::from(["proxy".to_string(), "iptables install".to_string()])
    );
    let mut problems = Vec::new();
    for m in &containers {
        let mut help_args = m.subcommand.clone();
        help_args.push("--help".into());
        let help = run(&help_args);
        assert!(help.status.success(), "{help_args:?}");
        let help = String::from_utf8_lossy(&help.stdout);
        for flag in m.args.iter().filter(|a| a.starts_with("--")) {
            let flag = flag.split('=').next().unwrap_or_default();
            if !help_lists(&help, flag) {
                problems.push(format!(
                    "{}: meshentry {} has no {flag}",
                    m.place,
                    m.subcommand.join(" ")
                ));
            }
        }
        // Every flag known and every value accepted, as clap parses them. `--help` at the end
        // stops clap before the checks across flags (`requires`), which the next test makes for
        // what matters here.
        let mut parsed = m.subcommand.clone();
        parsed.extend(m.args.iter().cloned());
        parsed.push("--help".into());
        let out = run(&parsed);
        if !out.status.success() {
            problems.push(format!(
                "{}: meshentry refuses its arguments {:?}: {}",
                m.place,
                &parsed[..parsed.len() - 1],
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_containers_are_least_privilege_and_consistent_with_their_flags() {
    let containers = meshentry_containers();
    let proxies: Vec<&Meshentry> = containers.iter().filter(|m| m.subcommand == ["proxy"]).collect();
    assert_eq!(proxies.len(), 2, "the egress gateway and the sidecar");
    for m in &containers {
        let sc = m.security();
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", m.place);
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", m.place);
        assert_ne!(sc.privileged, Some(true), "{}", m.place);
        let caps = sc.capabilities.unwrap_or_default();
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]), "{}", m.place);
        let resources = m.container.resources.clone().unwrap_or_default();
        for (what, r) in [("requests", &resources.requests), ("limits", &resources.limits)] {
            let r = r.clone().unwrap_or_default();
            assert!(r.contains_key("cpu") && r.contains_key("memory"), "{}: {what}", m.place);
        }
        if m.subcommand == ["proxy"] {
            assert_eq!(caps.add, None, "{}: the proxy needs no capability", m.place);
            assert_eq!(m.run_as_non_root(), Some(true), "{}", m.place);
            assert_eq!(m.uid(), Some(PROXY_UID), "{}", m.place);
            // The probes ask the admin server where --admin puts it; readiness is /ready.
            let admin: SocketAddr = m.flag("--admin").parse().unwrap();
            assert!(
                admin.ip().is_unspecified(),
                "{}: the kubelet probes the pod's address",
                m.place
            );
            let c = &m.container;
            let readiness = c.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap();
            assert_eq!(readiness.path.as_deref(), Some("/ready"), "{}", m.place);
            for probe in [&c.readiness_probe, &c.liveness_probe, &c.startup_probe]
                .into_iter()
                .flatten()
            {
                let get = probe.http_get.as_ref().unwrap();
                assert_eq!(
                    get.port,
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::from(admin.port())),
                    "{}",
                    m.place
                );
            }
            assert!(c.liveness_probe.is_some(), "{}", m.place);
            // The admin port opens only after the first full sync: without a startup probe
            // holding liveness back, a slow first sync would be a restart loop.
            let startup = c.startup_probe.as_ref().and_then(|p| p.http_get.as_ref());
            assert_eq!(startup.and_then(|g| g.path.as_deref()), Some("/ready"), "{}", m.place);
            // --labels are the pod's own: a Gateway's selector and workload selectors match the
            // pod's labels in Istio, and --labels in meshentry.
            let labels = m.flag("--labels");
            for pair in labels.split(',') {
                let (k, v) = pair.split_once('=').unwrap();
                assert_eq!(
                    m.labels.get(k).map(String::as_str),
                    Some(v),
                    "{}: --labels {labels}",
                    m.place
                );
            }
        } else {
            // The init container: root with exactly the two capabilities iptables needs, and
            // the rules leave alone the uid every proxy of its pod runs as.
            let mut added = caps.add.clone().unwrap_or_default();
            added.sort();
            assert_eq!(added, ["NET_ADMIN", "NET_RAW"], "{}", m.place);
            assert_eq!(m.uid(), Some(0), "{}", m.place);
            let exempt: i64 = m.flag("--proxy-uid").parse().unwrap();
            let pod_proxies: Vec<&&Meshentry> = proxies.iter().filter(|p| p.pod == m.pod).collect();
            assert_eq!(pod_proxies.len(), 1, "{}: one proxy in its pod", m.place);
            assert_eq!(Some(exempt), pod_proxies[0].uid(), "{}", m.place);
            // Its real output, printed instead of run: the rules that exempt that uid.
            let mut args = m.subcommand.clone();
            args.extend(m.args.iter().cloned());
            args.push("--dry-run".into());
            let out = run(&args);
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let rules = String::from_utf8_lossy(&out.stdout);
            assert!(
                rules.contains(&format!("-m owner --uid-owner {exempt} -j RETURN")),
                "{rules}"
            );
        }
    }
}

/// The gateway's Service sends to ports its pods declare and selects those pods.
#[test]
fn the_gateway_service_selects_the_gateway_and_targets_its_ports() {
    let docs = documents_of(&deploy().join("egressgateway.yaml"));
    let service: Service = docs.iter().find(|d| d.kind() == "Service").unwrap().typed();
    let deployment: Deployment = docs.iter().find(|d| d.kind() == "Deployment").unwrap().typed();
    let template = deployment.spec.unwrap().template;
    let labels = template.metadata.unwrap().labels.unwrap();
    let spec = service.spec.unwrap();
    for (k, v) in spec.selector.unwrap() {
        assert_eq!(labels.get(&k), Some(&v), "selector {k}={v}");
    }
    let declared: BTreeSet<i32> = template.spec.unwrap().containers[0]
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    for port in spec.ports.unwrap() {
        let target = match port.target_port {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p)) => p,
            other => panic!("port {}: targetPort {other:?}", port.port),
        };
        assert!(
            declared.contains(&target),
            "port {} targets {target}, not a container port",
            port.port
        );
        // The gateway's own admin port stays inside the pod.
        assert_ne!(target, 15000);
    }
}

// === kubectl ===

fn kubectl(args: &[&str]) -> Output {
    Command::new("kubectl")
        .args(args)
        .output()
        .expect("kubectl runs (scripts/test installs it)")
}

fn kustomized() -> Vec<Doc> {
    let dir = deploy().to_string_lossy().into_owned();
    let out = kubectl(&["kustomize", &dir]);
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse(
        "kubectl kustomize deploy/kubernetes",
        &String::from_utf8_lossy(&out.stdout),
    )
}

/// Offline: the kustomization names files that exist and build, and puts every namespaced
/// object, and the binding's service account, in istio-system.
#[test]
fn kustomize_builds_the_base_into_istio_system() {
    let kinds = built_ins();
    let built = kustomized();
    let names: BTreeSet<(String, String)> = built
        .iter()
        .map(|d| (d.kind().to_string(), d.name().to_string()))
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("ServiceAccount", "meshentry"),
        ("ClusterRole", "meshentry"),
        ("ClusterRoleBinding", "meshentry"),
        ("Deployment", "istio-egressgateway"),
        ("Service", "istio-egressgateway"),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), n.to_string()))
    .collect();
    assert_eq!(names, expected, "the base is the gateway and what it needs, no Secrets");
    for doc in &built {
        let namespace = doc.json["metadata"]["namespace"].as_str();
        if built_in_of(&kinds, doc).namespaced {
            assert_eq!(namespace, Some("istio-system"), "{} {}", doc.kind(), doc.name());
        } else {
            assert_eq!(namespace, None, "{} {}", doc.kind(), doc.name());
        }
        assert_eq!(schema_problems(&kinds, doc), Vec::<String>::new(), "{}", doc.place);
    }
    let binding: ClusterRoleBinding = built.iter().find(|d| d.kind() == "ClusterRoleBinding").unwrap().typed();
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (subject.name.as_str(), subject.namespace.as_deref()),
        ("meshentry", Some("istio-system"))
    );
}

/// An API server that answers discovery only, with documents made from `kinds` (the
/// resource names and scopes of Kubernetes' spec, through k8s-openapi); every object is
/// "not found". It records the paths asked for.
struct Discovery {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

fn discovery_documents(kinds: &[BuiltIn]) -> HashMap<String, Value> {
    let mut lists: BTreeMap<(&str, &str), Vec<Value>> = BTreeMap::new();
    for k in kinds {
        lists.entry((k.group, k.version)).or_default().push(json!({
            "name": k.plural,
            "singularName": k.kind.to_lowercase(),
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        }));
    }
    let mut docs = HashMap::new();
    let mut groups = Vec::new();
    for ((group, version), resources) in lists {
        let group_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        let list = json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources,
        });
        if group.is_empty() {
            docs.insert(format!("/api/{version}"), list);
            docs.insert(
                "/api".to_string(),
                json!({"kind": "APIVersions", "versions": [version], "serverAddressByClientCIDRs": []}),
            );
        } else {
            docs.insert(format!("/apis/{group_version}"), list);
            let v = json!({"groupVersion": group_version, "version": version});
            groups.push(json!({"name": group, "versions": [v], "preferredVersion": v}));
        }
    }
    docs.insert(
        "/apis".to_string(),
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
    );
    docs
}

impl Discovery {
    fn start(kinds: &[BuiltIn]) -> Discovery {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let documents = Arc::new(discovery_documents(kinds));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (documents, seen) = (documents.clone(), s.clone());
                std::thread::spawn(move || answer(stream, &documents, &seen));
            }
        });
        Discovery { addr, seen, stop }
    }

    fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stub\n  cluster: {{server: \"http://{}\"}}\n\
             users:\n- name: stub\n  user: {{}}\ncontexts:\n- name: stub\n  context: {{cluster: stub, user: stub}}\n\
             current-context: stub\n",
            self.addr
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// One request per connection: kubectl's requests are GETs without a body.
fn answer(mut stream: TcpStream, documents: &HashMap<String, Value>, seen: &Mutex<Vec<String>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut request_line = head.lines().next().unwrap_or("").split(' ');
    let (method, target) = (request_line.next().unwrap_or(""), request_line.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("").to_string();
    let (status, body) = match documents.get(&path) {
        Some(doc) if method == "GET" => ("200 OK", doc.clone()),
        _ if method != "GET" => (
            "405 Method Not Allowed",
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "MethodNotAllowed", "code": 405}),
        ),
        _ => (
            "404 Not Found",
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                   "message": format!("{path} not found")}),
        ),
    };
    seen.lock().unwrap().push(format!("{method} {path}"));
    let body = body.to_string();
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// `kubectl apply --dry-run=client` of the base (-k), the optional Secrets role and the
/// sidecar example: every object decoded, mapped to its resource and scope, asked for where a
/// real server keeps it, and reported as created. `--validate=false`: kubectl's own schema
/// check needs the server's OpenAPI documents, which the stub does not have (the typed round
/// trip above is that check, stricter: kubectl only warns about an unknown field).
#[test]
fn kubectl_apply_dry_run_client_maps_and_would_create_every_object() {
    let kinds = built_ins();
    let stub = Discovery::start(&kinds);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = stub.kubeconfig(dir.path());
    let cache = dir.path().join("cache");
    let deploy = deploy();
    let sets = [
        ("-k", deploy.clone(), kustomized()),
        (
            "-f",
            deploy.join("secrets-rbac.yaml"),
            documents_of(&deploy.join("secrets-rbac.yaml")),
        ),
        (
            "-f",
            deploy.join("examples"),
            documents_of(&deploy.join("examples/sidecar.yaml")),
        ),
    ];
    for (how, path, objects) in &sets {
        let path = path.to_string_lossy();
        let out = kubectl(&[
            "--kubeconfig",
            &kubeconfig.to_string_lossy(),
            "--cache-dir",
            &cache.to_string_lossy(),
            "apply",
            "--dry-run=client",
            "--validate=false",
            how,
            &path,
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "kubectl apply --dry-run=client {how} {path}: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed: BTreeSet<&str> = stdout.lines().collect();
        let seen = stub.seen();
        for doc in objects {
            let kind = built_in_of(&kinds, doc);
            let line = format!("{} created (dry run)", kind.printed(doc.name()));
            assert!(
                printed.contains(line.as_str()),
                "{how} {path}: no {line:?} in\n{stdout}"
            );
            // A namespaced object without a namespace goes to the kubeconfig's (default).
            let namespace = kind
                .namespaced
                .then(|| doc.json["metadata"]["namespace"].as_str().unwrap_or("default"));
            let asked = format!("GET {}", kind.object_path(namespace, doc.name()));
            assert!(
                seen.contains(&asked),
                "{how} {path}: kubectl never asked for {asked}: {seen:?}"
            );
        }
        assert_eq!(printed.len(), objects.len(), "{how} {path}:\n{stdout}");
    }
}

// === docs/kubernetes.md ===

/// The ```yaml blocks of docs/kubernetes.md.
fn doc_yaml_blocks() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/kubernetes.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```yaml") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// What the walk-through shows is what deploy/ holds and what meshentry accepts: the rules it
/// quotes are the ClusterRole's, and the Istio object it asks you to apply is valid.
#[test]
fn the_walk_through_quotes_the_role_and_a_valid_object() {
    let blocks = doc_yaml_blocks();
    let rules_block = blocks
        .iter()
        .find(|b| b.starts_with("- apiGroups"))
        .expect("docs/kubernetes.md quotes the ClusterRole's rules");
    let rules: Vec<PolicyRule> = parse("docs/kubernetes.md", rules_block)[0].typed();
    let docs = documents();
    let role: ClusterRole = role_named(&docs, "meshentry").typed();
    assert_eq!(
        grants("docs/kubernetes.md", &rules),
        grants("rbac.yaml", role.rules.as_deref().unwrap_or_default())
    );
    let istio: Vec<&String> = blocks
        .iter()
        .filter(|b| b.starts_with("apiVersion: networking.istio.io/"))
        .collect();
    assert!(!istio.is_empty());
    for block in istio {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("object.yaml");
        std::fs::write(&file, block).unwrap();
        let out = run(&["validate".to_string(), file.to_string_lossy().into_owned()]);
        assert!(
            out.status.success(),
            "{block}{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The lines of `[section]` in a TOML file of ours (key = value, comments dropped).
fn toml_section(text: &str, section: &str) -> BTreeMap<String, String> {
    let mut in_section = false;
    let mut out = BTreeMap::new();
    for line in text.lines().map(|l| l.split('#').next().unwrap_or_default().trim()) {
        if line.starts_with('[') {
            in_section = line == format!("[{section}]");
        } else if in_section && let Some((k, v)) = line.split_once('=') {
            out.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
        }
    }
    out
}

/// deploy/Dockerfile builds the image from the checkout with the `dist` profile and the pinned
/// toolchain, and runs it as uid 1337 on a distroless base. No Docker daemon or base image is
/// reachable on the test machine, so the image is not built here: what it would run is
/// checked instead (the profile, the toolchain, the paths, the build context).
#[test]
fn the_dockerfile_builds_the_dist_profile_from_the_checkout_and_runs_as_1337() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dockerfile = std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();

    let dist = toml_section(
        &std::fs::read_to_string(root.join("Cargo.toml")).unwrap(),
        "profile.dist",
    );
    for (key, value) in [
        ("inherits", "release"),
        ("strip", "true"),
        ("lto", "fat"),
        ("codegen-units", "1"),
    ] {
        assert_eq!(dist.get(key).map(String::as_str), Some(value), "[profile.dist] {key}");
    }
    let channel = toml_section(
        &std::fs::read_to_string(root.join("rust-toolchain.toml")).unwrap(),
        "toolchain",
    )
    .remove("channel")
    .unwrap();
    let builder = instructions.iter().find(|l| l.starts_with("FROM rust:")).unwrap();
    assert!(
        builder.starts_with(&format!("FROM rust:{channel}-")) && builder.contains("bookworm"),
        "the builder is the pinned toolchain on Debian 12 (the runtime images' glibc): {builder}"
    );
    assert!(instructions.contains(&format!("ENV RUSTUP_TOOLCHAIN={channel}").as_str()));
    assert!(dockerfile.contains("cargo build --locked --profile dist -p meshentry"));
    assert!(
        dockerfile.contains("target/dist/meshentry"),
        "the dist profile's output directory"
    );
    assert!(instructions.contains(&"COPY . ."), "built from the checkout");

    // The last stage is the default target: the proxy, distroless, as 1337.
    let last_from = instructions.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    let proxy = &instructions[last_from..];
    assert!(
        proxy[0].starts_with("FROM gcr.io/distroless/cc-debian12"),
        "{}",
        proxy[0]
    );
    assert!(proxy.contains(&"USER 1337:1337"), "{proxy:?}");
    assert!(proxy.iter().any(|l| l.starts_with("COPY --from=build ")), "{proxy:?}");
    assert!(
        instructions
            .iter()
            .any(|l| l.starts_with("FROM debian:12-slim AS init"))
    );

    // The context sends the sources (every crate, the lock file, the toolchain) but not target/.
    let ignore = std::fs::read_to_string(root.join("deploy/Dockerfile.dockerignore")).unwrap();
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(patterns.contains(&"target/"), "{patterns:?}");
    for needed in ["crates", "Cargo.toml", "Cargo.lock", "rust-toolchain.toml"] {
        assert!(
            !patterns.iter().any(|p| *p == "*" || p.trim_end_matches('/') == needed),
            "the build needs {needed}: {patterns:?}"
        );
    }
}
