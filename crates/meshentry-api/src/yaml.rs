//! A YAML (or JSON) stream as trees of nodes that remember where they were written.
//!
//! Serde deserializers forget positions once a value is built, but every finding we report must
//! name a file, line and column, and we must report all findings at once rather than stop at the
//! first. So documents are first read into this tree, then decoded into the typed model by
//! [`crate::de`] (which records every type problem with its position), and validation findings
//! are placed back on the tree through their field path ([`Node::locate`]).

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle};

/// Nesting deeper than this is refused: it protects the recursive decoder's stack, and no Istio
/// resource comes close.
pub const MAX_DEPTH: usize = 64;

/// Alias expansion may not make a stream bigger than this many nodes ("billion laughs").
pub const MAX_NODES: usize = 4_000_000;

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

/// One node of a document.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `null`, `~`, or nothing at all.
    Null,
    /// A scalar's text. `plain` scalars are typed by the YAML 1.2 core schema (`80` is a number,
    /// `true` a boolean); quoted ones are always strings.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in document order; keys are nodes so that an unknown key can be pointed at.
    Map(Vec<(Node, Node)>),
}

/// A stream that is not well-formed YAML.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

impl Node {
    pub fn kind_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Scalar { plain: false, .. } => "a string",
            Value::Scalar { text, plain: true } => match classify_plain(text) {
                Plain::Bool(_) => "a boolean",
                Plain::Int => "a number",
                Plain::Float => "a number",
                Plain::Str => "a string",
            },
            Value::Seq(_) => "a list",
            Value::Map(_) => "an object",
        }
    }

    /// The value of `key` when this node is a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The key node of `key` when this node is a mapping.
    pub fn get_key(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(k, _)| k),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// Where the field at `path` (as written by validation: `spec.ports[1].number`,
    /// `metadata.labels["app.kubernetes.io/name"]`) stands in this document. A path that goes
    /// further than the document (a missing field) resolves to its deepest existing ancestor,
    /// so that "field is required" points at the object that lacks it.
    pub fn locate(&self, path: &str) -> Pos {
        let mut node = self;
        for seg in PathSegments::new(path) {
            let next = match seg {
                Seg::Key(k) => node.get(k),
                Seg::Index(i) => match &node.value {
                    Value::Seq(items) => items.get(i),
                    _ => None,
                },
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node.pos
    }
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

struct PathSegments<'a> {
    rest: &'a str,
}

impl<'a> PathSegments<'a> {
    fn new(path: &'a str) -> Self {
        Self { rest: path }
    }
}

impl<'a> Iterator for PathSegments<'a> {
    type Item = Seg<'a>;

    fn next(&mut self) -> Option<Seg<'a>> {
        let rest = self.rest.strip_prefix('.').unwrap_or(self.rest);
        if rest.is_empty() {
            return None;
        }
        if let Some(inner) = rest.strip_prefix("[\"") {
            let end = inner.find("\"]")?;
            self.rest = &inner[end + 2..];
            return Some(Seg::Key(&inner[..end]));
        }
        if let Some(inner) = rest.strip_prefix('[') {
            let end = inner.find(']')?;
            self.rest = &inner[end + 1..];
            return inner[..end].parse().ok().map(Seg::Index);
        }
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        self.rest = &rest[end..];
        Some(Seg::Key(&rest[..end]))
    }
}

/// How a plain scalar reads under the YAML 1.2 core schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plain {
    Bool(bool),
    Int,
    Float,
    Str,
}

pub fn classify_plain(text: &str) -> Plain {
    match text {
        "true" | "True" | "TRUE" => return Plain::Bool(true),
        "false" | "False" | "FALSE" => return Plain::Bool(false),
        _ => {}
    }
    if parse_int(text).is_some() {
        return Plain::Int;
    }
    if is_float(text) {
        return Plain::Float;
    }
    Plain::Str
}

