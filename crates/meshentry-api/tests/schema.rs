//! The model against Istio's own schema: every field of the OpenAPI schemas of Istio's
//! networking CRDs (vendored in `tests/istio/`, every served version) is a field of meshentry's
//! model with a type that holds every value the schema allows, and every field of the model is
//! in the schema. The model's side comes from serde's derive ([`shape_of`]): the same field
//! lists the decoder checks unknown fields against, so nothing here is written by hand.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::collections::{BTreeMap, BTreeSet};

use meshentry_api::de::{DecodeCx, Shape, decode, shape_of};
use meshentry_api::model;
use meshentry_api::yaml::{Node, Value, parse_stream};
use meshentry_api::{LoadOptions, Severity, load_str};
use serde::de::DeserializeOwned;

/// The vendored CRD files, oldest first (see `tests/istio/README.md`).
const CRD_FILES: [(&str, &str); 2] = [
    (
        "networking-istio-api-b8f8791d.yaml",
        include_str!("istio/networking-istio-api-b8f8791d.yaml"),
    ),
    (
        "networking-istio-86c9f01f.yaml",
        include_str!("istio/networking-istio-86c9f01f.yaml"),
    ),
];

/// The kinds meshentry reads, and the versions each must serve.
const KINDS: [&str; 7] = [
    "ServiceEntry",
    "WorkloadEntry",
    "WorkloadGroup",
    "DestinationRule",
    "VirtualService",
    "Gateway",
    "Sidecar",
];
const VERSIONS: [&str; 3] = ["v1alpha3", "v1beta1", "v1"];

/// The schema of one kind's `spec` in one version of one file.
struct SpecSchema {
    file: &'static str,
    kind: String,
    version: String,
    spec: Node,
}

fn get<'a>(node: &'a Node, key: &str) -> Option<&'a Node> {
    node.get(key)
}

fn text<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.get(key).and_then(Node::as_str)
}

fn is_true(node: &Node, key: &str) -> bool {
    text(node, key) == Some("true")
}

fn entries(node: &Node) -> &[(Node, Node)] {
    match &node.value {
        Value::Map(m) => m,
        _ => &[],
    }
}

fn items(node: &Node) -> &[Node] {
    match &node.value {
        Value::Seq(s) => s,
        _ => &[],
    }
}

fn int_of(node: &Node, key: &str) -> Option<i128> {
    text(node, key).and_then(|t| t.parse::<f64>().ok()).map(|f| f as i128)
}

/// Every served version of the kinds meshentry reads, from every vendored file.
fn spec_schemas() -> Vec<SpecSchema> {
    let mut out = Vec::new();
    for (file, yaml) in CRD_FILES {
        for doc in parse_stream(yaml).unwrap() {
            let spec = get(&doc, "spec").unwrap();
            assert_eq!(text(spec, "group"), Some("networking.istio.io"), "{file}");
            let kind = text(get(spec, "names").unwrap(), "kind").unwrap();
            if !KINDS.contains(&kind) {
                continue;
            }
            for v in items(get(spec, "versions").unwrap()) {
                if !is_true(v, "served") {
                    continue;
                }
                let schema = get(v, "schema")
                    .and_then(|s| get(s, "openAPIV3Schema"))
                    .and_then(|s| get(s, "properties"))
                    .and_then(|s| get(s, "spec"))
                    .unwrap();
                out.push(SpecSchema {
                    file,
                    kind: kind.to_string(),
                    version: text(v, "name").unwrap().to_string(),
                    spec: schema.clone(),
                });
            }
        }
    }
    out
}

/// The model's shape of a kind's `spec`.
fn model_shape(kind: &str) -> Shape {
    match kind {
        "ServiceEntry" => shape_of::<model::ServiceEntry>(),
        "WorkloadEntry" => shape_of::<model::WorkloadEntry>(),
        "WorkloadGroup" => shape_of::<model::WorkloadGroup>(),
        "DestinationRule" => shape_of::<model::DestinationRule>(),
        "VirtualService" => shape_of::<model::VirtualService>(),
        "Gateway" => shape_of::<model::Gateway>(),
        "Sidecar" => shape_of::<model::Sidecar>(),
        other => panic!("no model for {other}"),
    }
}

