use super::Report;
use crate::model::Gateway;

pub fn validate_gateway(_gw: &Gateway, _name: &str, _r: &mut Report) {}
