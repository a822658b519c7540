use std::collections::BTreeMap;

use serde::Deserialize;

/// Kubernetes `metadata`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    pub generate_name: String,
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub creation_timestamp: Option<String>,
    pub deletion_timestamp: Option<String>,
    pub deletion_grace_period_seconds: Option<i64>,
    pub generation: Option<i64>,
    pub resource_version: Option<String>,
    pub uid: Option<String>,
    pub self_link: Option<String>,
    pub owner_references: Vec<serde_json::Value>,
    pub finalizers: Vec<String>,
    pub managed_fields: Vec<serde_json::Value>,
}

/// `workloadSelector` of ServiceEntry, Sidecar, DestinationRule: the workloads whose labels
/// contain all of these.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct WorkloadSelector {
    pub labels: BTreeMap<String, String>,
}

/// A protobuf `Duration` as written (`10s`, `1.5s`, `100ms`, `1h30m`). Kept as text so that a
/// malformed value is reported by validation with its field path instead of failing decoding.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Duration(pub String);

impl Duration {
    /// Parses Go/Istio duration syntax: a sequence of decimal numbers with units `h`, `m`,
    /// `s`, `ms`, `us` (or `µs`), `ns`.
    pub fn parse(&self) -> Result<std::time::Duration, String> {
        parse_duration(&self.0)
    }
}

pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("invalid duration {text:?} (expected e.g. 10s, 1.5s, 100ms, 1h30m)");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    if rest == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        if num_end == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_end..];
        total += value * scale;
    }
    if !total.is_finite() || total > 315_576_000_000.0 {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use std::time::Duration as D;

    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(D::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(D::from_millis(1500)));
        assert_eq!(parse_duration("100ms"), Ok(D::from_millis(100)));
        assert_eq!(parse_duration("1h30m"), Ok(D::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(D::ZERO));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("").is_err());
    }
}
