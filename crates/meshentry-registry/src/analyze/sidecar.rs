//! Sidecar check: an egress host that imports nothing (C9), typically `./host` for a service
//! that lives in another namespace.

use super::*;

pub(super) fn check(cx: &Context<'_>, out: &mut Findings<'_>) {
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

/// An egress host `ns/dnsName` imports the services and VirtualServices of `ns` (`*` any,
/// `.` the Sidecar's) that its proxies see and whose hosts intersect `dnsName`. Catch-alls
/// (`*` names, `~` namespaces) and cluster-domain names (Kubernetes Services) are not checked.
fn imports_nothing(cx: &Context<'_>, own: &str, written: &str) -> Option<String> {
    let (ns, dns) = written.split_once('/')?;
    if ns.starts_with('~') || dns.starts_with('~') || dns == "*" {
        return None;
    }
    let name = normalize(dns);
    if is_cluster_local(&name) {
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
