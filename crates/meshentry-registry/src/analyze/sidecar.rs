//! Sidecar checks. Istio's (`sidecar.SelectorAnalyzer`): a `workloadSelector` that matches no
//! Pod of the namespace (IST0101), Pods selected by several Sidecars (IST0110), several
//! Sidecars without a selector in one namespace (IST0111), and Sidecars for workloads in
//! ambient mode, where no sidecar runs (IST0167). meshentry's own: an egress host that imports
//! nothing (C9), typically `./host` for a service that lives in another namespace.

use std::collections::BTreeMap;

use super::msg::{self, quote};
use super::*;

/// The annotation that puts a Pod in ambient mode, and its value.
const AMBIENT_REDIRECTION: (&str, &str) = ("ambient.istio.io/redirection", "enabled");
/// The namespace labels of ambient mode and of sidecar injection.
const DATAPLANE_MODE: (&str, &str) = ("istio.io/dataplane-mode", "ambient");
const INJECTION: (&str, &str) = ("istio-injection", "enabled");
const REVISION: &str = "istio.io/rev";

pub(super) fn check(cx: &Context<'_>, out: &mut Findings<'_>) {
    selectors(cx, out);
    for &(r, sidecar) in &cx.sidecars {
        let own = r.namespace.as_str();
        for (i, listener) in sidecar.egress.iter().enumerate() {
            for (j, written) in listener.hosts.iter().enumerate() {
                if let Some(msg) = imports_nothing(cx, own, written) {
                    out.warn(r, &format!("spec.egress[{i}].hosts[{j}]"), msg);
                }
            }
        }
    }
}

fn pod_in_ambient(p: &lookup::PodInfo) -> bool {
    p.annotations.get(AMBIENT_REDIRECTION.0).map(String::as_str) == Some(AMBIENT_REDIRECTION.1)
}

/// Istio's `NamespaceInAmbientMode`: the ambient label, unless sidecar injection is on.
fn namespace_in_ambient(labels: &Labels) -> bool {
    if labels.get(INJECTION.0).map(String::as_str) == Some(INJECTION.1)
        || labels.get(REVISION).is_some_and(|v| !v.is_empty())
    {
        return false;
    }
    labels.get(DATAPLANE_MODE.0).map(String::as_str) == Some(DATAPLANE_MODE.1)
}

fn selectors(cx: &Context<'_>, out: &mut Findings<'_>) {
    // Pod (namespace, name) -> the Sidecars with a selector that select it, oldest first.
    let mut by_pod: BTreeMap<(&str, &str), Vec<&Resource>> = BTreeMap::new();
    let mut pods: HashMap<(&str, &str), &lookup::PodInfo> = HashMap::default();
    // Namespace -> its Sidecars without a selector.
    let mut namespace_wide: BTreeMap<&str, Vec<&Resource>> = BTreeMap::new();
    for &(r, sidecar) in &cx.sidecars {
        let ns = r.namespace.as_str();
        let selector = match &sidecar.workload_selector {
            Some(w) if !w.labels.is_empty() => &w.labels,
            _ => {
                namespace_wide.entry(ns).or_default().push(r);
                continue;
            }
        };
        let mut found = false;
        for p in cx.pods.iter().filter(|p| p.namespace == ns) {
            if selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)) {
                found = true;
                by_pod.entry((&p.namespace, &p.name)).or_default().push(r);
                pods.insert((&p.namespace, &p.name), p);
            }
        }
        if !found {
            let shown: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.report(
                r,
                "spec.workloadSelector",
                msg::REFERENCED_RESOURCE_NOT_FOUND,
                msg::not_found("selector", &shown.join(",")),
                Some(format!(
                    "no Pod of namespace {ns} in the files carries these labels, so this Sidecar applies to none"
                )),
            );
        }
    }

    let mut ineffective: HashSet<*const Resource> = HashSet::new();
    for ((ns, pod), list) in &by_pod {
        let ambient = pods.get(&(*ns, *pod)).is_some_and(|p| pod_in_ambient(p));
        if list.len() == 1 && !ambient {
            continue;
        }
        let names = sorted_names(list);
        for &r in list {
            if ambient {
                if ineffective.insert(r) {
                    out.report(
                        r,
                        "spec.workloadSelector",
                        msg::INEFFECTIVE_POLICY,
                        "The policy has no impact: selected workload is in ambient mode, the policy has no impact."
                            .into(),
                        None,
                    );
                }
                continue;
            }
            out.report(
                r,
                "spec.workloadSelector",
                msg::CONFLICTING_SIDECAR_WORKLOAD_SELECTORS,
                format!(
                    "The Sidecars {names} in namespace {} select the same workload pod {}, which can lead to undefined behavior.",
                    quote(ns),
                    quote(pod)
                ),
                Some("the pod's proxy uses only one of them (the oldest)".into()),
            );
        }
    }

    for (ns, list) in &namespace_wide {
        if cx.namespaces.get(ns).is_some_and(|l| namespace_in_ambient(l)) {
            for &r in list {
                if ineffective.insert(r) {
                    out.report(
                        r,
                        "metadata.name",
                        msg::INEFFECTIVE_POLICY,
                        "The policy has no impact: namespace is in ambient mode, the policy has no impact.".into(),
                        None,
                    );
                }
            }
            continue;
        }
        if list.len() < 2 {
            continue;
        }
        let names = sorted_names(list);
        for &r in list {
            out.report(
                r,
                "metadata.name",
                msg::MULTIPLE_SIDECARS_WITHOUT_WORKLOAD_SELECTORS,
                format!(
                    "The Sidecars {names} in namespace {} have no workload selector, which can lead to undefined behavior.",
                    quote(ns)
                ),
                Some("the namespace's proxies use only one of them (the oldest)".into()),
            );
        }
    }
}

