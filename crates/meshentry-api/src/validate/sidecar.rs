use super::Report;
use crate::model::Sidecar;

pub fn validate_sidecar(_sc: &Sidecar, _namespace: &str, _r: &mut Report) {}
