//! Fields meshentry accepts and validates as Istio does, but whose effect its proxy does not
//! implement. Each is reported as a note (`Severity::Info`) on its field path, saying what
//! happens instead, so that a configuration that relies on one is not silently misread.
//!
//! The list follows what the proxy reads (`meshentry-proxy`: the snapshot's cluster policy,
//! the VirtualService compiler, the gateway listeners); a field that changes no traffic in
//! Istio either (names, deprecated fields Istio ignores) is left out unless Istio documents an
//! effect for it. A Sidecar's `egress` listeners are not listed here: issue 15 item 9 applies
//! them.

use crate::model::{
    ClientTlsSettings, DestinationRule, Gateway, HttpRoute, LoadBalancerSettings, ServerTlsMode, ServerTlsSettings,
    Sidecar, TrafficPolicy, VirtualService,
};
use crate::resource::Spec;

/// The prefix of every note, so that a reader (and a test) can tell these notes apart.
pub const NOT_APPLIED: &str = "accepted but not applied by meshentry";

const CONNECTION_POOL: &str =
    "the proxy's own limits and timeouts apply instead (--max-connections, --connect-timeout, --idle-timeout, ...)";
const OUTLIER_DETECTION: &str =
    "endpoints are never ejected; an endpoint that refuses a connection is tried at most once per request";
const TUNNEL: &str = "connections go to the endpoints directly, not through an HTTP CONNECT or POST tunnel";
const PROXY_PROTOCOL: &str = "no PROXY protocol header is sent upstream";
const RETRY_BUDGET: &str = "retries are limited per request only (`retries.attempts`), not by a budget";
const CONSISTENT_HASH: &str = "requests are balanced with LEAST_REQUEST, not by a hash";
const LOCALITY_LB: &str = "endpoints are chosen without regard to locality";
const ZONE_AWARE_LB: &str = "endpoints are chosen without regard to zone or region";
const BACKEND_UTILIZATION: &str = "requests are balanced with LEAST_REQUEST, not by the load endpoints report";
const WARMUP: &str = "new endpoints get their full share of requests at once";
const CA_CRL: &str = "certificate revocation lists are not checked";
const CLIENT_CREDENTIAL_NAME: &str = "it names a Kubernetes secret, which meshentry cannot read; requests through this policy get 503 until clientCertificate, privateKey and caCertificates name files";
const CORS: &str = "CORS is not enforced: preflight requests are routed like any other and no CORS headers are added";
const RETRY_LOCALITIES: &str = "retries pick their endpoint with the load balancer, without regard to locality";
const RETRY_HOSTS: &str = "retries pick their endpoint with the load balancer";
const RETRY_BACKOFF: &str = "retries are sent without a backoff interval";
const GRPC_ABORT: &str = "only httpStatus aborts are injected; this fault is skipped";
const SOURCE_NAMESPACE: &str =
    "the match does not look at the client's namespace: it matches clients in every namespace";
const STAT_PREFIX: &str = "no per-route statistics are kept";
const PREFIX_REWRITE: &str = "the redirect keeps the request's path";
const BODY_BYTES: &str = "the response is sent with an empty body (only `body.string` is sent)";
const SOURCE_SUBNET: &str = "deprecated, and Istio does not use it either";
const GATEWAY_DEFAULT_ENDPOINT: &str = "the gateway does not forward to it";
const SERVER_CREDENTIAL_NAME: &str = "it names a Kubernetes secret, which meshentry cannot read; `meshentry proxy --gateway` does not serve this server until serverCertificate and privateKey name files";
const SERVER_CA_CREDENTIAL_NAME: &str = "it names a Kubernetes secret, which meshentry cannot read; client certificates are checked against caCertificates only";
const TLS_CERTIFICATES: &str = "only serverCertificate and privateKey are served";
const SERVER_SANS: &str = "client certificates are not checked against these names";
const SERVER_PINS: &str = "client certificates are not checked against these digests";
const TLS_VERSIONS: &str = "the TLS library's defaults apply (TLS 1.2 and 1.3)";
const CIPHER_SUITES: &str = "the TLS library's default cipher suites apply";
const ECDH_CURVES: &str = "the TLS library's default key exchange groups apply";
const SERVER_INSECURE_SKIP_VERIFY: &str = "a client certificate that fails verification is still refused";
const SIDECAR_INGRESS: &str = "meshentry has no inbound listener: traffic to the workload is not intercepted";
const EGRESS_PROXY: &str = "ALLOW_ANY traffic goes to its original destination";
const CAPTURE_MODE: &str = "which traffic is captured is decided by `meshentry iptables`";
const WORKLOAD_GROUP: &str = "meshentry does not register workloads: a WorkloadGroup creates no WorkloadEntry and its probe is never run; write the WorkloadEntry";

