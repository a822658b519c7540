//! Istio's validation rules (../shared/spec/istio-semantics.md part (a)), with Istio's messages.
//!
//! Each `validate_*` function looks at one resource and adds findings to a [`Report`], each with
//! a field path from the resource root (`spec.ports[1].number`); [`crate::load`] places them on
//! the source through that path. Findings accumulate: a validator returns early only where
//! Istio's does (A0).

pub mod common;
mod destination_rule;
pub mod files;
mod gateway;
pub mod kube;
pub mod not_applied;
mod service_entry;
mod sidecar;
mod virtual_service;

pub use destination_rule::validate_destination_rule;
pub use gateway::validate_gateway;
pub use service_entry::{validate_service_entry, validate_workload_entry, validate_workload_group};
pub use sidecar::validate_sidecar;
pub use virtual_service::validate_virtual_service;

/// Whether a finding rejects the resource (Istio's errors), warns (Istio's warnings), or only
/// informs (`istioctl analyze`'s Info level: e.g. a field meshentry accepts but does not apply).
/// Ordered most severe first, so `severity <= threshold` selects by threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Info,
}

/// One finding of a validator: where (a field path) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub path: String,
    pub message: String,
}

/// The findings about one resource.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            severity: Severity::Error,
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            severity: Severity::Warning,
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn info(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            severity: Severity::Info,
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Error)
    }

    /// Messages only, for tests.
    pub fn messages(&self) -> Vec<String> {
        self.problems.iter().map(|p| p.message.clone()).collect()
    }

    /// The messages of one severity, for tests.
    pub fn messages_of(&self, severity: Severity) -> Vec<String> {
        self.problems
            .iter()
            .filter(|p| p.severity == severity)
            .map(|p| p.message.clone())
            .collect()
    }
}

/// Shared by the validators' tests.
#[cfg(test)]
pub(crate) mod test_support {
    use serde::de::DeserializeOwned;

    use crate::de::{DecodeCx, decode};
    use crate::yaml::parse_stream;

    /// Decodes a YAML snippet as a spec of type `T`, asserting it decodes without problems (so
    /// a test's findings come from validation alone).
    pub fn decode_clean<T: DeserializeOwned + Default>(yaml: &str) -> T {
        let doc = parse_stream(yaml).unwrap().remove(0);
        let cx = DecodeCx::new(true);
        let spec = decode::<T>(&doc, "spec", &cx);
        let issues = cx.into_issues();
        assert!(issues.is_empty(), "{issues:?}");
        spec
    }
}
