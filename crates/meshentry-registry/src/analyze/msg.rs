//! The `istioctl analyze` messages meshentry reports: each code with the level Istio gives it
//! (`pkg/config/analysis/msg/messages.yaml`) and the text Istio prints for it. A finding keeps
//! Istio's text as written, so that it reads (and greps) as `istioctl analyze` output; what
//! meshentry knows beyond it follows as a note.

use meshentry_api::Severity;

/// One `istioctl analyze` message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msg {
    pub code: &'static str,
    pub level: Severity,
    /// Istio's name for it.
    pub name: &'static str,
}

const fn msg(code: &'static str, level: Severity, name: &'static str) -> Msg {
    Msg { code, level, name }
}

use Severity::{Error, Warning};

pub const REFERENCED_RESOURCE_NOT_FOUND: Msg = msg("IST0101", Error, "ReferencedResourceNotFound");
pub const CONFLICTING_MESH_GATEWAY_VS_HOSTS: Msg = msg("IST0109", Error, "ConflictingMeshGatewayVirtualServiceHosts");
pub const CONFLICTING_SIDECAR_WORKLOAD_SELECTORS: Msg = msg("IST0110", Error, "ConflictingSidecarWorkloadSelectors");
pub const MULTIPLE_SIDECARS_WITHOUT_WORKLOAD_SELECTORS: Msg =
    msg("IST0111", Error, "MultipleSidecarsWithoutWorkloadSelectors");
pub const VS_DESTINATION_PORT_SELECTOR_REQUIRED: Msg =
    msg("IST0112", Error, "VirtualServiceDestinationPortSelectorRequired");
pub const VS_HOST_NOT_FOUND_IN_GATEWAY: Msg = msg("IST0132", Warning, "VirtualServiceHostNotFoundInGateway");
pub const GATEWAY_DUPLICATE_CERTIFICATE: Msg = msg("IST0138", Warning, "GatewayDuplicateCertificate");
pub const CONFLICTING_GATEWAYS: Msg = msg("IST0145", Error, "ConflictingGateways");
pub const GATEWAY_PORT_NOT_DEFINED_ON_SERVICE: Msg = msg("IST0162", Warning, "GatewayPortNotDefinedOnService");
pub const REFERENCED_INTERNAL_GATEWAY: Msg = msg("IST0165", Warning, "ReferencedInternalGateway");
pub const INEFFECTIVE_POLICY: Msg = msg("IST0167", Warning, "IneffectivePolicy");
pub const DR_SUBSET_NOT_SELECT_PODS: Msg = msg("IST0173", Error, "DestinationRuleSubsetNotSelectPods");
pub const UNKNOWN_DR_HOST: Msg = msg("IST0174", Warning, "UnknownDestinationRuleHost");
pub const CONFLICTING_SE_PROTOCOL: Msg = msg("IST0177", Warning, "ConflictingServiceEntryProtocol");

/// Every message meshentry reports, in code order (for the documentation's table and its
/// test).
pub const ALL: [Msg; 14] = [
    REFERENCED_RESOURCE_NOT_FOUND,
    CONFLICTING_MESH_GATEWAY_VS_HOSTS,
    CONFLICTING_SIDECAR_WORKLOAD_SELECTORS,
    MULTIPLE_SIDECARS_WITHOUT_WORKLOAD_SELECTORS,
    VS_DESTINATION_PORT_SELECTOR_REQUIRED,
    VS_HOST_NOT_FOUND_IN_GATEWAY,
    GATEWAY_DUPLICATE_CERTIFICATE,
    CONFLICTING_GATEWAYS,
    GATEWAY_PORT_NOT_DEFINED_ON_SERVICE,
    REFERENCED_INTERNAL_GATEWAY,
    INEFFECTIVE_POLICY,
    DR_SUBSET_NOT_SELECT_PODS,
    UNKNOWN_DR_HOST,
    CONFLICTING_SE_PROTOCOL,
];

/// IST0101's text: `Referenced gateway not found: "x"`.
pub fn not_found(reftype: &str, refval: &str) -> String {
    format!("Referenced {reftype} not found: {}", quote(refval))
}

/// Go's `%q` for the ASCII text these messages quote; other characters are kept as they are.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `%v` of a string list: `[a b]`.
pub fn list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    format!("[{}]", items.join(" "))
}

/// Istio's text followed by meshentry's note: after `; ` when the text has no full stop, else
/// as a sentence of its own.
pub fn with_note(text: String, note: Option<String>) -> String {
    let Some(note) = note.filter(|n| !n.is_empty()) else {
        return text;
    };
    if text.ends_with('.') {
        let mut chars = note.chars();
        let first: String = chars.next().map(|c| c.to_uppercase().collect()).unwrap_or_default();
        let mut out = format!("{text} {first}{}", chars.as_str());
        if !out.ends_with(['.', '?', '!']) {
            out.push('.');
        }
        out
    } else {
        format!("{text}; {note}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The levels of `messages.yaml` (istio/istio, pkg/config/analysis/msg), code by code.
    #[test]
    fn levels_are_istios() {
        let errors = [
            "IST0101", "IST0109", "IST0110", "IST0111", "IST0112", "IST0145", "IST0173",
        ];
        for m in ALL {
            let want = if errors.contains(&m.code) { Error } else { Warning };
            assert_eq!(m.level, want, "{}", m.code);
        }
        let mut codes: Vec<&str> = ALL.iter().map(|m| m.code).collect();
        codes.dedup();
        assert_eq!(codes.len(), ALL.len());
        assert!(codes.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn texts() {
        assert_eq!(not_found("gateway", "gw"), "Referenced gateway not found: \"gw\"");
        assert_eq!(list(["a", "b"]), "[a b]");
        assert_eq!(list([80, 443]), "[80 443]");
        assert_eq!(with_note("a: \"x\"".into(), Some("why".into())), "a: \"x\"; why");
        assert_eq!(with_note("Done.".into(), Some("why it is".into())), "Done. Why it is.");
        assert_eq!(with_note("Done.".into(), None), "Done.");
    }
}