/// Integers of the core schema: decimal with an optional sign, `0x` hex and `0o` octal.
pub fn parse_int(text: &str) -> Option<i128> {
    let (neg, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let value = if let Some(hex) = digits.strip_prefix("0x") {
        i128::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = digits.strip_prefix("0o") {
        i128::from_str_radix(oct, 8).ok()?
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()?
    } else {
        return None;
    };
    Some(if neg { -value } else { value })
}

fn is_float(text: &str) -> bool {
    matches!(
        text,
        ".inf" | ".Inf" | ".INF" | "-.inf" | "+.inf" | ".nan" | ".NaN" | ".NAN"
    ) || (text.bytes().any(|b| b.is_ascii_digit())
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && text.parse::<f64>().is_ok())
}

pub fn parse_float(text: &str) -> Option<f64> {
    match text {
        ".inf" | ".Inf" | ".INF" | "+.inf" => Some(f64::INFINITY),
        "-.inf" => Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => Some(f64::NAN),
        _ if is_float(text) => text.parse().ok(),
        _ => parse_int(text).map(|i| i as f64),
    }
}

enum Frame {
    Seq {
        items: Vec<Node>,
        pos: Pos,
        anchor: usize,
    },
    Map {
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        pos: Pos,
        anchor: usize,
    },
}

/// Reads every document of a YAML stream (JSON is read as the YAML it is). Empty documents come
/// back as `Null` nodes; callers skip them.
pub fn parse_stream(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let mut docs = Vec::new();
    parse_stream_each(text, |doc| docs.push(doc))?;
    Ok(docs)
}

/// Like [`parse_stream`], handing each document to `each` as soon as it is complete, so that a
/// large stream never has more than one document's tree in memory. Documents before a syntax
/// error have been handed out when the error is returned.
pub fn parse_stream_each(text: &str, mut each: impl FnMut(Node)) -> Result<(), SyntaxError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut nodes = 0usize;

    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| SyntaxError {
            pos: Pos {
                line: e.marker().line() as u32,
                column: e.marker().col() as u32 + 1,
            },
            message: e.info().to_string(),
        })?;
        let pos = Pos {
            line: span.start.line() as u32,
            column: span.start.col() as u32 + 1,
        };
        let complete = match event {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentStart(_) => None,
            Event::DocumentEnd => {
                anchors.clear();
                None
            }
            Event::Alias(id) => {
                let Some(target) = anchors.get(&id) else {
                    return Err(SyntaxError {
                        pos,
                        message: "alias to an unknown anchor".into(),
                    });
                };
                nodes += count_nodes(target);
                if nodes > MAX_NODES {
                    return Err(SyntaxError {
                        pos,
                        message: format!("document expands to more than {MAX_NODES} nodes through aliases"),
                    });
                }
                Some((
                    Node {
                        value: target.value.clone(),
                        pos,
                    },
                    0,
                ))
            }
            Event::Scalar(text, style, anchor, tag) => {
                let forced_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let plain = style == ScalarStyle::Plain && !forced_str;
                let value = if plain && matches!(&*text, "" | "~" | "null" | "Null" | "NULL") {
                    Value::Null
                } else {
                    Value::Scalar {
                        text: text.into_owned(),
                        plain,
                    }
                };
                nodes += 1;
                Some((Node { value, pos }, anchor))
            }
            Event::SequenceStart(anchor, _) => {
                stack.push(Frame::Seq {
                    items: Vec::new(),
                    pos,
                    anchor,
                });
                None
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Frame::Map {
                    entries: Vec::new(),
                    key: None,
                    pos,
                    anchor,
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq { items, pos, anchor }) => {
                    nodes += 1;
                    Some((
                        Node {
                            value: Value::Seq(items),
                            pos,
                        },
                        anchor,
                    ))
                }
                Some(Frame::Map {
                    entries, pos, anchor, ..
                }) => {
                    nodes += 1;
                    Some((
                        Node {
                            value: Value::Map(entries),
                            pos,
                        },
                        anchor,
                    ))
                }
                None => {
                    return Err(SyntaxError {
                        pos,
                        message: "unbalanced collection end".into(),
                    });
                }
            },
        };
        if stack.len() > MAX_DEPTH {
            return Err(SyntaxError {
                pos,
                message: format!("nesting deeper than {MAX_DEPTH} levels"),
            });
        }
        let Some((node, anchor)) = complete else { continue };
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            None => each(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }
    Ok(())
}

fn count_nodes(node: &Node) -> usize {
    match &node.value {
        Value::Null | Value::Scalar { .. } => 1,
        Value::Seq(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        Value::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| count_nodes(k) + count_nodes(v))
                .sum::<usize>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_point_at_values() {
        let docs = parse_stream("a: 1\nspec:\n  ports:\n  - number: 80\n    name: http\n").unwrap();
        assert_eq!(docs.len(), 1);
        let d = &docs[0];
        assert_eq!(d.locate("spec.ports[0].number"), Pos { line: 4, column: 13 });
        assert_eq!(d.locate("spec.ports[0].name"), Pos { line: 5, column: 11 });
        // A missing field resolves to its closest existing ancestor.
        assert_eq!(d.locate("spec.ports[0].targetPort"), Pos { line: 4, column: 5 });
        assert_eq!(d.locate("spec.ports[3].number"), d.locate("spec.ports"));
    }

    #[test]
    fn quoted_keys_in_paths() {
        let docs = parse_stream("labels:\n  app.kubernetes.io/name: x\n").unwrap();
        assert_eq!(
            docs[0].locate("labels[\"app.kubernetes.io/name\"]"),
            Pos { line: 2, column: 27 }
        );
    }

    #[test]
    fn multi_document_and_empty_documents() {
        let docs = parse_stream("---\na: 1\n---\n---\nb: 2\n").unwrap();
        let non_null: Vec<_> = docs.iter().filter(|d| d.value != Value::Null).collect();
        assert_eq!(non_null.len(), 2);
    }

    #[test]
    fn aliases_are_expanded_and_bounded() {
        let docs = parse_stream("a: &x [1, 2]\nb: *x\n").unwrap();
        assert_eq!(docs[0].get("b").unwrap().value, docs[0].get("a").unwrap().value);
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse_stream(&bomb).unwrap_err();
        assert!(err.message.contains("more than"), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = "[".repeat(1000) + &"]".repeat(1000);
        let err = parse_stream(&deep).unwrap_err();
        assert!(
            err.message.contains("nesting") || err.message.contains("recursion"),
            "{err}"
        );
    }

    #[test]
    fn json_with_tabs_reads_as_yaml() {
        let docs = parse_stream("{\n\t\"kind\": \"ServiceEntry\",\n\t\"spec\": {\"hosts\": [\"a.com\"]}\n}\n").unwrap();
        assert_eq!(docs[0].get("kind").unwrap().as_str(), Some("ServiceEntry"));
        assert_eq!(docs[0].locate("spec.hosts[0]").line, 3);
    }

    #[test]
    fn core_schema() {
        assert_eq!(classify_plain("80"), Plain::Int);
        assert_eq!(classify_plain("-0x1F"), Plain::Int);
        assert_eq!(classify_plain("1.5"), Plain::Float);
        assert_eq!(classify_plain("true"), Plain::Bool(true));
        assert_eq!(classify_plain("1.2.3.4"), Plain::Str);
        assert_eq!(classify_plain("80s"), Plain::Str);
    }
}
