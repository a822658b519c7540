//! Decoding a [`Node`] tree into the typed model without stopping at the first problem.
//!
//! A plain serde deserializer aborts on the first unknown field or wrong type, and knows no
//! positions. This one records every problem (with its field path and position) in a
//! [`DecodeCx`] and carries on as if the offending field were unset, which is exactly proto3's
//! meaning of an absent field: numbers become 0, strings "", enums their zero (first) variant,
//! objects and lists empty. Validation then runs on the rest, and its findings on a path that
//! already has a decode problem are dropped so one mistake is reported once.
//!
//! Unknown fields are found through the field list serde's derive passes to `deserialize_struct`,
//! so the model types need no `deny_unknown_fields` and can share one definition for strict
//! (Istio) and lenient (Kubernetes `Pod`) decoding.

use std::cell::RefCell;
use std::fmt;

use serde::de::value::StrDeserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

use crate::suggest::did_you_mean;
use crate::yaml::{Node, Plain, Pos, Value, classify_plain, parse_float, parse_int};

/// One problem found while decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    pub pos: Pos,
    pub path: String,
    pub message: String,
}

/// Collects decode problems for one resource.
pub struct DecodeCx {
    issues: RefCell<Vec<Issue>>,
    strict: bool,
}

impl DecodeCx {
    /// `strict`: unknown fields are errors (Istio resources). Kubernetes objects such as `Pod`
    /// carry far more than we model, so they are decoded leniently.
    pub fn new(strict: bool) -> Self {
        Self {
            issues: RefCell::new(Vec::new()),
            strict,
        }
    }

    pub fn into_issues(self) -> Vec<Issue> {
        self.issues.into_inner()
    }

    fn push(&self, node: &Node, path: &PathRef<'_>, message: String) {
        self.issues.borrow_mut().push(Issue {
            pos: node.pos,
            path: path.render(),
            message,
        });
    }
}

/// Decodes `node` as a `T`; `root` names it in paths (`spec`, `metadata`).
pub fn decode<T>(node: &Node, root: &str, cx: &DecodeCx) -> T
where
    T: DeserializeOwned + Default,
{
    let de = NodeDe {
        node,
        path: PathRef {
            seg: Seg::Key(root),
            parent: None,
        },
        cx,
    };
    match T::deserialize(de) {
        Ok(v) => v,
        Err(e) => {
            // Only a model type that does not default every field gets here; keep going.
            cx.issues.borrow_mut().push(Issue {
                pos: node.pos,
                path: root.to_string(),
                message: e.0,
            });
            T::default()
        }
    }
}

#[derive(Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

#[derive(Clone, Copy)]
struct PathRef<'a> {
    seg: Seg<'a>,
    parent: Option<&'a PathRef<'a>>,
}

impl PathRef<'_> {
    fn render(&self) -> String {
        let mut segs = Vec::new();
        let mut cur = Some(self);
        while let Some(p) = cur {
            segs.push(p.seg);
            cur = p.parent;
        }
        let mut out = String::new();
        for seg in segs.iter().rev() {
            match seg {
                Seg::Key(k) if is_plain_key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Seg::Key(k) => {
                    out.push_str("[\"");
                    out.push_str(k);
                    out.push_str("\"]");
                }
                Seg::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        out
    }
}

/// Keys that can be written `a.b` in a path; others are written `a["b.c"]`.
pub fn is_plain_key(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The error type serde needs. We only return it for problems the model cannot absorb.
#[derive(Debug)]
pub struct DeError(String);

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError(msg.to_string())
    }
}

struct NodeDe<'a> {
    node: &'a Node,
    path: PathRef<'a>,
    cx: &'a DecodeCx,
}

impl NodeDe<'_> {
    fn mismatch(&self, expected: &str) {
        self.cx.push(
            self.node,
            &self.path,
            format!("expected {expected}, found {}", self.node.kind_name()),
        );
    }

    fn int<T>(&self, kind: &str) -> T
    where
        T: TryFrom<i128> + Default,
    {
        match &self.node.value {
            Value::Null => T::default(),
            Value::Scalar { text, plain: true } => match parse_int(text) {
                Some(v) => match T::try_from(v) {
                    Ok(v) => v,
                    Err(_) => {
                        self.cx.push(
                            self.node,
                            &self.path,
                            format!("number {text} is out of range for {kind}"),
                        );
                        T::default()
                    }
                },
                None => {
                    self.mismatch("an integer");
                    T::default()
                }
            },
            _ => {
                self.mismatch("an integer");
                T::default()
            }
        }
    }
}

