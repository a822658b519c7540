use super::Report;
use crate::model::{ServiceEntry, WorkloadEntry, WorkloadGroup};

pub fn validate_service_entry(_se: &ServiceEntry, _namespace: &str, _r: &mut Report) {}
pub fn validate_workload_entry(_we: &WorkloadEntry, _r: &mut Report) {}
pub fn validate_workload_group(_wg: &WorkloadGroup, _r: &mut Report) {}
