use super::Report;
use crate::model::DestinationRule;

pub fn validate_destination_rule(_dr: &DestinationRule, _namespace: &str, _r: &mut Report) {}