/// The decode problems of a `spec` as the model reads it.
fn decode_issues(kind: &str, spec: &Node) -> Vec<String> {
    fn run<T: DeserializeOwned + Default>(spec: &Node) -> Vec<String> {
        let cx = DecodeCx::new(true);
        let _: T = decode(spec, "spec", &cx);
        cx.into_issues()
            .into_iter()
            .map(|i| format!("{}: {}", i.path, i.message))
            .collect()
    }
    match kind {
        "ServiceEntry" => run::<model::ServiceEntry>(spec),
        "WorkloadEntry" => run::<model::WorkloadEntry>(spec),
        "WorkloadGroup" => run::<model::WorkloadGroup>(spec),
        "DestinationRule" => run::<model::DestinationRule>(spec),
        "VirtualService" => run::<model::VirtualService>(spec),
        "Gateway" => run::<model::Gateway>(spec),
        "Sidecar" => run::<model::Sidecar>(spec),
        other => panic!("no model for {other}"),
    }
}

/// What one walk of a schema beside the model's shape found.
#[derive(Default)]
struct Walk {
    /// Paths the schema has and the model does not.
    missing_in_model: BTreeSet<String>,
    /// Paths the model has and the schema does not.
    missing_in_schema: BTreeSet<String>,
    /// Paths whose model type does not hold what the schema allows.
    type_mismatches: BTreeSet<String>,
    /// Every path the schema has, for the coverage check.
    schema_paths: BTreeSet<String>,
}

fn unwrap_optional(shape: &Shape) -> &Shape {
    match shape {
        Shape::Optional(inner) => unwrap_optional(inner),
        other => other,
    }
}

fn describe(shape: &Shape) -> String {
    match shape {
        Shape::Struct(_) => "an object".into(),
        Shape::Seq(_) => "a list".into(),
        Shape::Map(_) => "a map".into(),
        Shape::Enum(v) => format!("an enum {v:?}"),
        Shape::Optional(inner) => format!("an optional {}", describe(inner)),
        other => format!("{other:?}"),
    }
}

/// The values a schema integer allows: its bounds, else its format's, else a 64-bit integer's
/// (a Kubernetes integer).
fn schema_int_range(s: &Node) -> (i128, i128) {
    let (fmin, fmax) = match text(s, "format") {
        Some("int32") => (i128::from(i32::MIN), i128::from(i32::MAX)),
        _ => (i128::from(i64::MIN), i128::from(i64::MAX)),
    };
    (
        int_of(s, "minimum").unwrap_or(fmin),
        int_of(s, "maximum").unwrap_or(fmax),
    )
}