macro_rules! deserialize_int {
    ($($method:ident => $visit:ident : $ty:ty),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
                visitor.$visit(self.int::<$ty>(stringify!($ty)))
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Null => visitor.visit_unit(),
            Value::Scalar { text, plain: false } => visitor.visit_str(text),
            Value::Scalar { text, plain: true } => match classify_plain(text) {
                Plain::Bool(b) => visitor.visit_bool(b),
                Plain::Int => match parse_int(text) {
                    Some(v) if v >= 0 && v <= u64::MAX as i128 => visitor.visit_u64(v as u64),
                    Some(v) if v >= i64::MIN as i128 && v < 0 => visitor.visit_i64(v as i64),
                    _ => visitor.visit_str(text),
                },
                Plain::Float => match parse_float(text) {
                    Some(f) if f.is_finite() => visitor.visit_f64(f),
                    _ => visitor.visit_str(text),
                },
                Plain::Str => visitor.visit_str(text),
            },
            Value::Seq(items) => visitor.visit_seq(SeqDe {
                items: items.iter(),
                index: 0,
                path: self.path,
                cx: self.cx,
            }),
            Value::Map(entries) => visitor.visit_map(MapDe::new(entries, self.path, self.cx, None)),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Null => visitor.visit_bool(false),
            Value::Scalar { text, plain: true } => match classify_plain(text) {
                Plain::Bool(b) => visitor.visit_bool(b),
                _ => {
                    self.mismatch("a boolean (true or false)");
                    visitor.visit_bool(false)
                }
            },
            _ => {
                self.mismatch("a boolean (true or false)");
                visitor.visit_bool(false)
            }
        }
    }

    deserialize_int! {
        deserialize_i8 => visit_i8: i8,
        deserialize_i16 => visit_i16: i16,
        deserialize_i32 => visit_i32: i32,
        deserialize_i64 => visit_i64: i64,
        deserialize_u8 => visit_u8: u8,
        deserialize_u16 => visit_u16: u16,
        deserialize_u32 => visit_u32: u32,
        deserialize_u64 => visit_u64: u64,
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Null => visitor.visit_f64(0.0),
            Value::Scalar { text, plain: true } => match parse_float(text) {
                Some(f) => visitor.visit_f64(f),
                None => {
                    self.mismatch("a number");
                    visitor.visit_f64(0.0)
                }
            },
            _ => {
                self.mismatch("a number");
                visitor.visit_f64(0.0)
            }
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Null => visitor.visit_str(""),
            // kubectl sends a plain `1`, `yes` or `0777` as a number or boolean (go-yaml v2 types
            // it), and the API server refuses it for a string field: say so, with the fix.
            Value::Scalar { .. } if self.node.quote_hint().is_some() => {
                let hint = self.node.quote_hint().unwrap_or_default();
                self.cx.push(
                    self.node,
                    &self.path,
                    format!("expected a string, found {}: {hint}", self.node.kind_name()),
                );
                visitor.visit_str("")
            }
            Value::Scalar { text, .. } => visitor.visit_str(text),
            _ => {
                self.mismatch("a string");
                visitor.visit_str("")
            }
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Seq(items) => visitor.visit_seq(SeqDe {
                items: items.iter(),
                index: 0,
                path: self.path,
                cx: self.cx,
            }),
            Value::Null => visitor.visit_seq(SeqDe {
                items: [].iter(),
                index: 0,
                path: self.path,
                cx: self.cx,
            }),
            _ => {
                self.mismatch("a list");
                visitor.visit_seq(SeqDe {
                    items: [].iter(),
                    index: 0,
                    path: self.path,
                    cx: self.cx,
                })
            }
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Map(entries) => visitor.visit_map(MapDe::new(entries, self.path, self.cx, None)),
            Value::Null => visitor.visit_map(MapDe::new(&[], self.path, self.cx, None)),
            _ => {
                self.mismatch("an object");
                visitor.visit_map(MapDe::new(&[], self.path, self.cx, None))
            }
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Map(entries) => visitor.visit_map(MapDe::new(entries, self.path, self.cx, Some(fields))),
            Value::Null => visitor.visit_map(MapDe::new(&[], self.path, self.cx, Some(fields))),
            _ => {
                self.mismatch("an object");
                visitor.visit_map(MapDe::new(&[], self.path, self.cx, Some(fields)))
            }
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        // Every model enum lists its proto3 zero value first, so falling back to it reads the
        // field as unset.
        let zero = variants.first().copied().unwrap_or_default();
        let chosen = match &self.node.value {
            Value::Null => zero,
            Value::Scalar { text, .. } => match variants.iter().find(|v| **v == text.as_str()) {
                Some(v) => v,
                None => {
                    let hint = match did_you_mean(text, variants.iter().copied()) {
                        Some(s) => format!(", did you mean `{s}`?"),
                        None => format!(" (expected one of {})", variants.join(", ")),
                    };
                    self.cx
                        .push(self.node, &self.path, format!("unknown value `{text}`{hint}"));
                    zero
                }
            },
            _ => {
                self.mismatch(&format!("one of {}", variants.join(", ")));
                zero
            }
        };
        visitor.visit_enum(StrDeserializer::<DeError>::new(chosen))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

struct SeqDe<'a> {
    items: std::slice::Iter<'a, Node>,
    index: usize,
    path: PathRef<'a>,
    cx: &'a DecodeCx,
}

