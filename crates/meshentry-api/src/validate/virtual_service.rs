use super::Report;
use crate::model::VirtualService;

pub fn validate_virtual_service(_vs: &VirtualService, _namespace: &str, _r: &mut Report) {}
