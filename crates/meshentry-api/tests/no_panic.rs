//! Whatever bytes arrive, loading and validation report problems and never panic.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use meshentry_api::{LoadOptions, load_str};
use proptest::prelude::*;

const SEED_DIRS: [&str; 2] = ["v1alpha3", "v1beta1"];

/// Field names the model knows, so random documents reach deep into decoding and validation
/// rather than stopping at "unknown field".
const KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "spec",
    "name",
    "namespace",
    "labels",
    "hosts",
    "addresses",
    "ports",
    "number",
    "protocol",
    "targetPort",
    "resolution",
    "location",
    "endpoints",
    "address",
    "network",
    "weight",
    "workloadSelector",
    "exportTo",
    "subjectAltNames",
    "host",
    "trafficPolicy",
    "tls",
    "mode",
    "subsets",
    "http",
    "match",
    "route",
    "destination",
    "uri",
    "prefix",
    "exact",
    "regex",
    "tcp",
    "sniHosts",
    "gateways",
    "servers",
    "port",
    "selector",
    "egress",
    "outboundTrafficPolicy",
    "timeout",
    "retries",
    "attempts",
    "portLevelSettings",
    "loadBalancer",
    "simple",
    "connectionPool",
    "outlierDetection",
    "template",
    "probe",
    "items",
];

const KINDS: &[&str] = &[
    "ServiceEntry",
    "WorkloadEntry",
    "WorkloadGroup",
    "DestinationRule",
    "VirtualService",
    "Gateway",
    "Sidecar",
    "Pod",
    "Namespace",
    "List",
];

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("80".to_string()),
        Just("-1".to_string()),
        Just("99999999999999999999999".to_string()),
        Just("true".to_string()),
        Just("~".to_string()),
        Just("\"*\"".to_string()),
        Just("STATIC".to_string()),
        Just("DNS".to_string()),
        Just("\"unix:///a\"".to_string()),
        Just("1.2.3.4/24".to_string()),
        Just("10s".to_string()),
        "[a-z*.]{0,12}".prop_map(|s| format!("\"{s}\"")),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
    ]
}

/// A random YAML value in flow style.
fn value() -> impl Strategy<Value = String> {
    scalar().prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("{{{}}}", body.join(", "))
            }),
        ]
    })
}

fn document() -> impl Strategy<Value = String> {
    (
        prop::sample::select(KINDS),
        prop::sample::select(&["networking.istio.io/v1", "networking.istio.io/v1alpha3", "v1", "bogus/v9", ""][..]),
        value(),
        value(),
    )
        .prop_map(|(kind, api, meta, spec)| format!("apiVersion: {api}\nkind: {kind}\nmetadata: {meta}\nspec: {spec}\nitems: [{{kind: {kind}, spec: {spec}}}]\n"))
}

fn seeds() -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed");
    let mut out = Vec::new();
    for d in SEED_DIRS {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(d))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            out.push(std::fs::read_to_string(p).unwrap());
        }
    }
    out
}

fn load(text: &str) {
    let loaded = load_str("fuzz.yaml", text, &LoadOptions::default());
    // Every finding must render; positions are 1-based.
    for f in &loaded.findings {
        let _ = f.to_string();
        assert!(f.line >= 1 && f.column >= 1, "{f:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        load(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_documents(docs in prop::collection::vec(document(), 1..4)) {
        load(&docs.join("---\n"));
    }

    #[test]
    fn mutated_seed_examples(which in any::<prop::sample::Index>(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let seeds = seeds();
        let mut bytes = seeds[which.index(seeds.len())].clone().into_bytes();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        load(&String::from_utf8_lossy(&bytes));
    }
}