/// The fields of `spec` that the proxy does not apply, each with the note to report on it:
/// `accepted but not applied by meshentry: <what happens instead>`.
pub fn not_applied(spec: &Spec) -> Vec<(String, String)> {
    let mut out = Notes(Vec::new());
    match spec {
        Spec::DestinationRule(dr) => destination_rule(&mut out, dr),
        Spec::VirtualService(vs) => virtual_service(&mut out, vs),
        Spec::Gateway(gw) => gateway(&mut out, gw),
        Spec::Sidecar(sc) => sidecar(&mut out, sc),
        Spec::WorkloadGroup(_) => out.note("spec", WORKLOAD_GROUP),
        Spec::ServiceEntry(_)
        | Spec::WorkloadEntry(_)
        | Spec::Pod { .. }
        | Spec::Namespace
        | Spec::Service(_)
        | Spec::EndpointSlice(_) => {}
    }
    out.0
}

struct Notes(Vec<(String, String)>);

impl Notes {
    fn note(&mut self, path: impl Into<String>, why: &str) {
        self.0.push((path.into(), format!("{NOT_APPLIED}: {why}")));
    }

    fn note_if(&mut self, set: bool, path: impl Into<String>, why: &str) {
        if set {
            self.note(path, why);
        }
    }
}

fn destination_rule(out: &mut Notes, dr: &DestinationRule) {
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy(out, "spec.trafficPolicy", tp);
    }
    for (i, subset) in dr.subsets.iter().enumerate() {
        if let Some(tp) = &subset.traffic_policy {
            traffic_policy(out, &format!("spec.subsets[{i}].trafficPolicy"), tp);
        }
    }
}

fn traffic_policy(out: &mut Notes, path: &str, tp: &TrafficPolicy) {
    if let Some(lb) = &tp.load_balancer {
        load_balancer(out, &format!("{path}.loadBalancer"), lb);
    }
    out.note_if(
        tp.connection_pool.is_some(),
        format!("{path}.connectionPool"),
        CONNECTION_POOL,
    );
    out.note_if(
        tp.outlier_detection.is_some(),
        format!("{path}.outlierDetection"),
        OUTLIER_DETECTION,
    );
    if let Some(tls) = &tp.tls {
        client_tls(out, &format!("{path}.tls"), tls);
    }
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        let pp = format!("{path}.portLevelSettings[{i}]");
        if let Some(lb) = &p.load_balancer {
            load_balancer(out, &format!("{pp}.loadBalancer"), lb);
        }
        out.note_if(
            p.connection_pool.is_some(),
            format!("{pp}.connectionPool"),
            CONNECTION_POOL,
        );
        out.note_if(
            p.outlier_detection.is_some(),
            format!("{pp}.outlierDetection"),
            OUTLIER_DETECTION,
        );
        if let Some(tls) = &p.tls {
            client_tls(out, &format!("{pp}.tls"), tls);
        }
    }
    out.note_if(tp.tunnel.is_some(), format!("{path}.tunnel"), TUNNEL);
    out.note_if(
        tp.proxy_protocol.is_some(),
        format!("{path}.proxyProtocol"),
        PROXY_PROTOCOL,
    );
    out.note_if(tp.retry_budget.is_some(), format!("{path}.retryBudget"), RETRY_BUDGET);
}

fn load_balancer(out: &mut Notes, path: &str, lb: &LoadBalancerSettings) {
    out.note_if(
        lb.consistent_hash.is_some(),
        format!("{path}.consistentHash"),
        CONSISTENT_HASH,
    );
    out.note_if(
        lb.backend_utilization.is_some(),
        format!("{path}.backendUtilization"),
        BACKEND_UTILIZATION,
    );
    out.note_if(
        lb.locality_lb_setting.is_some(),
        format!("{path}.localityLbSetting"),
        LOCALITY_LB,
    );
    out.note_if(
        lb.zone_aware_lb_setting.is_some(),
        format!("{path}.zoneAwareLbSetting"),
        ZONE_AWARE_LB,
    );
    out.note_if(
        lb.warmup_duration_secs.is_some(),
        format!("{path}.warmupDurationSecs"),
        WARMUP,
    );
    out.note_if(lb.warmup.is_some(), format!("{path}.warmup"), WARMUP);
}

