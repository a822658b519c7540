//! The files a proxy reads for a resource: the certificates, keys and CA bundles a
//! DestinationRule's client TLS settings name by path. This module only lists them, with their
//! field paths; `meshentry validate` checks that each exists on the machine it runs on, since a
//! proxy run there fails every connection the policy applies to when one is missing (and
//! `explain` refuses the route). `credentialName` names a Kubernetes Secret, not a file, and is
//! not listed.

use crate::model::{ClientTlsMode, ClientTlsSettings, DestinationRule, TrafficPolicy};
use crate::resource::Spec;

/// Each file path `spec` names that a proxy reads, as `(field path, file)`. Only what the TLS
/// mode uses (D6): SIMPLE reads `caCertificates`; MUTUAL also `clientCertificate` and
/// `privateKey`; ISTIO_MUTUAL and DISABLE read none of them, nor does a setting with a
/// `credentialName`. `caCrl` is accepted but not applied (`not_applied`), so it is not read.
pub fn read_files(spec: &Spec) -> Vec<(String, &str)> {
    let mut out = Vec::new();
    if let Spec::DestinationRule(dr) = spec {
        destination_rule(&mut out, dr);
    }
    out
}

fn destination_rule<'a>(out: &mut Vec<(String, &'a str)>, dr: &'a DestinationRule) {
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy(out, "spec.trafficPolicy", tp);
    }
    for (i, subset) in dr.subsets.iter().enumerate() {
        if let Some(tp) = &subset.traffic_policy {
            traffic_policy(out, &format!("spec.subsets[{i}].trafficPolicy"), tp);
        }
    }
}

fn traffic_policy<'a>(out: &mut Vec<(String, &'a str)>, path: &str, tp: &'a TrafficPolicy) {
    if let Some(tls) = &tp.tls {
        client_tls(out, &format!("{path}.tls"), tls);
    }
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        if let Some(tls) = &p.tls {
            client_tls(out, &format!("{path}.portLevelSettings[{i}].tls"), tls);
        }
    }
}

fn client_tls<'a>(out: &mut Vec<(String, &'a str)>, path: &str, tls: &'a ClientTlsSettings) {
    if !tls.credential_name.is_empty() {
        return;
    }
    let fields: &[(&str, &'a str)] = match tls.mode {
        ClientTlsMode::Simple => &[("caCertificates", &tls.ca_certificates)],
        ClientTlsMode::Mutual => &[
            ("clientCertificate", &tls.client_certificate),
            ("privateKey", &tls.private_key),
            ("caCertificates", &tls.ca_certificates),
        ],
        ClientTlsMode::Disable | ClientTlsMode::IstioMutual => &[],
    };
    for (field, file) in fields {
        if !file.is_empty() {
            out.push((format!("{path}.{field}"), file));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::test_support::decode_clean;

    fn files(yaml: &str) -> Vec<(String, String)> {
        let dr: DestinationRule = decode_clean(yaml);
        read_files(&Spec::DestinationRule(dr))
            .into_iter()
            .map(|(p, f)| (p, f.to_string()))
            .collect()
    }

    fn pairs(want: &[(&str, &str)]) -> Vec<(String, String)> {
        want.iter().map(|(p, f)| (p.to_string(), f.to_string())).collect()
    }

    #[test]
    fn mutual_reads_certificate_key_and_ca_everywhere_a_policy_can_be() {
        let tls = "{mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem}";
        let got = files(&format!(
            "host: a.com\ntrafficPolicy: {{tls: {tls}, portLevelSettings: [{{port: {{number: 443}}, tls: {tls}}}]}}\nsubsets: [{{name: v1, trafficPolicy: {{tls: {tls}}}}}]\n"
        ));
        let mut want = Vec::new();
        for path in [
            "spec.trafficPolicy.tls",
            "spec.trafficPolicy.portLevelSettings[0].tls",
            "spec.subsets[0].trafficPolicy.tls",
        ] {
            for (field, file) in [
                ("clientCertificate", "/c.pem"),
                ("privateKey", "/k.pem"),
                ("caCertificates", "/ca.pem"),
            ] {
                want.push((format!("{path}.{field}"), file.to_string()));
            }
        }
        assert_eq!(got, want);
    }

    #[test]
    fn only_the_files_the_mode_reads() {
        // SIMPLE sends no client certificate, so its files are not read.
        assert_eq!(
            files(
                "host: a.com\ntrafficPolicy: {tls: {mode: SIMPLE, clientCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem}}\n"
            ),
            pairs(&[("spec.trafficPolicy.tls.caCertificates", "/ca.pem")])
        );
        assert_eq!(files("host: a.com\ntrafficPolicy: {tls: {mode: SIMPLE}}\n"), pairs(&[]));
        for mode in ["ISTIO_MUTUAL", "DISABLE"] {
            assert_eq!(
                files(&format!(
                    "host: a.com\ntrafficPolicy: {{tls: {{mode: {mode}, caCertificates: /ca.pem}}}}\n"
                )),
                pairs(&[]),
                "{mode}"
            );
        }
        // A Secret, not a file; the CRL is not applied.
        assert_eq!(
            files("host: a.com\ntrafficPolicy: {tls: {mode: MUTUAL, credentialName: db}}\n"),
            pairs(&[])
        );
        assert_eq!(
            files("host: a.com\ntrafficPolicy: {tls: {mode: SIMPLE, caCrl: /crl.pem}}\n"),
            pairs(&[])
        );
    }
}