impl<'de> de::SeqAccess<'de> for SeqDe<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DeError> {
        let Some(node) = self.items.next() else { return Ok(None) };
        let index = self.index;
        self.index += 1;
        let path = PathRef {
            seg: Seg::Index(index),
            parent: Some(&self.path),
        };
        // A null field is an unset field, but a null list item reaches the API server as null,
        // which an Istio CRD's schema refuses for every list.
        if node.value == Value::Null && self.cx.strict {
            self.cx.push(
                node,
                &path,
                "a list item cannot be null (kubectl sends null, which the API server refuses)".into(),
            );
        }
        seed.deserialize(NodeDe {
            node,
            path,
            cx: self.cx,
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapDe<'a> {
    entries: std::slice::Iter<'a, (Node, Node)>,
    /// Entries already handed out, to catch a key written twice.
    seen: Vec<&'a str>,
    value: Option<(&'a str, &'a Node)>,
    path: PathRef<'a>,
    cx: &'a DecodeCx,
    fields: Option<&'static [&'static str]>,
}

impl<'a> MapDe<'a> {
    fn new(
        entries: &'a [(Node, Node)],
        path: PathRef<'a>,
        cx: &'a DecodeCx,
        fields: Option<&'static [&'static str]>,
    ) -> Self {
        Self {
            entries: entries.iter(),
            seen: Vec::new(),
            value: None,
            path,
            cx,
            fields,
        }
    }
}

impl<'de> de::MapAccess<'de> for MapDe<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        for (key, value) in self.entries.by_ref() {
            let Some(name) = key.as_str() else {
                self.cx.push(
                    key,
                    &self.path,
                    format!("object keys must be strings, found {}", key.kind_name()),
                );
                continue;
            };
            if self.seen.contains(&name) {
                let path = PathRef {
                    seg: Seg::Key(name),
                    parent: Some(&self.path),
                };
                self.cx.push(key, &path, format!("duplicate key `{name}`"));
                continue;
            }
            self.seen.push(name);
            if let Some(fields) = self.fields
                && !fields.contains(&name)
            {
                if self.cx.strict {
                    let path = PathRef {
                        seg: Seg::Key(name),
                        parent: Some(&self.path),
                    };
                    let hint = match did_you_mean(name, fields.iter().copied()) {
                        Some(s) => format!(", did you mean `{s}`?"),
                        None if fields.is_empty() => " (this object takes no fields)".to_string(),
                        None => format!(" (known fields: {})", fields.join(", ")),
                    };
                    self.cx.push(key, &path, format!("unknown field `{name}`{hint}"));
                }
                continue;
            }
            self.value = Some((name, value));
            let key_de: StrDeserializer<'_, DeError> = name.into_deserializer();
            return seed.deserialize(key_de).map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some((name, node)) = self.value.take() else {
            return Err(DeError("value requested before key".into()));
        };
        let path = PathRef {
            seg: Seg::Key(name),
            parent: Some(&self.path),
        };
        seed.deserialize(NodeDe {
            node,
            path,
            cx: self.cx,
        })
    }
}