fn client_tls(out: &mut Notes, path: &str, tls: &ClientTlsSettings) {
    out.note_if(!tls.ca_crl.is_empty(), format!("{path}.caCrl"), CA_CRL);
    out.note_if(
        !tls.credential_name.is_empty(),
        format!("{path}.credentialName"),
        CLIENT_CREDENTIAL_NAME,
    );
}

fn virtual_service(out: &mut Notes, vs: &VirtualService) {
    for (i, h) in vs.http.iter().enumerate() {
        http_route(out, &format!("spec.http[{i}]"), h);
    }
    for (i, t) in vs.tls.iter().enumerate() {
        for (j, m) in t.r#match.iter().enumerate() {
            out.note_if(
                !m.source_namespace.is_empty(),
                format!("spec.tls[{i}].match[{j}].sourceNamespace"),
                SOURCE_NAMESPACE,
            );
        }
    }
    for (i, t) in vs.tcp.iter().enumerate() {
        for (j, m) in t.r#match.iter().enumerate() {
            let p = format!("spec.tcp[{i}].match[{j}]");
            out.note_if(
                !m.source_namespace.is_empty(),
                format!("{p}.sourceNamespace"),
                SOURCE_NAMESPACE,
            );
            out.note_if(!m.source_subnet.is_empty(), format!("{p}.sourceSubnet"), SOURCE_SUBNET);
        }
    }
}

fn http_route(out: &mut Notes, path: &str, h: &HttpRoute) {
    for (j, m) in h.r#match.iter().enumerate() {
        let p = format!("{path}.match[{j}]");
        out.note_if(
            !m.source_namespace.is_empty(),
            format!("{p}.sourceNamespace"),
            SOURCE_NAMESPACE,
        );
        out.note_if(!m.stat_prefix.is_empty(), format!("{p}.statPrefix"), STAT_PREFIX);
    }
    if let Some(rd) = &h.redirect {
        out.note_if(
            !rd.prefix_rewrite.is_empty(),
            format!("{path}.redirect.prefixRewrite"),
            PREFIX_REWRITE,
        );
    }
    if let Some(body) = h.direct_response.as_ref().and_then(|d| d.body.as_ref()) {
        out.note_if(
            body.bytes.is_some(),
            format!("{path}.directResponse.body.bytes"),
            BODY_BYTES,
        );
    }
    if let Some(r) = &h.retries {
        let p = format!("{path}.retries");
        out.note_if(
            r.retry_remote_localities.is_some(),
            format!("{p}.retryRemoteLocalities"),
            RETRY_LOCALITIES,
        );
        out.note_if(
            r.retry_ignore_previous_hosts.is_some(),
            format!("{p}.retryIgnorePreviousHosts"),
            RETRY_HOSTS,
        );
        out.note_if(r.backoff.is_some(), format!("{p}.backoff"), RETRY_BACKOFF);
    }
    if let Some(abort) = h.fault.as_ref().and_then(|f| f.abort.as_ref()) {
        out.note_if(
            abort.grpc_status.is_some(),
            format!("{path}.fault.abort.grpcStatus"),
            GRPC_ABORT,
        );
    }
    out.note_if(h.cors_policy.is_some(), format!("{path}.corsPolicy"), CORS);
}

fn gateway(out: &mut Notes, gw: &Gateway) {
    for (i, s) in gw.servers.iter().enumerate() {
        let path = format!("spec.servers[{i}]");
        out.note_if(
            !s.default_endpoint.is_empty(),
            format!("{path}.defaultEndpoint"),
            GATEWAY_DEFAULT_ENDPOINT,
        );
        if let Some(tls) = &s.tls {
            server_tls(out, &format!("{path}.tls"), tls);
        }
    }
}