fn walk(s: &Node, shape: &Shape, path: &str, check_ranges: bool, w: &mut Walk) {
    w.schema_paths.insert(path.to_string());
    // A nullable schema field is a proto wrapper (`BoolValue`, `UInt32Value`...): unset means
    // something other than the zero value, so the model must keep it apart.
    if is_true(s, "nullable") && !matches!(shape, Shape::Optional(_)) {
        w.type_mismatches.insert(format!(
            "{path}: the schema's field is nullable (a wrapper type), the model's is not an Option"
        ));
    }
    let shape = unwrap_optional(shape);
    let mismatch = |w: &mut Walk, want: &str| {
        w.type_mismatches
            .insert(format!("{path}: the schema has {want}, the model {}", describe(shape)));
    };
    if is_true(s, "x-kubernetes-int-or-string") {
        return;
    }
    match text(s, "type") {
        Some("object") => {
            if let Some(props) = get(s, "properties") {
                let Shape::Struct(fields) = shape else {
                    return mismatch(w, "an object");
                };
                let model: BTreeMap<&str, &Shape> = fields.iter().map(|(k, v)| (*k, v)).collect();
                for (key, sub) in entries(props) {
                    let name = key.as_str().unwrap();
                    let sub_path = format!("{path}.{name}");
                    match model.get(name) {
                        Some(sub_shape) => walk(sub, sub_shape, &sub_path, check_ranges, w),
                        None => {
                            w.missing_in_model.insert(sub_path);
                        }
                    }
                }
                for name in model.keys() {
                    if get(props, name).is_none() {
                        w.missing_in_schema.insert(format!("{path}.{name}"));
                    }
                }
            } else if let Some(values) = get(s, "additionalProperties") {
                match shape {
                    Shape::Map(inner) => walk(values, inner, &format!("{path}.*"), check_ranges, w),
                    _ => mismatch(w, "a map"),
                }
            } else if is_true(s, "x-kubernetes-preserve-unknown-fields") {
                if !matches!(shape, Shape::Any | Shape::Map(_)) {
                    mismatch(w, "any object");
                }
            } else if !matches!(shape, Shape::Struct(f) if f.is_empty()) {
                mismatch(w, "an empty object");
            }
        }
        Some("array") => match shape {
            Shape::Seq(inner) => walk(get(s, "items").unwrap(), inner, &format!("{path}[]"), check_ranges, w),
            _ => mismatch(w, "a list"),
        },
        Some("string") => match (get(s, "enum"), shape) {
            (Some(values), Shape::Enum(variants)) => {
                let schema: BTreeSet<&str> = items(values).iter().filter_map(Node::as_str).collect();
                let model: BTreeSet<&str> = variants.iter().copied().collect();
                if schema != model {
                    w.type_mismatches.insert(format!(
                        "{path}: the schema's values are {schema:?}, the model's {model:?}"
                    ));
                }
            }
            (Some(_), _) => mismatch(w, "an enum"),
            (None, Shape::String) => {}
            (None, _) => mismatch(w, "a string"),
        },
        Some("integer") => match shape {
            Shape::Int { min, max } => {
                let (smin, smax) = schema_int_range(s);
                if check_ranges && (smin < *min || smax > *max) {
                    w.type_mismatches.insert(format!(
                        "{path}: the schema allows {smin}..={smax}, the model's type {min}..={max}"
                    ));
                }
            }
            _ => mismatch(w, "an integer"),
        },
        Some("number") => {
            if !matches!(shape, Shape::Float) {
                mismatch(w, "a number");
            }
        }
        Some("boolean") => {
            if !matches!(shape, Shape::Bool) {
                mismatch(w, "a boolean");
            }
        }
        other => {
            w.type_mismatches
                .insert(format!("{path}: schema type {other:?} is not one this test knows"));
        }
    }
}

/// Walks every served version of every kind in every file.
fn walk_all() -> Vec<(SpecSchema, Walk)> {
    let newest = CRD_FILES[CRD_FILES.len() - 1].0;
    spec_schemas()
        .into_iter()
        .map(|s| {
            let mut w = Walk::default();
            // Ranges are checked against the newest file only: the older one's generator gave
            // uint32 wrappers (`minClusterSize`) no upper bound.
            walk(&s.spec, &model_shape(&s.kind), "spec", s.file == newest, &mut w);
            (s, w)
        })
        .collect()
}

#[test]
fn every_kind_is_served_in_every_version_of_every_file() {
    let got: BTreeSet<(&str, String, String)> = spec_schemas()
        .into_iter()
        .map(|s| (s.file, s.kind, s.version))
        .collect();
    for (file, _) in CRD_FILES {
        for kind in KINDS {
            for version in VERSIONS {
                assert!(
                    got.contains(&(file, kind.to_string(), version.to_string())),
                    "{file} does not serve {kind} {version}"
                );
            }
        }
    }
}