/// `[a b]`: the names, sorted, as Istio lists them.
fn sorted_names(list: &[&Resource]) -> String {
    let mut names: Vec<&str> = list.iter().map(|r| r.meta.name.as_str()).collect();
    names.sort_unstable();
    msg::list(names)
}

/// An egress host `ns/dnsName` imports the services and VirtualServices of `ns` (`*` any,
/// `.` the Sidecar's) that its proxies see and whose hosts intersect `dnsName`. Catch-alls
/// (`*` names, `~` namespaces) and cluster-domain names of namespaces whose Kubernetes
/// Services were not read are not checked.
fn imports_nothing(cx: &Context<'_>, own: &str, written: &str) -> Option<String> {
    let (ns, dns) = written.split_once('/')?;
    if ns.starts_with('~') || dns.starts_with('~') || dns == "*" {
        return None;
    }
    let name = normalize(dns);
    if cx.may_be_unread_service(&name) {
        return None;
    }
    let import: Option<&str> = match ns {
        "*" => None,
        "." => Some(own),
        n => Some(n),
    };
    let in_scope = |n: &str| import.is_none_or(|i| i == n);
    let service = cx
        .services
        .find_matching(&name, |s| in_scope(&s.namespace) && s.is_visible_to(own));
    let vs = || {
        cx.vs_hosts.find_matching(&name, |i| {
            let vs = &cx.vss[i as usize];
            in_scope(&vs.r.namespace) && vs.export.is_visible(own)
        })
    };
    if service.is_some() || vs().is_some() {
        return None;
    }
    let place = match import {
        None => "any namespace".to_string(),
        Some(n) => format!("namespace {n}"),
    };
    let mut msg = format!(
        "egress host {written:?} imports nothing: no service or VirtualService for {dns} in {place} is visible to namespace {own}"
    );
    if let Some(s) = cx.services.find_matching(&name, |s| s.is_visible_to(own)) {
        msg.push_str(&format!(
            "; {} defines it in namespace {}: write \"{}/{dns}\" or \"*/{dns}\"",
            cx.describe_service(s, &name),
            s.namespace,
            s.namespace
        ));
    } else if let Some(s) = cx.services.find_matching(&name, |s| in_scope(&s.namespace)) {
        msg.push_str(&format!("; {}, not to namespace {own}", cx.invisible_service(s, &name)));
    }
    Some(msg)
}
