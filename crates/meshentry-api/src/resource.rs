//! A loaded resource: its kind, metadata, typed spec and where it was written.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::model::*;
use crate::validate::Severity;
use crate::yaml::Pos;

/// The kinds meshentry reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Kind {
    ServiceEntry,
    WorkloadEntry,
    WorkloadGroup,
    DestinationRule,
    VirtualService,
    Gateway,
    Sidecar,
    Pod,
    Namespace,
}

impl Kind {
    pub const ISTIO: [Kind; 7] = [
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::WorkloadGroup,
        Kind::DestinationRule,
        Kind::VirtualService,
        Kind::Gateway,
        Kind::Sidecar,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::WorkloadGroup => "WorkloadGroup",
            Kind::DestinationRule => "DestinationRule",
            Kind::VirtualService => "VirtualService",
            Kind::Gateway => "Gateway",
            Kind::Sidecar => "Sidecar",
            Kind::Pod => "Pod",
            Kind::Namespace => "Namespace",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ISTIO
            .into_iter()
            .chain([Kind::Pod, Kind::Namespace])
            .find(|k| k.as_str() == s)
    }

    pub fn is_istio(self) -> bool {
        !matches!(self, Kind::Pod | Kind::Namespace)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The typed body of a resource.
#[derive(Clone, Debug, PartialEq)]
pub enum Spec {
    ServiceEntry(ServiceEntry),
    WorkloadEntry(WorkloadEntry),
    WorkloadGroup(WorkloadGroup),
    DestinationRule(DestinationRule),
    VirtualService(VirtualService),
    Gateway(Gateway),
    Sidecar(Sidecar),
    Pod { spec: PodSpec, status: PodStatus },
    Namespace,
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::ServiceEntry(_) => Kind::ServiceEntry,
            Spec::WorkloadEntry(_) => Kind::WorkloadEntry,
            Spec::WorkloadGroup(_) => Kind::WorkloadGroup,
            Spec::DestinationRule(_) => Kind::DestinationRule,
            Spec::VirtualService(_) => Kind::VirtualService,
            Spec::Gateway(_) => Kind::Gateway,
            Spec::Sidecar(_) => Kind::Sidecar,
            Spec::Pod { .. } => Kind::Pod,
            Spec::Namespace => Kind::Namespace,
        }
    }
}

/// Where a resource (or a finding) was written.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    pub file: Arc<str>,
    pub pos: Pos,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.pos.line, self.pos.column)
    }
}

/// One resource as loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub api_version: String,
    pub meta: ObjectMeta,
    /// `metadata.namespace`, or the loader's default namespace when absent.
    pub namespace: String,
    pub spec: Spec,
    pub origin: Origin,
    /// Position in load order. Istio orders same-host resources oldest first by
    /// `creationTimestamp`; files have none, so load order stands in for age (see
    /// [`Resource::age_key`]).
    pub order: usize,
    /// False when validation found errors in this resource.
    pub valid: bool,
}

impl Resource {
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// Sort key for "oldest first": `creationTimestamp` when given (RFC 3339 in UTC sorts as
    /// text), else load order, then namespace and name as Istio breaks ties.
    pub fn age_key(&self) -> (&str, usize, &str, &str) {
        (
            self.meta.creation_timestamp.as_deref().unwrap_or(""),
            self.order,
            &self.namespace,
            &self.meta.name,
        )
    }

    /// `Kind namespace/name`, as findings print it.
    pub fn display_name(&self) -> String {
        format!("{} {}/{}", self.kind(), self.namespace, self.meta.name)
    }
}

/// One validation finding, placed on the source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub file: String,
    pub line: u32,
    pub column: u32,
    /// Empty for problems that precede knowing the resource (YAML syntax, missing kind).
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Field path from the resource root, e.g. `spec.ports[1].number`; empty for a whole
    /// document.
    pub field: String,
    pub severity: Severity,
    /// `istioctl analyze`'s message code (`IST0101`) when Istio has one for this finding;
    /// empty otherwise.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub code: String,
    pub message: String,
}

impl fmt::Display for Finding {
    /// `FILE:LINE:COL: Kind namespace/name: spec.field.path: message`, with `warning: ` before
    /// the message of a warning; parts that are unknown are left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.kind.is_empty() {
            write!(f, "{} {}/{}: ", self.kind, self.namespace, self.name)?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        match self.severity {
            Severity::Error => {}
            Severity::Warning => f.write_str("warning: ")?,
            Severity::Info => f.write_str("info: ")?,
        }
        if !self.code.is_empty() {
            write!(f, "{}: ", self.code)?;
        }
        f.write_str(&self.message)
    }
}
