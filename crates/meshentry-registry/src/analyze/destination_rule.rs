//! DestinationRule checks (Istio's `destinationrule.SubsetSelectPodAnalyzer`): a host Istio's
//! analyzer finds no service for (IST0174), and subsets that select no endpoint of the
//! service (IST0173, D4). meshentry's own: a rule that names a service Istio's analyzer finds
//! but that the rule does not apply to at run time (a name under a wildcard service, the
//! short-name trap).

use meshentry_api::model::Subset;

use super::lookup::Found;
use super::msg::{self, quote};
use super::*;
use crate::model::Resolution;

pub(super) fn check(cx: &Context<'_>, out: &mut Findings<'_>) {
    for dr in &cx.drs {
        check_one(cx, dr, out);
    }
}

fn check_one(cx: &Context<'_>, dr: &Dr<'_>, out: &mut Findings<'_>) {
    let ns = dr.r.namespace.as_str();
    match cx.istio.lookup(ns, &dr.spec.export_to, &dr.spec.host) {
        None => out.report(
            dr.r,
            "spec.host",
            msg::UNKNOWN_DR_HOST,
            format!(
                "The host {} defined in the DestinationRule does not match any services in the mesh.",
                dr.spec.host
            ),
            unknown_host_note(cx, dr),
        ),
        Some(found) => {
            if let Some(note) = applies_to_nothing(cx, dr) {
                out.warn(dr.r, "spec.host", note);
            }
            for (i, subset) in dr.spec.subsets.iter().enumerate() {
                if let Some(note) = selects_nothing(cx, found, subset) {
                    let field = if subset.labels.is_empty() { "name" } else { "labels" };
                    out.report(
                        dr.r,
                        &format!("spec.subsets[{i}].{field}"),
                        msg::DR_SUBSET_NOT_SELECT_PODS,
                        format!(
                            "The Subset {} defined in the DestinationRule does not select any pods. Which may lead to 503 UH (NoHealthyUpstream).",
                            subset.name
                        ),
                        Some(note),
                    );
                }
            }
        }
    }
}

/// A rule applies to the services whose host it names or covers (Istio matches rules to
/// services by SubsetOf since istio/istio#19459), where the service is seen: from the rule's
/// namespace, or (D1) as the rule of the service's own namespace; a rule of the root namespace
/// applies everywhere.
fn applies(cx: &Context<'_>, dr: &Dr<'_>, s: &Service) -> bool {
    let ns = dr.r.namespace.as_str();
    ns == cx.root_namespace || *s.namespace == *ns || s.is_visible_to(ns)
}

/// Why Istio's analyzer finds no service, and whether istiod applies the rule anyway.
fn unknown_host_note(cx: &Context<'_>, dr: &Dr<'_>) -> Option<String> {
    let h = dr.host.as_str();
    let ns = dr.r.namespace.as_str();
    if let Some(s) = cx.services.find_under(h, |s| applies(cx, dr, s)) {
        let why = if h.starts_with('*') {
            "Istio's analyzer finds a wildcard rule's service only when the service's host is a wildcard that the rule's host ends with"
        } else {
            "Istio's analyzer looks only among the services exported to every namespace or to the rule's exportTo"
        };
        return Some(format!(
            "at run time it applies to {} (host {}); {why}",
            cx.source_of(s),
            quote(&s.host)
        ));
    }
    if let Some(s) = cx.services.find_under(h, |_| true) {
        return Some(format!("{}, not to namespace {ns}", cx.invisible_service(s, h)));
    }
    if let Some(s) = cx.services.find_covering(h, |s| applies(cx, dr, s)) {
        return Some(cover_hint(cx, s));
    }
    if cx.is_cluster_local(h) {
        return cx
            .short_name_trap(&dr.spec.host, h)
            .or_else(|| Some(cx.no_kube_service(h)));
    }
    None
}

fn cover_hint(cx: &Context<'_>, s: &Service) -> String {
    format!(
        "{} has host {}, which covers it, but a DestinationRule applies only to the services whose host it names or covers: write host {}",
        cx.source_of(s),
        quote(&s.host),
        quote(&s.host)
    )
}

/// meshentry: Istio's analyzer finds a service, yet the rule applies to none at run time.
fn applies_to_nothing(cx: &Context<'_>, dr: &Dr<'_>) -> Option<String> {
    let h = dr.host.as_str();
    if h.is_empty() || h == "*" || cx.services.find_under(h, |s| applies(cx, dr, s)).is_some() {
        return None;
    }
    let base = "the rule applies to no service at run time: ".to_string();
    if let Some(s) = cx.services.find_covering(h, |s| applies(cx, dr, s)) {
        return Some(base + &cover_hint(cx, s));
    }
    if cx.may_be_unread_service(h) {
        return cx.short_name_trap(&dr.spec.host, h).map(|hint| base + &hint);
    }
    None
}

/// IST0173 (D4): whether some endpoint of the service carries the subset's labels (and the
/// ServiceEntry's `workloadSelector`, which Istio adds to the selector). Istio's analyzer
/// looks at Pods only; meshentry looks at the endpoints the proxy picks from: inline
/// endpoints, WorkloadEntries and Pods, with the topology labels Istio adds. A NONE service
/// (original destination) uses no endpoints, so its subsets are not checked. For a Kubernetes
/// Service, as in Istio, any Pod carrying the labels will do. The reason, when none does.
fn selects_nothing(cx: &Context<'_>, found: Found<'_>, subset: &Subset) -> Option<String> {
    let labels: Vec<String> = subset.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    match found {
        Found::Entry(r, se) => {
            if se.resolution.unwrap_or_default() == Resolution::None {
                return None;
            }
            let selector = se.workload_selector.as_ref().map(|w| &w.labels);
            let wanted = || subset.labels.iter().chain(selector.into_iter().flatten());
            let services = cx.services_of(r);
            let endpoints = services.iter().flat_map(|s| &s.endpoints);
            let mut any = false;
            for e in endpoints {
                any = true;
                if wanted().all(|(k, v)| e.workload.labels.get(k) == Some(v)) {
                    return None;
                }
            }
            Some(if !any {
                format!("{} has no endpoints", r.display_name())
            } else {
                format!(
                    "no endpoint of {} has the labels {}, so requests routed to subset {} fail",
                    r.display_name(),
                    labels.join(","),
                    subset.name
                )
            })
        }
        Found::Kube(svc) => {
            let selected = cx
                .pods
                .iter()
                .any(|p| subset.labels.iter().all(|(k, v)| p.labels.get(k) == Some(v)));
            (!selected).then(|| {
                format!(
                    "the host is {} and no Pod has the labels {}",
                    svc.origin,
                    labels.join(",")
                )
            })
        }
    }
}
