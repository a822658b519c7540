//! Test configurations: the YAML around an Istio resource is written here once, so that a
//! test's fixture is a line per resource saying only what sets it apart, and every test builds
//! its snapshot the one way a proxy does.

use crate::base::config::ProxyConfig;
use crate::model::snapshot::Snapshot;

/// A `networking.istio.io/v1` resource as a YAML document; `metadata` and `spec` are the
/// insides of flow mappings.
pub(crate) fn doc(kind: &str, metadata: &str, spec: &str) -> String {
    doc_at("v1", kind, metadata, spec)
}

/// [`doc`] at another version of the API.
pub(crate) fn doc_at(version: &str, kind: &str, metadata: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/{version}\nkind: {kind}\nmetadata: {{{metadata}}}\nspec: {{{spec}}}\n"
    )
}

/// A STATIC ServiceEntry with one endpoint at `address`; `spec` holds the rest.
pub(crate) fn static_se(metadata: &str, spec: &str, address: &str) -> String {
    doc(
        "ServiceEntry",
        metadata,
        &format!("{spec}, resolution: STATIC, endpoints: [{{address: {address}}}]"),
    )
}

/// The snapshot a proxy run with `config` builds from `yaml`, which must load without errors.
pub(crate) fn snapshot(yaml: &str, config: &ProxyConfig) -> Snapshot {
    let loaded = meshentry_api::load_str("t.yaml", yaml, &meshentry_api::LoadOptions::default());
    assert!(!loaded.has_errors(), "{:?}", loaded.errors().collect::<Vec<_>>());
    let valid: Vec<_> = loaded.valid().collect();
    Snapshot::build(&valid, config, 1)
}

/// Asserts that each of `needles` is part of one of the snapshot's warnings.
pub(crate) fn assert_warned(snap: &Snapshot, needles: &[&str]) {
    for needle in needles {
        assert!(
            snap.warnings.iter().any(|w| w.contains(needle)),
            "{needle}: {:?}",
            snap.warnings
        );
    }
}