/// Only a terminating server reads certificates: in the passthrough modes Istio ignores them
/// too (and validation warns).
fn server_tls(out: &mut Notes, path: &str, tls: &ServerTlsSettings) {
    if matches!(tls.mode, ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough) {
        return;
    }
    out.note_if(!tls.ca_crl.is_empty(), format!("{path}.caCrl"), CA_CRL);
    out.note_if(
        !tls.credential_name.is_empty(),
        format!("{path}.credentialName"),
        SERVER_CREDENTIAL_NAME,
    );
    out.note_if(
        !tls.credential_names.is_empty(),
        format!("{path}.credentialNames"),
        SERVER_CREDENTIAL_NAME,
    );
    out.note_if(
        !tls.ca_cert_credential_name.is_empty(),
        format!("{path}.caCertCredentialName"),
        SERVER_CA_CREDENTIAL_NAME,
    );
    out.note_if(
        !tls.tls_certificates.is_empty(),
        format!("{path}.tlsCertificates"),
        TLS_CERTIFICATES,
    );
    out.note_if(
        !tls.subject_alt_names.is_empty(),
        format!("{path}.subjectAltNames"),
        SERVER_SANS,
    );
    out.note_if(
        !tls.verify_certificate_spki.is_empty(),
        format!("{path}.verifyCertificateSpki"),
        SERVER_PINS,
    );
    out.note_if(
        !tls.verify_certificate_hash.is_empty(),
        format!("{path}.verifyCertificateHash"),
        SERVER_PINS,
    );
    out.note_if(
        tls.min_protocol_version != Default::default(),
        format!("{path}.minProtocolVersion"),
        TLS_VERSIONS,
    );
    out.note_if(
        tls.max_protocol_version != Default::default(),
        format!("{path}.maxProtocolVersion"),
        TLS_VERSIONS,
    );
    out.note_if(
        !tls.cipher_suites.is_empty(),
        format!("{path}.cipherSuites"),
        CIPHER_SUITES,
    );
    out.note_if(!tls.ecdh_curves.is_empty(), format!("{path}.ecdhCurves"), ECDH_CURVES);
    out.note_if(
        tls.insecure_skip_verify == Some(true),
        format!("{path}.insecureSkipVerify"),
        SERVER_INSECURE_SKIP_VERIFY,
    );
}

fn sidecar(out: &mut Notes, sc: &Sidecar) {
    for i in 0..sc.ingress.len() {
        out.note(format!("spec.ingress[{i}]"), SIDECAR_INGRESS);
    }
    out.note_if(
        sc.inbound_connection_pool.is_some(),
        "spec.inboundConnectionPool",
        SIDECAR_INGRESS,
    );
    if let Some(p) = &sc.outbound_traffic_policy {
        out.note_if(
            p.egress_proxy.is_some(),
            "spec.outboundTrafficPolicy.egressProxy",
            EGRESS_PROXY,
        );
    }
    for (i, e) in sc.egress.iter().enumerate() {
        out.note_if(
            e.capture_mode != Default::default(),
            format!("spec.egress[{i}].captureMode"),
            CAPTURE_MODE,
        );
    }
}

#[cfg(test)]
mod tests {
    use test_case::test_case;

    use super::*;
    use crate::validate::test_support::decode_clean;

    fn dr(yaml: &str) -> Vec<(String, String)> {
        not_applied(&Spec::DestinationRule(decode_clean(yaml)))
    }

    fn paths(notes: &[(String, String)]) -> Vec<&str> {
        notes.iter().map(|(p, _)| p.as_str()).collect()
    }

