//! What this binary is: its version, the commit and compiler it was built with, its target and
//! the Istio APIs it reads. `meshentry version` prints it and `/server_info` reports it, from
//! this one place so the two never disagree.

use serde_json::{Value, json};

/// The crate version (the workspace's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit built from, or "unknown" (a build without git).
pub const COMMIT: &str = env!("MESHENTRY_GIT_COMMIT");
/// `rustc --version` of the compiler that built it.
pub const RUSTC: &str = env!("MESHENTRY_RUSTC_VERSION");
/// The target triple.
pub const TARGET: &str = env!("MESHENTRY_TARGET");

/// The Istio API versions read, as `group/version`.
pub fn istio_apis() -> Vec<String> {
    meshentry_api::load::ISTIO_VERSIONS
        .iter()
        .map(|v| format!("{}/{v}", meshentry_api::load::ISTIO_GROUP))
        .collect()
}

/// For `--output json` and `/server_info`. Its keys are single words so that the one object
/// fits both documents' casings: camelCase for the CLI's, Envoy's snake_case for `/server_info`
/// (docs/json.md).
pub fn json() -> Value {
    json!({
        "version": VERSION,
        "commit": COMMIT,
        "rustc": RUSTC,
        "target": TARGET,
        "apis": istio_apis(),
    })
}

/// What `meshentry --version` prints after the program name (clap wants a constant).
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit: ",
    env!("MESHENTRY_GIT_COMMIT"),
    "\nrustc: ",
    env!("MESHENTRY_RUSTC_VERSION"),
    "\ntarget: ",
    env!("MESHENTRY_TARGET"),
    "\nistio apis: networking.istio.io/v1alpha3, networking.istio.io/v1beta1, networking.istio.io/v1",
);

/// For people: the first line is what `meshentry --version` has always printed.
pub fn text() -> String {
    format!("meshentry {LONG_VERSION}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_every_api_version_read() {
        let apis = istio_apis().join(", ");
        assert!(LONG_VERSION.ends_with(&format!("istio apis: {apis}")), "{LONG_VERSION}");
        assert!(text().starts_with(&format!("meshentry {VERSION}\ncommit: {COMMIT}\n")));
    }
}