// === Introspection ===

/// The shape of a model type as serde's derive describes it to [`decode`]: for a struct, the
/// very field list that unknown-field detection uses. `tests/schema.rs` compares it with
/// Istio's CRD schemas, so the model and the schema cannot drift apart unnoticed.
#[doc(hidden)]
#[derive(Clone, Debug, PartialEq)]
pub enum Shape {
    Bool,
    /// An integer type and the values it holds.
    Int {
        min: i128,
        max: i128,
    },
    Float,
    String,
    /// An enum of unit variants, by the names they are written with.
    Enum(Vec<&'static str>),
    /// Fields in declaration order, by the names they are written with.
    Struct(Vec<(&'static str, Shape)>),
    Seq(Box<Shape>),
    /// A map with string keys.
    Map(Box<Shape>),
    /// An `Option`: the model tells "unset" from the zero value.
    Optional(Box<Shape>),
    /// Any value (`serde_json::Value`).
    Any,
    /// A type nested too deep to follow (a recursive type).
    Truncated,
}

/// How deep [`shape_of`] follows nested types; the model's are far shallower.
const SHAPE_DEPTH: usize = 48;

/// The shape of `T`, found by deserializing it from a tracer that hands each struct every one
/// of its fields, each list one item and each map one entry.
#[doc(hidden)]
pub fn shape_of<T: DeserializeOwned>() -> Shape {
    let slot = RefCell::new(None);
    // The tracer never fails; a type whose derive rejects its values would only lose its shape.
    let _ = T::deserialize(Tracer { slot: &slot, depth: 0 });
    slot.into_inner().unwrap_or(Shape::Truncated)
}

struct Tracer<'a> {
    slot: &'a RefCell<Option<Shape>>,
    depth: usize,
}

impl Tracer<'_> {
    fn put(&self, shape: Shape) {
        *self.slot.borrow_mut() = Some(shape);
    }

    fn int(&self, min: i128, max: i128) {
        self.put(Shape::Int { min, max });
    }
}

macro_rules! trace_int {
    ($($method:ident => $visit:ident : $ty:ty),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
                self.int(i128::from(<$ty>::MIN), i128::from(<$ty>::MAX));
                visitor.$visit(0)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Tracer<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.put(Shape::Any);
        visitor.visit_unit()
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.put(Shape::Bool);
        visitor.visit_bool(false)
    }

    trace_int! {
        deserialize_i8 => visit_i8: i8,
        deserialize_i16 => visit_i16: i16,
        deserialize_i32 => visit_i32: i32,
        deserialize_i64 => visit_i64: i64,
        deserialize_u8 => visit_u8: u8,
        deserialize_u16 => visit_u16: u16,
        deserialize_u32 => visit_u32: u32,
        deserialize_u64 => visit_u64: u64,
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.put(Shape::Float);
        visitor.visit_f32(0.0)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.put(Shape::Float);
        visitor.visit_f64(0.0)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.put(Shape::String);
        visitor.visit_str("")
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let inner = RefCell::new(None);
        let value = visitor.visit_some(Tracer {
            slot: &inner,
            depth: self.depth,
        });
        let inner = inner.into_inner().unwrap_or(Shape::Truncated);
        self.put(Shape::Optional(Box::new(inner)));
        value
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.put(Shape::Struct(Vec::new()));
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let item = RefCell::new(None);
        let value = visitor.visit_seq(TraceSeq {
            item: &item,
            depth: self.depth + 1,
            done: false,
        });
        self.put(Shape::Seq(Box::new(item.into_inner().unwrap_or(Shape::Truncated))));
        value
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let value_shape = RefCell::new(None);
        let keys: &'static [&'static str] = &["key"];
        let value = visitor.visit_map(TraceMap {
            keys: if self.depth < SHAPE_DEPTH { keys } else { &[] },
            next: 0,
            shapes: Vec::new(),
            value_slot: &value_shape,
            depth: self.depth + 1,
        });
        self.put(Shape::Map(Box::new(
            value_shape.into_inner().unwrap_or(Shape::Truncated),
        )));
        value
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if self.depth >= SHAPE_DEPTH {
            self.put(Shape::Truncated);
            return visitor.visit_map(TraceMap {
                keys: &[],
                next: 0,
                shapes: Vec::new(),
                value_slot: &RefCell::new(None),
                depth: self.depth,
            });
        }
        let slot = RefCell::new(None);
        let mut map = TraceMap {
            keys: fields,
            next: 0,
            shapes: Vec::new(),
            value_slot: &slot,
            depth: self.depth + 1,
        };
        let value = visitor.visit_map(&mut map);
        self.put(Shape::Struct(map.shapes));
        value
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.put(Shape::Enum(variants.to_vec()));
        let first = variants.first().copied().unwrap_or_default();
        visitor.visit_enum(StrDeserializer::<DeError>::new(first))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

/// A list of one item.
struct TraceSeq<'a> {
    item: &'a RefCell<Option<Shape>>,
    depth: usize,
    done: bool,
}

impl<'de> de::SeqAccess<'de> for TraceSeq<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DeError> {
        if self.done || self.depth > SHAPE_DEPTH {
            return Ok(None);
        }
        self.done = true;
        seed.deserialize(Tracer {
            slot: self.item,
            depth: self.depth,
        })
        .map(Some)
    }
}

