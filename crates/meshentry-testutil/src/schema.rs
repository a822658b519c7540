//! meshentry's JSON documents checked as docs/json.md describes them: against their schema in
//! `docs/schemas/` (JSON Schema draft 2020-12, every object closed) and against the casing rule
//! (meshentry's own documents camelCase; a copy of an Envoy or Istio document in that
//! document's snake_case). Any test that has a document at hand can [`check`] it, so the
//! states only some tests reach (a live source's, a listener that failed) are checked too.

use std::path::{Path, PathBuf};

use jsonschema::{Draft, Retrieve, Uri};
use serde_json::Value;

/// The casing of a document's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Casing {
    Camel,
    Snake,
}

/// Every schema in docs/schemas (`NAME.schema.json`) and the casing of its document's keys.
pub const DOCUMENTS: &[(&str, Casing)] = &[
    ("validate", Casing::Camel),
    ("registry", Casing::Camel),
    ("explain", Casing::Camel),
    ("explain-dns", Casing::Camel),
    ("version", Casing::Camel),
    ("admin-config-dump", Casing::Camel),
    ("admin-clusters", Casing::Camel),
    ("admin-ndsz", Casing::Camel),
    // Envoy's ServerInfo and Istio's JSON access log keep their keys.
    ("admin-server-info", Casing::Snake),
    ("access-log", Casing::Snake),
];

/// Keys whose value is a map keyed by data (label names; `/debug/ndsz`'s DNS names), whose
/// keys are not the document's.
pub const DATA_MAPS: &[&str] = &["labels", "table"];

impl Casing {
    /// The casing of document `name`. Panics for a document not in [`DOCUMENTS`].
    pub fn of(name: &str) -> Casing {
        DOCUMENTS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| *c)
            .unwrap_or_else(|| panic!("{name} is not in schema::DOCUMENTS"))
    }

    /// Whether `key` is in this casing (a single lower-case word is in both).
    pub fn fits(self, key: &str) -> bool {
        let starts_lower = key.chars().next().is_some_and(|c| c.is_ascii_lowercase());
        starts_lower
            && match self {
                Casing::Camel => key.chars().all(|c| c.is_ascii_alphanumeric()),
                Casing::Snake => {
                    key.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                        && !key.ends_with('_')
                        && !key.contains("__")
                }
            }
    }
}

/// The repository's `docs/schemas`.
pub fn schemas_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/schemas");
    dir.canonicalize().unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// The schema of document `name`, parsed.
pub fn schema(name: &str) -> Value {
    let path = schemas_dir().join(format!("{name}.schema.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Resolves a schema's `$ref` to a sibling file (`"$ref": "registry.schema.json"`) as a tool
/// given the file's path does; nothing else is fetched.
struct Siblings;

impl Retrieve for Siblings {
    fn retrieve(&self, uri: &Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let path = uri.path().as_str();
        let dir = schemas_dir();
        let name = path
            .strip_prefix(&*dir.to_string_lossy())
            .filter(|_| uri.scheme().as_str() == "file")
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|file| file.strip_suffix(".schema.json"))
            .filter(|name| !name.contains('/'))
            .ok_or_else(|| format!("only the schemas beside it are resolved, not {uri}"))?;
        Ok(schema(name))
    }
}

/// A validator for document `name`, its sibling schemas resolved. Panics if the schema does
/// not compile.
pub fn validator(name: &str) -> jsonschema::Validator {
    let base = format!("file://{}/{name}.schema.json", schemas_dir().display());
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .with_base_uri(base)
        .with_retriever(Siblings)
        .build(&schema(name))
        .unwrap_or_else(|e| panic!("{name}.schema.json: {e}"))
}

/// What is wrong with `doc` as a `name` document: schema errors, then keys in another casing.
pub fn problems(name: &str, doc: &Value) -> Vec<String> {
    let mut out: Vec<String> = validator(name)
        .iter_errors(doc)
        .map(|e| format!("schema: at {:?}: {e}", e.instance_path().as_str()))
        .collect();
    keys_in_casing(doc, Casing::of(name), "", false, &mut out);
    out
}

fn keys_in_casing(v: &Value, casing: Casing, at: &str, data_map: bool, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let here = format!("{at}/{k}");
                if !data_map && !casing.fits(k) {
                    out.push(format!("casing: at {here:?}: key {k:?} is not {casing:?} case"));
                }
                let map = !data_map && DATA_MAPS.contains(&k.as_str());
                keys_in_casing(x, casing, &here, map, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                keys_in_casing(x, casing, &format!("{at}/{i}"), false, out);
            }
        }
        _ => {}
    }
}

/// Panics with every problem of `doc` as a `name` document (see [`DOCUMENTS`]).
#[track_caller]
pub fn check(name: &str, doc: &Value) {
    let found = problems(name, doc);
    assert!(found.is_empty(), "{name}:\n{}\n{doc:#}", found.join("\n"));
}