    #[test]
    fn applied_fields_get_no_note() {
        let notes = dr("host: a.com
trafficPolicy:
  loadBalancer: {simple: ROUND_ROBIN}
  tls: {mode: SIMPLE, sni: a.com, caCertificates: /ca.pem, insecureSkipVerify: false}
  portLevelSettings: [{port: {number: 443}, loadBalancer: {simple: RANDOM}}]
subsets: [{name: v1, labels: {version: v1}}]
");
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn every_traffic_policy_is_looked_at() {
        let notes = dr("host: a.com
trafficPolicy:
  connectionPool: {http: {http2KeepAlive: {interval: 30s, timeout: 5s}}}
  loadBalancer: {simple: ROUND_ROBIN, zoneAwareLbSetting: {enabled: true}, warmup: {duration: 10s}}
  outlierDetection: {outlierDetectionHttpErrorCodes: [503]}
  retryBudget: {budgetInterval: 10s}
  tls: {mode: SIMPLE, caCrl: /crl.pem}
  portLevelSettings:
  - port: {number: 80}
    loadBalancer: {backendUtilization: {}}
subsets:
- name: v1
  trafficPolicy:
    tunnel: {targetHost: b.com, targetPort: 443}
    portLevelSettings: [{port: {number: 81}, connectionPool: {tcp: {maxConnections: 1}}}]
");
        assert_eq!(
            paths(&notes),
            [
                "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting",
                "spec.trafficPolicy.loadBalancer.warmup",
                "spec.trafficPolicy.connectionPool",
                "spec.trafficPolicy.outlierDetection",
                "spec.trafficPolicy.tls.caCrl",
                "spec.trafficPolicy.portLevelSettings[0].loadBalancer.backendUtilization",
                "spec.trafficPolicy.retryBudget",
                "spec.subsets[0].trafficPolicy.portLevelSettings[0].connectionPool",
                "spec.subsets[0].trafficPolicy.tunnel",
            ]
        );
        assert!(
            notes
                .iter()
                .all(|(_, m)| m.starts_with("accepted but not applied by meshentry: "))
        );
    }

    #[test_case("http: [{route: [{destination: {host: a}}], corsPolicy: {allowOrigins: [{exact: x}]}}]", "spec.http[0].corsPolicy"; "cors")]
    #[test_case("http: [{redirect: {prefixRewrite: /v2/}}]", "spec.http[0].redirect.prefixRewrite"; "prefix rewrite")]
    #[test_case("http: [{directResponse: {status: 200, body: {bytes: aGk=}}}]", "spec.http[0].directResponse.body.bytes"; "body bytes")]
    #[test_case("http: [{match: [{sourceNamespace: ns}], route: [{destination: {host: a}}]}]", "spec.http[0].match[0].sourceNamespace"; "source namespace")]
    #[test_case("http: [{route: [{destination: {host: a}}], retries: {attempts: 1, backoff: 1s}}]", "spec.http[0].retries.backoff"; "backoff")]
    #[test_case("http: [{route: [{destination: {host: a}}], fault: {abort: {grpcStatus: UNAVAILABLE}}}]", "spec.http[0].fault.abort.grpcStatus"; "grpc abort")]
    #[test_case("tcp: [{match: [{sourceSubnet: 10.0.0.0/8}], route: [{destination: {host: a}}]}]", "spec.tcp[0].match[0].sourceSubnet"; "source subnet")]
    fn virtual_service_notes(yaml: &str, path: &str) {
        let notes = not_applied(&Spec::VirtualService(decode_clean(&format!("hosts: [a.com]\n{yaml}"))));
        assert_eq!(paths(&notes), [path]);
    }

    #[test]
    fn applied_virtual_service_fields_get_no_note() {
        let notes = not_applied(&Spec::VirtualService(decode_clean(
            "hosts: [a.com]
http:
- match: [{uri: {prefix: /a}, sourceLabels: {app: x}}]
  route: [{destination: {host: a}, weight: 100}]
  retries: {attempts: 2, perTryTimeout: 1s, retryOn: 5xx}
  mirror: {host: b}
  mirror_percent: 10
  fault: {abort: {httpStatus: 503}}
- redirect: {uri: /b}
- directResponse: {status: 200, body: {string: ok}}
",
        )));
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn passthrough_servers_get_no_certificate_notes() {
        let gw = |mode: &str| {
            let notes = not_applied(&Spec::Gateway(decode_clean(&format!(
                "servers: [{{port: {{number: 443, name: https, protocol: HTTPS}}, hosts: ['*'], tls: {{mode: {mode}, serverCertificate: /c, privateKey: /k, ecdhCurves: [P-256], caCertCredentialName: ca, insecureSkipVerify: true, minProtocolVersion: TLSV1_2}}}}]"
            ))));
            notes.into_iter().map(|(p, _)| p).collect::<Vec<_>>()
        };
        assert_eq!(
            gw("SIMPLE"),
            [
                "spec.servers[0].tls.caCertCredentialName",
                "spec.servers[0].tls.minProtocolVersion",
                "spec.servers[0].tls.ecdhCurves",
                "spec.servers[0].tls.insecureSkipVerify",
            ]
        );
        assert!(gw("PASSTHROUGH").is_empty());
    }

    #[test]
    fn sidecar_and_workload_group() {
        let notes = not_applied(&Spec::Sidecar(decode_clean(
            "ingress: [{port: {number: 80, protocol: HTTP, name: http}, defaultEndpoint: '127.0.0.1:8080'}]
inboundConnectionPool: {http: {http2KeepAlive: {interval: 1s, timeout: 1s}}}
egress: [{hosts: ['./*'], captureMode: NONE}]
outboundTrafficPolicy: {mode: ALLOW_ANY, egressProxy: {host: proxy.example.com}}
",
        )));
        assert_eq!(
            paths(&notes),
            [
                "spec.ingress[0]",
                "spec.inboundConnectionPool",
                "spec.outboundTrafficPolicy.egressProxy",
                "spec.egress[0].captureMode",
            ]
        );
        let notes = not_applied(&Spec::WorkloadGroup(decode_clean("template: {serviceAccount: sa}")));
        assert_eq!(paths(&notes), ["spec"]);
    }
}