/// A struct's fields or a map's one entry, each value traced in turn.
struct TraceMap<'a> {
    keys: &'static [&'static str],
    next: usize,
    /// The shape of each value handed out, with its key.
    shapes: Vec<(&'static str, Shape)>,
    value_slot: &'a RefCell<Option<Shape>>,
    depth: usize,
}

impl<'de> de::MapAccess<'de> for TraceMap<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        let Some(key) = self.keys.get(self.next) else {
            return Ok(None);
        };
        let key_de: StrDeserializer<'_, DeError> = (*key).into_deserializer();
        seed.deserialize(key_de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let key = self.keys.get(self.next).copied().unwrap_or_default();
        self.next += 1;
        let value = seed.deserialize(Tracer {
            slot: self.value_slot,
            depth: self.depth,
        });
        let shape = self.value_slot.borrow_mut().take().unwrap_or(Shape::Truncated);
        self.shapes.push((key, shape.clone()));
        // A map's caller reads its value's shape back from the slot.
        *self.value_slot.borrow_mut() = Some(shape);
        value
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;
    use crate::yaml::parse_stream;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, rename_all = "camelCase")]
    struct Port {
        number: u32,
        name: String,
        target_port: Option<u32>,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[allow(clippy::upper_case_acronyms)]
    enum Mode {
        #[default]
        NONE,
        STATIC,
        DNS,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct Spec {
        hosts: Vec<String>,
        ports: Vec<Port>,
        resolution: Option<Mode>,
        labels: BTreeMap<String, String>,
        flag: bool,
    }

    fn run(yaml: &str, strict: bool) -> (Spec, Vec<Issue>) {
        let doc = parse_stream(yaml).unwrap().remove(0);
        let cx = DecodeCx::new(strict);
        let spec = decode::<Spec>(&doc, "spec", &cx);
        (spec, cx.into_issues())
    }

    #[test]
    fn reads_everything_when_valid() {
        let (spec, issues) = run(
            "hosts: [a.com]\nports:\n- number: 80\n  name: http\n  targetPort: 8080\nresolution: DNS\nlabels: {version: \"1\"}\n",
            true,
        );
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(
            spec.ports[0],
            Port {
                number: 80,
                name: "http".into(),
                target_port: Some(8080)
            }
        );
        assert_eq!(spec.resolution, Some(Mode::DNS));
        assert_eq!(spec.labels["version"], "1");
    }

    #[test]
    fn collects_every_problem_with_paths_and_positions() {
        let (spec, issues) = run(
            "hsots: [a.com]\nports:\n- number: abc\n  name: http\n- number: 99999999999\nresolution: STATC\nflag: maybe\nports2: x\n",
            true,
        );
        let got: Vec<(u32, &str, &str)> = issues
            .iter()
            .map(|i| (i.pos.line, i.path.as_str(), i.message.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "spec.hsots", "unknown field `hsots`, did you mean `hosts`?"),
                (3, "spec.ports[0].number", "expected an integer, found a string"),
                (5, "spec.ports[1].number", "number 99999999999 is out of range for u32"),
                (6, "spec.resolution", "unknown value `STATC`, did you mean `STATIC`?"),
                (7, "spec.flag", "expected a boolean (true or false), found a string"),
                (8, "spec.ports2", "unknown field `ports2`, did you mean `ports`?"),
            ]
        );
        // Decoding went on past the problems, treating bad fields as unset.
        assert_eq!(spec.ports.len(), 2);
        assert_eq!(spec.ports[0].name, "http");
        assert_eq!(spec.resolution, Some(Mode::NONE));
    }

    #[test]
    fn lenient_mode_ignores_unknown_fields_and_a_repeated_key_keeps_its_last_value() {
        // kubectl keeps the last of a repeated key; the YAML reader warns about the first
        // (tests/yaml_k8s.rs), so decoding sees one key.
        let (spec, issues) = run("whatever: 1\nhosts: [a]\nhosts: [b]\n", false);
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(spec.hosts, vec!["b".to_string()]);
    }

    #[test]
    fn plain_numbers_and_booleans_are_not_strings() {
        let (spec, issues) = run("hosts: [yes, \"yes\", 0777, a.com, ~]\nlabels: {version: 1}\n", true);
        let got: Vec<(&str, &str)> = issues.iter().map(|i| (i.path.as_str(), i.message.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (
                    "spec.hosts[0]",
                    "expected a string, found a boolean: kubectl's YAML reader reads a plain `yes` as a boolean; write \"yes\" for the string"
                ),
                (
                    "spec.hosts[2]",
                    "expected a string, found a number: kubectl's YAML reader reads a plain `0777` as a number; write \"0777\" for the string"
                ),
                (
                    "spec.hosts[4]",
                    "a list item cannot be null (kubectl sends null, which the API server refuses)"
                ),
                (
                    "spec.labels.version",
                    "expected a string, found a number: kubectl's YAML reader reads a plain `1` as a number; write \"1\" for the string"
                ),
            ]
        );
        assert_eq!(spec.hosts[1], "yes");
        assert_eq!(spec.hosts[3], "a.com");
    }

    #[test]
    fn shape_lists_every_field_as_the_decoder_reads_it() {
        let u32_ = || Shape::Int {
            min: 0,
            max: i128::from(u32::MAX),
        };
        assert_eq!(
            shape_of::<Spec>(),
            Shape::Struct(vec![
                ("hosts", Shape::Seq(Box::new(Shape::String))),
                (
                    "ports",
                    Shape::Seq(Box::new(Shape::Struct(vec![
                        ("number", u32_()),
                        ("name", Shape::String),
                        ("targetPort", Shape::Optional(Box::new(u32_()))),
                    ])))
                ),
                (
                    "resolution",
                    Shape::Optional(Box::new(Shape::Enum(vec!["NONE", "STATIC", "DNS"])))
                ),
                ("labels", Shape::Map(Box::new(Shape::String))),
                ("flag", Shape::Bool),
            ])
        );
    }

    #[test]
    fn wrong_shapes_are_reported_not_fatal() {
        let (spec, issues) = run("hosts: a.com\nports: {number: 1}\nlabels: [x]\n", true);
        assert_eq!(issues.len(), 3, "{issues:?}");
        assert!(spec.hosts.is_empty());
        assert_eq!(issues[0].message, "expected a list, found a string");
        assert_eq!(issues[2].message, "expected an object, found a list");
    }
}