#[test]
fn the_model_knows_every_field_of_the_schema() {
    let mut missing = BTreeSet::new();
    for (s, w) in walk_all() {
        for p in w.missing_in_model {
            missing.insert(format!("{} {}: {p}", s.kind, s.version));
        }
    }
    assert!(
        missing.is_empty(),
        "fields of Istio's schema that the model lacks:\n{}",
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_schema_has_every_field_of_the_model() {
    // A field counts when some vendored file has it (the newer file adds fields).
    let mut extra: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    let walks = walk_all();
    let files = CRD_FILES.len();
    for (s, w) in &walks {
        for p in &w.missing_in_schema {
            *extra.entry((s.kind.clone(), s.version.clone(), p.clone())).or_default() += 1;
        }
    }
    let extra: Vec<String> = extra
        .into_iter()
        .filter(|(_, n)| *n == files)
        .map(|((k, v, p), _)| format!("{k} {v}: {p}"))
        .collect();
    assert!(
        extra.is_empty(),
        "fields of the model that no Istio schema has:\n{}",
        extra.join("\n")
    );
}

#[test]
fn the_model_types_hold_what_the_schema_allows() {
    let mut bad = BTreeSet::new();
    for (s, w) in walk_all() {
        for p in w.type_mismatches {
            bad.insert(format!("{} {} ({}): {p}", s.kind, s.version, s.file));
        }
    }
    assert!(
        bad.is_empty(),
        "model types that differ from Istio's schema:\n{}",
        bad.into_iter().collect::<Vec<_>>().join("\n")
    );
}

/// Which end of each integer's range a generated document uses.
#[derive(Clone, Copy)]
enum End {
    Low,
    High,
}

/// A JSON document that sets every field the schema has: objects with every property, lists
/// with one item, maps with one entry, and integers at one end of their range.
fn generate(s: &Node, end: End) -> serde_json::Value {
    use serde_json::Value as J;
    if is_true(s, "x-kubernetes-int-or-string") {
        return J::from(1);
    }
    match text(s, "type") {
        Some("object") => {
            let mut obj = serde_json::Map::new();
            if let Some(props) = get(s, "properties") {
                for (key, sub) in entries(props) {
                    obj.insert(key.as_str().unwrap().to_string(), generate(sub, end));
                }
            } else if let Some(values) = get(s, "additionalProperties") {
                obj.insert("k".into(), generate(values, end));
            } else if is_true(s, "x-kubernetes-preserve-unknown-fields") {
                obj.insert("anything".into(), J::from(1));
            }
            J::Object(obj)
        }
        Some("array") => J::Array(vec![generate(get(s, "items").unwrap(), end)]),
        Some("string") => match get(s, "enum").map(items) {
            Some(values) => J::from(values.first().and_then(Node::as_str).unwrap()),
            None => J::from("x"),
        },
        Some("integer") => {
            let (min, max) = schema_int_range(s);
            let v = match end {
                End::Low => min,
                End::High => max,
            };
            J::from(i64::try_from(v).unwrap())
        }
        Some("number") => J::from(1.5),
        Some("boolean") => J::from(true),
        other => panic!("schema type {other:?}"),
    }
}

#[test]
fn a_document_setting_every_field_decodes_without_a_problem() {
    let newest = CRD_FILES[CRD_FILES.len() - 1].0;
    let mut problems = BTreeSet::new();
    for s in spec_schemas() {
        for end in [End::Low, End::High] {
            // See walk_all: the older file's unbounded uint32 wrapper is not a value Istio takes.
            if s.file != newest && matches!(end, End::High) {
                continue;
            }
            let json = serde_json::to_string(&generate(&s.spec, end)).unwrap();
            let node = parse_stream(&json).unwrap().remove(0);
            for issue in decode_issues(&s.kind, &node) {
                problems.insert(format!("{} {} ({}): {issue}", s.kind, s.version, s.file));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "a document with every field of the schema does not decode:\n{}",
        problems.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_loader_reads_every_field_in_every_version() {
    // The same through the loader, as `meshentry validate` reads a file: the resource is found,
    // its apiVersion accepted, and no field is unknown (validation findings are expected: the
    // values are arbitrary).
    for s in spec_schemas() {
        let doc = serde_json::json!({
            "apiVersion": format!("networking.istio.io/{}", s.version),
            "kind": s.kind,
            "metadata": {"name": "every-field", "namespace": "ns"},
            "spec": generate(&s.spec, End::Low),
        });
        let loaded = load_str("every-field.json", &doc.to_string(), &LoadOptions::default());
        assert_eq!(loaded.resources.len(), 1, "{} {}", s.kind, s.version);
        let bad: Vec<String> = loaded
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .filter(|f| f.message.contains("unknown field") || f.field == "apiVersion")
            .map(|f| f.to_string())
            .collect();
        assert!(
            bad.is_empty(),
            "{} {} ({}):\n{}",
            s.kind,
            s.version,
            s.file,
            bad.join("\n")
        );
    }
}
/// One step from a schema node to a child, as a document and a finding path write it.
#[derive(Clone)]
enum Step {
    Field(String),
    Item,
    Entry,
}

/// A value the schema refuses, next to one it takes, for a field.
struct Bound {
    steps: Vec<Step>,
    inside: serde_json::Value,
    outside: serde_json::Value,
}

/// Every explicit bound (`minimum`, `maximum`) of a number or integer of the schema that its
/// model type does not enforce by itself, with the steps that lead to the field: the bounds
/// Kubernetes enforces before Istio sees the resource, which validation must enforce for
/// meshentry.
fn bounds(s: &Node, shape: &Shape, steps: &mut Vec<Step>, out: &mut Vec<Bound>) {
    let shape = unwrap_optional(shape);
    let mut descend = |step: Step, s: &Node, shape: &Shape, out: &mut Vec<Bound>| {
        steps.push(step);
        bounds(s, shape, steps, out);
        steps.pop();
    };
    match (text(s, "type"), shape) {
        (Some("object"), Shape::Struct(fields)) => {
            for (key, sub) in get(s, "properties").map(entries).unwrap_or_default() {
                let name = key.as_str().unwrap();
                if let Some((_, sub_shape)) = fields.iter().find(|(f, _)| *f == name) {
                    descend(Step::Field(name.to_string()), sub, sub_shape, out);
                }
            }
        }
        (Some("object"), Shape::Map(inner)) => {
            if let Some(values) = get(s, "additionalProperties") {
                descend(Step::Entry, values, inner, out);
            }
        }
        (Some("array"), Shape::Seq(inner)) => descend(Step::Item, get(s, "items").unwrap(), inner, out),
        (Some("integer"), Shape::Int { min, max }) => {
            if let Some(lo) = int_of(s, "minimum").filter(|lo| lo > min) {
                out.push(Bound {
                    steps: steps.clone(),
                    inside: serde_json::json!(i64::try_from(lo).unwrap()),
                    outside: serde_json::json!(i64::try_from(lo - 1).unwrap()),
                });
            }
            if let Some(hi) = int_of(s, "maximum").filter(|hi| hi < max) {
                out.push(Bound {
                    steps: steps.clone(),
                    inside: serde_json::json!(i64::try_from(hi).unwrap()),
                    outside: serde_json::json!(i64::try_from(hi + 1).unwrap()),
                });
            }
        }
        (Some("number"), Shape::Float) => {
            if let Some(lo) = int_of(s, "minimum") {
                out.push(Bound {
                    steps: steps.clone(),
                    // Istio's code may refuse the bound itself (warmup aggression must be
                    // > 0 where the schema says >= 0), so the value inside is off the bound.
                    inside: serde_json::json!(lo as f64 + 0.5),
                    outside: serde_json::json!(lo as f64 - 0.5),
                });
            }
            if let Some(hi) = int_of(s, "maximum") {
                out.push(Bound {
                    steps: steps.clone(),
                    inside: serde_json::json!(hi as f64 - 0.5),
                    outside: serde_json::json!(hi as f64 + 0.5),
                });
            }
        }
        _ => {}
    }
}

/// A `spec` that sets only the field `steps` lead to, to `value`.
fn spec_with(steps: &[Step], value: serde_json::Value) -> serde_json::Value {
    match steps.split_first() {
        None => value,
        Some((Step::Field(name), rest)) => serde_json::json!({ name.as_str(): spec_with(rest, value) }),
        Some((Step::Item, rest)) => serde_json::json!([spec_with(rest, value)]),
        Some((Step::Entry, rest)) => serde_json::json!({ "k": spec_with(rest, value) }),
    }
}

/// The field path a finding about the field `steps` lead to names.
fn finding_path(steps: &[Step]) -> String {
    let mut out = String::from("spec");
    for s in steps {
        match s {
            Step::Field(name) => {
                out.push('.');
                out.push_str(name);
            }
            Step::Item => out.push_str("[0]"),
            Step::Entry => out.push_str(".k"),
        }
    }
    out
}

#[test]
fn values_outside_the_schema_bounds_are_errors() {
    let newest = CRD_FILES[CRD_FILES.len() - 1].0;
    let mut missed = BTreeSet::new();
    let mut checked = 0;
    for s in spec_schemas().into_iter().filter(|s| s.file == newest) {
        let mut found = Vec::new();
        bounds(&s.spec, &model_shape(&s.kind), &mut Vec::new(), &mut found);
        for b in found {
            let path = finding_path(&b.steps);
            // The errors on the field or an object holding it, for a spec that sets only it.
            let errors = |value: &serde_json::Value| {
                let doc = serde_json::json!({
                    "apiVersion": format!("networking.istio.io/{}", s.version),
                    "kind": s.kind,
                    "metadata": {"name": "bounds", "namespace": "ns"},
                    "spec": spec_with(&b.steps, value.clone()),
                });
                let mut doc = doc;
                // Istio stops at a WorkloadGroup without template before looking further.
                if s.kind == "WorkloadGroup" && doc["spec"].get("template").is_none() {
                    doc["spec"]["template"] = serde_json::json!({});
                }
                load_str("bounds.json", &doc.to_string(), &LoadOptions::default())
                    .findings
                    .into_iter()
                    .filter(|f| f.severity == Severity::Error)
                    .filter(|f| path == f.field || path.starts_with(&format!("{}.", f.field)))
                    .map(|f| f.message)
                    .collect::<BTreeSet<String>>()
            };
            checked += 1;
            if errors(&b.outside).difference(&errors(&b.inside)).next().is_none() {
                missed.insert(format!("{} {}: {path} = {}", s.kind, s.version, b.outside));
            }
        }
    }
    assert!(checked > 0);
    assert!(
        missed.is_empty(),
        "values Istio's schema refuses that validation accepts:\n{}",
        missed.into_iter().collect::<Vec<_>>().join("\n")
    );
}

/// The walk itself finds each kind of difference (so a passing run means agreement, not a
/// walk that looks at nothing).
#[test]
fn the_walk_finds_each_kind_of_difference() {
    let schema = parse_stream(
        r#"
type: object
properties:
  both: {type: string}
  onlySchema: {type: string}
  wrapper: {type: boolean, nullable: true}
  small: {type: integer, minimum: 0, maximum: 4294967295}
  mode: {type: string, enum: [A, B]}
  list: {type: array, items: {type: integer, format: int32}}
  labels: {type: object, additionalProperties: {type: string}}
"#,
    )
    .unwrap()
    .remove(0);
    let shape = Shape::Struct(vec![
        ("both", Shape::String),
        ("onlyModel", Shape::String),
        ("wrapper", Shape::Bool),
        ("small", Shape::Int { min: 0, max: 65535 }),
        ("mode", Shape::Enum(vec!["A", "C"])),
        ("list", Shape::Seq(Box::new(Shape::String))),
        ("labels", Shape::Seq(Box::new(Shape::String))),
    ]);
    let mut w = Walk::default();
    walk(&schema, &shape, "spec", true, &mut w);
    assert_eq!(w.missing_in_model, BTreeSet::from(["spec.onlySchema".to_string()]));
    assert_eq!(w.missing_in_schema, BTreeSet::from(["spec.onlyModel".to_string()]));
    let mismatches: Vec<&str> = w.type_mismatches.iter().map(|m| m.split_once(':').unwrap().0).collect();
    assert_eq!(
        mismatches,
        ["spec.labels", "spec.list[]", "spec.mode", "spec.small", "spec.wrapper"],
        "{:#?}",
        w.type_mismatches
    );
}
