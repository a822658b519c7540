//! A YAML (or JSON) stream as trees of nodes that remember where they were written.
//!
//! Serde deserializers forget positions once a value is built, but every finding we report must
//! name a file, line and column, and we must report all findings at once rather than stop at the
//! first. So documents are first read into this tree, then decoded into the typed model by
//! [`crate::de`] (which records every type problem with its position), and validation findings
//! are placed back on the tree through their field path ([`Node::locate`]).
//!
//! The stream is read as `kubectl` reads it, because that is how the resources reach Istio:
//! kubectl splits the stream at `---` lines (k8s.io/apimachinery's `YAMLReader`), converts each
//! part to JSON with sigs.k8s.io/yaml over go-yaml v2, and sends the JSON. So plain scalars are
//! typed by go-yaml v2's YAML 1.1 rules (`yes` and `on` are booleans, `0777` is octal), a plain
//! scalar inside `[ ]` or `{ }` ends at `:` only when a blank follows (`[2001:db8::]` is one
//! address), `<<` merges mappings, and a key written twice keeps its last value. The table of
//! these cases, with kubectl's verdict on each, is in `docs/compatibility.md` and in the tests
//! below.

use std::collections::HashMap;

use saphyr_parser::input::SkipTabs;
use saphyr_parser::{Event, Input, Parser, ScalarStyle, StrInput};

/// Nesting deeper than this is refused: it protects the recursive decoder's stack, and no Istio
/// resource comes close.
pub const MAX_DEPTH: usize = 64;

/// Aliases may not add more than this many nodes to a stream ("billion laughs"). Only the
/// copies count: a node written out costs at least a byte of input, so the input's size already
/// bounds those, and a big file without aliases (50,000 ServiceEntries, 35 MB) is not refused.
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
    /// A scalar's text. `plain` scalars are typed as kubectl's YAML reader types them
    /// ([`resolve_plain`]: `80` is a number, `yes` a boolean); quoted ones are always strings.
    /// Mapping keys are always strings here: a plain key is stored as the JSON key kubectl
    /// makes of it (`80`, `true`).
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

    /// For a plain scalar kubectl does not read as a string (`yes`, `0777`, `1e3`), how to
    /// write it so that it is one; `None` for everything else.
    pub fn quote_hint(&self) -> Option<String> {
        match &self.value {
            Value::Scalar { text, plain: true } if classify_plain(text) != Plain::Str => Some(format!(
                "kubectl's YAML reader reads a plain `{text}` as {}; write \"{text}\" for the string",
                self.kind_name()
            )),
            _ => None,
        }
    }

    /// The JSON kubectl sends for this node (sigs.k8s.io/yaml's YAML-to-JSON conversion): plain
    /// scalars typed by [`resolve_plain`], whole floats as integers (Go's JSON encoder writes
    /// `1e3` as `1000`).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Scalar { text, plain: false } => J::String(text.clone()),
            Value::Scalar { text, plain: true } => match resolve_plain(text) {
                Resolved::Null => J::Null,
                Resolved::Bool(b) => J::Bool(b),
                Resolved::Int(i) => match (i64::try_from(i), u64::try_from(i)) {
                    (Ok(v), _) => J::from(v),
                    (_, Ok(v)) => J::from(v),
                    _ => J::String(text.clone()),
                },
                Resolved::Float(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => J::from(f as i64),
                Resolved::Float(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
                Resolved::Str => J::String(text.clone()),
            },
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), v.to_json()))
                    .collect(),
            ),
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

/// The JSON type kubectl gives a plain scalar, as [`classify_plain`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plain {
    Bool(bool),
    Int,
    Float,
    Str,
}

/// What kubectl's YAML reader (go-yaml v2's `resolve`) makes of a plain scalar.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Resolved {
    Null,
    Bool(bool),
    /// An integer in int64 or uint64 range.
    Int(i128),
    /// A float; `.inf` and `.nan` included, which kubectl cannot send (JSON has neither).
    Float(f64),
    Str,
}

/// Types a plain scalar as go-yaml v2 does. YAML 1.1's booleans (`y`, `yes`, `on` and their
/// negations, in three spellings each) are booleans; integers are Go's `ParseInt` with base
/// prefixes (`0x`, `0o`, `0b`, and a leading `0` for octal) after underscores are removed;
/// anything else that looks like a decimal float is a float. Only scalars whose first character
/// is a digit, sign, `.`, or one of `yYnNtTfFoO~` are candidates: `NaN` and `Infinity` are
/// strings. Timestamps (`2001-12-14`) stay strings, as go-yaml v2 keeps them for an untyped
/// target.
pub fn resolve_plain(text: &str) -> Resolved {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Resolved::Bool(true);
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Resolved::Bool(false);
        }
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Resolved::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        _ => {}
    }
    match text.as_bytes().first() {
        Some(b'.') => match decimal_float(text) {
            Some(f) => Resolved::Float(f),
            None => Resolved::Str,
        },
        Some(b'0'..=b'9' | b'+' | b'-') => {
            let digits: String = text.chars().filter(|&c| c != '_').collect();
            if let Some(i) = go_parse_int(&digits) {
                return Resolved::Int(i);
            }
            match decimal_float(&digits) {
                Some(f) => Resolved::Float(f),
                None => Resolved::Str,
            }
        }
        _ => Resolved::Str,
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`, falling back to `ParseUint(s, 0, 64)` as go-yaml does:
/// an optional sign, then a `0x`, `0o`, `0b` or bare `0` (octal) prefix or none.
fn go_parse_int(s: &str) -> Option<i128> {
    let (sign, body) = match s.as_bytes().first()? {
        b'-' => (Some(-1), &s[1..]),
        b'+' => (Some(1), &s[1..]),
        _ => (None, s),
    };
    let lower = body.get(..2).map(str::to_ascii_lowercase);
    let (radix, digits) = match lower.as_deref() {
        Some("0x") => (16, &body[2..]),
        Some("0o") => (8, &body[2..]),
        Some("0b") => (2, &body[2..]),
        _ if body.len() > 1 && body.starts_with('0') => (8, &body[1..]),
        _ => (10, body),
    };
    if digits.is_empty() || digits.len() > 64 || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = i128::from_str_radix(digits, radix).ok()?;
    match sign {
        // ParseUint takes no sign, so only ParseInt's range is open to a signed number.
        Some(s) => {
            let v = s * magnitude;
            (i128::from(i64::MIN)..=i128::from(i64::MAX)).contains(&v).then_some(v)
        }
        None => (magnitude <= i128::from(u64::MAX)).then_some(magnitude),
    }
}

/// go-yaml's float pattern `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, parsed as Go's
/// `ParseFloat` does: a value too large for a float64 is not a float (so `1e400` is a string).
fn decimal_float(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'-' | b'+')));
    let int_digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    i += int_digits;
    if int_digits == 0 {
        // `.5` form: the fraction is required.
        if b.get(i) != Some(&b'.') {
            return None;
        }
        let frac = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if frac == 0 {
            return None;
        }
        i += 1 + frac;
    } else if b.get(i) == Some(&b'.') {
        i += 1 + b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        let exp = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if exp == 0 {
            return None;
        }
        i += exp;
    }
    if i != b.len() {
        return None;
    }
    s.parse::<f64>().ok().filter(|f| f.is_finite())
}

pub fn classify_plain(text: &str) -> Plain {
    match resolve_plain(text) {
        Resolved::Bool(b) => Plain::Bool(b),
        Resolved::Int(_) => Plain::Int,
        Resolved::Float(_) => Plain::Float,
        Resolved::Null | Resolved::Str => Plain::Str,
    }
}

/// The integer the API server receives for a plain scalar, if it receives one. Floats count
/// when whole: kubectl's JSON encoder writes `80.0` and `8e1` as `80`, which an integer field
/// takes.
pub fn parse_int(text: &str) -> Option<i128> {
    match resolve_plain(text) {
        Resolved::Int(i) => Some(i),
        Resolved::Float(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Some(f as i128),
        _ => None,
    }
}

pub fn parse_float(text: &str) -> Option<f64> {
    match resolve_plain(text) {
        Resolved::Int(i) => Some(i as f64),
        Resolved::Float(f) => Some(f),
        _ => None,
    }
}

/// The JSON object key kubectl makes of a plain mapping key (sigs.k8s.io/yaml's
/// `convertToJSONableObject`): strings stay, integers are written in decimal, booleans as
/// `true`/`false`, floats as Go's `FormatFloat(f, 'g', -1, 32)`. A null key, or an integer
/// beyond int64, has no JSON form and fails the document.
fn json_key(text: &str) -> Result<String, &'static str> {
    match resolve_plain(text) {
        Resolved::Str => Ok(text.to_string()),
        Resolved::Null => Err("a null mapping key has no JSON form; kubectl refuses the document"),
        Resolved::Bool(b) => Ok(b.to_string()),
        Resolved::Int(i) if i <= i128::from(i64::MAX) => Ok(i.to_string()),
        Resolved::Int(_) => Err("an integer key beyond int64 has no JSON form; kubectl refuses the document"),
        Resolved::Float(f) => Ok(go_float32_g(f)),
    }
}

/// Go's `strconv.FormatFloat(f, 'g', -1, 32)` with go-yaml's names for the specials.
fn go_float32_g(f: f64) -> String {
    if f.is_nan() {
        return ".nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { ".inf" } else { "-.inf" }.into();
    }
    // Rust's `{:e}` gives the shortest digits that read back as the same f32, as Go's does.
    let sci = format!("{:e}", f as f32);
    let (neg, sci) = match sci.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, sci.as_str()),
    };
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digits = if digits.chars().all(|c| c == '0') {
        "0".to_string()
    } else {
        digits
    };
    let mut out = String::from(if neg { "-" } else { "" });
    // Shortest 'g' switches to exponent form below 1e-4 and from 1e6: Go decides with precision
    // 6 when the precision is the shortest.
    if !(-4..6).contains(&exp) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push_str(&format!("e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs()));
    } else {
        let point = exp + 1;
        if point <= 0 {
            out.push_str("0.");
            out.push_str(&"0".repeat(point.unsigned_abs() as usize));
            out.push_str(&digits);
        } else {
            let point = point as usize;
            if digits.len() <= point {
                out.push_str(&digits);
                out.push_str(&"0".repeat(point - digits.len()));
            } else {
                out.push_str(&digits[..point]);
                out.push('.');
                out.push_str(&digits[point..]);
            }
        }
    }
    out
}

/// saphyr's input with go-yaml v2's scanning rules where the two differ. saphyr follows YAML
/// 1.2; kubectl's go-yaml v2 follows libyaml:
/// - inside `[ ]` and `{ }` a plain scalar ends at `:` only when a blank follows (YAML 1.2 also
///   ends it before `,[]{}`), so `[2001:db8::]` is one string, and it ends at `?`;
/// - a tab separates tokens like a space does after a key's `:` (`name:<TAB>x`).
struct KubectlInput<'a>(StrInput<'a>);

impl Input for KubectlInput<'_> {
    fn lookahead(&mut self, count: usize) {
        self.0.lookahead(count);
    }
    fn buflen(&self) -> usize {
        self.0.buflen()
    }
    fn bufmaxlen(&self) -> usize {
        self.0.bufmaxlen()
    }
    fn buf_is_empty(&self) -> bool {
        self.0.buf_is_empty()
    }
    fn raw_read_ch(&mut self) -> char {
        self.0.raw_read_ch()
    }
    fn raw_read_non_breakz_ch(&mut self) -> Option<char> {
        self.0.raw_read_non_breakz_ch()
    }
    fn skip(&mut self) {
        self.0.skip();
    }
    fn skip_n(&mut self, count: usize) {
        self.0.skip_n(count);
    }
    fn peek(&self) -> char {
        self.0.peek()
    }
    fn peek_nth(&self, n: usize) -> char {
        self.0.peek_nth(n)
    }
    fn peek_opt(&self) -> Option<char> {
        self.0.peek_opt()
    }
    fn look_ch(&mut self) -> char {
        self.0.look_ch()
    }
    fn next_char_is(&self, c: char) -> bool {
        self.0.next_char_is(c)
    }
    fn nth_char_is(&self, n: usize, c: char) -> bool {
        self.0.nth_char_is(n, c)
    }
    fn next_2_are(&self, c1: char, c2: char) -> bool {
        self.0.next_2_are(c1, c2)
    }
    fn next_3_are(&self, c1: char, c2: char, c3: char) -> bool {
        self.0.next_3_are(c1, c2, c3)
    }
    fn next_is_document_indicator(&self) -> bool {
        self.0.next_is_document_indicator()
    }
    fn next_is_document_start(&self) -> bool {
        self.0.next_is_document_start()
    }
    fn next_is_document_end(&self) -> bool {
        self.0.next_is_document_end()
    }
    fn skip_ws_to_eol(&mut self, skip_tabs: SkipTabs) -> (usize, Result<SkipTabs, &'static str>) {
        match self.0.skip_ws_to_eol(skip_tabs) {
            (n, Ok(SkipTabs::Result(tabs, ws))) => (n, Ok(SkipTabs::Result(tabs, ws || tabs))),
            other => other,
        }
    }
    fn next_can_be_plain_scalar(&self, in_flow: bool) -> bool {
        match self.0.peek() {
            ':' => !is_blankz(self.0.peek_nth(1)),
            ',' | '?' | '[' | ']' | '{' | '}' if in_flow => false,
            // A byte order mark is not scalar content.
            '\u{FEFF}' => false,
            _ => true,
        }
    }
    fn next_is_blank_or_break(&self) -> bool {
        self.0.next_is_blank_or_break()
    }
    fn next_is_blank_or_breakz(&self) -> bool {
        self.0.next_is_blank_or_breakz()
    }
    fn next_is_blank(&self) -> bool {
        self.0.next_is_blank()
    }
    fn next_is_break(&self) -> bool {
        self.0.next_is_break()
    }
    fn next_is_breakz(&self) -> bool {
        self.0.next_is_breakz()
    }
    fn next_is_z(&self) -> bool {
        self.0.next_is_z()
    }
    fn next_is_flow(&self) -> bool {
        self.0.next_is_flow()
    }
    fn next_is_digit(&self) -> bool {
        self.0.next_is_digit()
    }
    fn next_is_alpha(&self) -> bool {
        self.0.next_is_alpha()
    }
    fn skip_while_non_breakz(&mut self) -> usize {
        self.0.skip_while_non_breakz()
    }
    fn skip_while_blank(&mut self) -> usize {
        self.0.skip_while_blank()
    }
    fn fetch_while_is_alpha(&mut self, out: &mut String) -> usize {
        self.0.fetch_while_is_alpha(out)
    }
    fn fetch_while_is_yaml_non_space(&mut self, out: &mut String) -> usize {
        self.0.fetch_while_is_yaml_non_space(out)
    }
}

fn is_blankz(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\0')
}

/// Something reading a stream produced, in stream order.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// A document (an empty one is a `Null` node).
    Document(Node),
    /// A problem that makes kubectl refuse the document (or, for a bad `---` line, the rest of
    /// the stream). Reading goes on with the next document where kubectl's would.
    Error(SyntaxError),
    /// Something kubectl accepts silently that probably is not what was meant (a key written
    /// twice, a document it skips).
    Warning(SyntaxError),
}

/// Reads every document of a YAML stream (JSON is read as the YAML it is). Empty documents come
/// back as `Null` nodes; callers skip them. Fails with the first error; warnings are dropped.
pub fn parse_stream(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let mut docs = Vec::new();
    parse_stream_each(text, |doc| docs.push(doc))?;
    Ok(docs)
}

/// Like [`parse_stream`], handing each document to `each` as soon as it is complete, so that a
/// large stream never has more than one document's tree in memory. Every document kubectl would
/// read is handed out; the first error, if any, is returned at the end.
pub fn parse_stream_each(text: &str, mut each: impl FnMut(Node)) -> Result<(), SyntaxError> {
    let mut first_error = None;
    read_stream(text, |item| match item {
        Item::Document(doc) => each(doc),
        Item::Error(e) => {
            first_error.get_or_insert(e);
        }
        Item::Warning(_) => {}
    });
    first_error.map_or(Ok(()), Err)
}

/// Reads a stream as kubectl does, handing out documents, errors and warnings in order.
///
/// kubectl's `YAMLReader` cuts the stream at every line that starts with `---` (followed only by
/// blanks or a comment; anything else there is an error that ends the stream), and go-yaml then
/// reads only the first document of each part: a document after a `...` line without a `---`
/// is skipped. A UTF-8 byte order mark may open each part.
pub fn read_stream(text: &str, mut f: impl FnMut(Item)) {
    let mut nodes = 0usize;
    // kubectl's YAMLOrJSONDecoder decodes a stream whose first non-blank character is `{` as a
    // sequence of JSON objects, one after another, with no `---` between them.
    if text.trim_start().starts_with('{') {
        return read_json_stream(text, &mut nodes, &mut f);
    }
    let mut part_start = 0usize;
    let mut part_line = 1u32;
    let mut line_no = 1u32;
    let mut offset = 0usize;
    while offset <= text.len() {
        let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
        let line = text[offset..line_end].trim_end_matches('\r');
        let at_end = line_end == text.len();
        if let Some(rest) = line.strip_prefix("---") {
            let rest = rest.trim();
            if !rest.is_empty() && !rest.starts_with('#') {
                read_part(&text[part_start..offset], part_line, 0, &mut nodes, &mut f);
                f(Item::Error(SyntaxError {
                    pos: Pos {
                        line: line_no,
                        column: 4,
                    },
                    message: format!(
                        "invalid document separator: kubectl allows only a comment after `---` on its line, found `{rest}`; kubectl reads nothing from here on"
                    ),
                }));
                return;
            }
            read_part(&text[part_start..offset], part_line, 0, &mut nodes, &mut f);
            part_start = (line_end + 1).min(text.len());
            part_line = line_no + 1;
        }
        if at_end {
            break;
        }
        offset = line_end + 1;
        line_no += 1;
    }
    if part_start < text.len() {
        read_part(&text[part_start..], part_line, 0, &mut nodes, &mut f);
    }
}

/// Reads concatenated JSON objects, each as the YAML it also is.
fn read_json_stream(text: &str, nodes: &mut usize, f: &mut impl FnMut(Item)) {
    let (mut line, mut col) = (1u32, 0u32);
    let mut start: Option<(usize, u32, u32)> = None;
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, c) in text.char_indices() {
        if start.is_none() && !c.is_whitespace() {
            if c != '{' {
                // Not an object: let the reader say what is wrong with the rest.
                return read_part(&text[i..], line, col, nodes, f);
            }
            start = Some((i, line, col));
        }
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else {
            match c {
                '"' => in_string = true,
                '{' | '[' => depth += 1,
                '}' | ']' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0
                        && let Some((from, l, c0)) = start.take()
                    {
                        read_part(&text[from..i + 1], l, c0, nodes, f);
                    }
                }
                _ => {}
            }
        }
        if c == '\n' {
            line += 1;
            col = 0;
        } else {
            col += 1;
        }
    }
    if let Some((from, l, c0)) = start {
        read_part(&text[from..], l, c0, nodes, f);
    }
}

/// A collection being built.
struct Frame {
    kind: FrameKind,
    pos: Pos,
    anchor: usize,
    /// Written in flow style (`[ ]`, `{ }`).
    flow: bool,
}

enum FrameKind {
    Seq(Vec<Node>),
    Map(MapBuilder),
}

/// A mapping as go-yaml v2 fills a Go map: entries in order, a repeated key replacing the
/// earlier value, `<<` copying in the entries of the mapping(s) it names.
#[derive(Default)]
struct MapBuilder {
    entries: Vec<(Node, Node)>,
    /// Whether each entry's value was written in this mapping (not merged in).
    explicit: Vec<bool>,
    index: HashMap<String, usize>,
    /// The key read, waiting for its value; `Some(None)` for a `<<` merge key.
    key: Option<Option<Node>>,
}

impl MapBuilder {
    /// Sets `key` to `value`; returns the key node it replaces, if that one was written in this
    /// mapping.
    fn set(&mut self, key: Node, value: Node, explicit: bool) -> Option<Node> {
        let name = key.as_str().unwrap_or_default().to_string();
        match self.index.get(&name) {
            Some(&i) => {
                let old = std::mem::replace(&mut self.entries[i], (key, value));
                let was_explicit = std::mem::replace(&mut self.explicit[i], explicit);
                was_explicit.then_some(old.0)
            }
            None => {
                self.index.insert(name, self.entries.len());
                self.entries.push((key, value));
                self.explicit.push(explicit);
                None
            }
        }
    }
}

/// Where in the source a span starts: for telling a flow collection from a block one.
struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { text, starts }
    }

    /// The character at 1-based `line`, 0-based char `col`.
    fn char_at(&self, line: usize, col: usize) -> Option<char> {
        let start = *self.starts.get(line.checked_sub(1)?)?;
        self.text[start..].chars().nth(col)
    }
}

/// Reads one part of the stream (between `---` lines) as go-yaml v2 reads it: the first
/// document only. `first_line` and `first_col` (0-based) are where the part starts in the
/// stream.
fn read_part(part: &str, first_line: u32, first_col: u32, nodes: &mut usize, f: &mut impl FnMut(Item)) {
    let part = part.strip_prefix('\u{feff}').unwrap_or(part);
    if part.trim().is_empty() {
        return;
    }
    let lines = LineIndex::new(part);
    let at = |line: usize, col: usize| Pos {
        line: first_line + line as u32 - 1,
        column: col as u32 + 1 + if line == 1 { first_col } else { 0 },
    };
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut warnings: Vec<SyntaxError> = Vec::new();
    let mut doc: Option<Node> = None;
    let parser = Parser::new(KubectlInput(StrInput::new(part)));
    let fail = |f: &mut dyn FnMut(Item), pos: Pos, message: String| f(Item::Error(SyntaxError { pos, message }));

    for next in parser {
        let (event, span) = match next {
            Ok(ev) => ev,
            Err(e) => {
                if doc.is_some() {
                    // go-yaml stops after the first document and never reads this far.
                    break;
                }
                let pos = at(e.marker().line(), e.marker().col());
                return fail(f, pos, e.info().to_string());
            }
        };
        let pos = at(span.start.line(), span.start.col());
        if doc.is_some() {
            match event {
                Event::DocumentEnd => continue,
                Event::DocumentStart(_) => warnings.push(SyntaxError {
                    pos,
                    message: "kubectl reads one document between `---` lines and skips this one (it follows `...`); put `---` before it".into(),
                }),
                _ => {}
            }
            break;
        }
        let complete: Option<(Node, usize)> = match event {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentStart(_) | Event::DocumentEnd => {
                None
            }
            Event::Alias(id) => {
                let Some(target) = anchors.get(&id) else {
                    return fail(f, pos, "alias to an unknown anchor".into());
                };
                *nodes += count_nodes(target);
                if *nodes > MAX_NODES {
                    return fail(
                        f,
                        pos,
                        format!("aliases expand to more than {MAX_NODES} nodes in this file"),
                    );
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
                let in_flow = stack.last().is_some_and(|fr| fr.flow);
                let is_key = matches!(stack.last(), Some(Frame { kind: FrameKind::Map(m), .. }) if m.key.is_none());
                // A non-core tag (`!foo x`) leaves the text as a string; `!!str` forces one.
                let typed_by_tag = tag.as_ref().is_some_and(|t| {
                    (t.handle == "tag:yaml.org,2002:" || t.handle == "!!")
                        && matches!(t.suffix.as_str(), "int" | "float" | "bool" | "null" | "merge")
                });
                let plain = (style == ScalarStyle::Plain && tag.is_none()) || typed_by_tag;
                if plain && in_flow && text.starts_with(':') {
                    return fail(
                        f,
                        pos,
                        format!(
                            "kubectl's YAML reader reads a `:` that starts a value inside [ ] or {{ }} as a key separator and refuses `{text}`; quote it"
                        ),
                    );
                }
                let value = if plain && is_key {
                    if text == "<<" {
                        // The merge key: its value is merged when it arrives.
                        if let Some(Frame {
                            kind: FrameKind::Map(m),
                            ..
                        }) = stack.last_mut()
                        {
                            m.key = Some(None);
                        }
                        continue;
                    }
                    match json_key(&text) {
                        Ok(k) => Value::Scalar { text: k, plain: false },
                        Err(msg) => return fail(f, pos, msg.into()),
                    }
                } else if plain {
                    match resolve_plain(&text) {
                        Resolved::Null => Value::Null,
                        Resolved::Float(x) if !x.is_finite() => {
                            return fail(
                                f,
                                pos,
                                format!(
                                    "kubectl cannot send `{text}`: JSON has no infinity or NaN, so kubectl refuses the document; quote it if it is a string"
                                ),
                            );
                        }
                        _ => Value::Scalar {
                            text: text.into_owned(),
                            plain: true,
                        },
                    }
                } else {
                    Value::Scalar {
                        text: text.into_owned(),
                        plain: false,
                    }
                };
                Some((Node { value, pos }, anchor))
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                let flow = matches!(lines.char_at(span.start.line(), span.start.col()), Some('[' | '{'));
                let kind = if matches!(event, Event::SequenceStart(..)) {
                    FrameKind::Seq(Vec::new())
                } else {
                    FrameKind::Map(MapBuilder::default())
                };
                if let Some(Frame {
                    kind: FrameKind::Map(m),
                    ..
                }) = stack.last()
                    && m.key.is_none()
                {
                    return fail(
                        f,
                        pos,
                        "a list or object as a mapping key has no JSON form; kubectl refuses the document".into(),
                    );
                }
                stack.push(Frame {
                    kind,
                    pos,
                    anchor,
                    flow,
                });
                if stack.len() > MAX_DEPTH {
                    return fail(f, pos, format!("nesting deeper than {MAX_DEPTH} levels"));
                }
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame {
                    kind: FrameKind::Seq(items),
                    pos,
                    anchor,
                    ..
                }) => Some((
                    Node {
                        value: Value::Seq(items),
                        pos,
                    },
                    anchor,
                )),
                Some(Frame {
                    kind: FrameKind::Map(m),
                    pos,
                    anchor,
                    ..
                }) => Some((
                    Node {
                        value: Value::Map(m.entries),
                        pos,
                    },
                    anchor,
                )),
                None => return fail(f, pos, "unbalanced collection end".into()),
            },
        };
        let Some((node, anchor)) = complete else { continue };
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            None => doc = Some(node),
            Some(Frame {
                kind: FrameKind::Seq(items),
                ..
            }) => items.push(node),
            Some(Frame {
                kind: FrameKind::Map(m),
                ..
            }) => match m.key.take() {
                None => m.key = Some(Some(node)),
                Some(Some(key)) => {
                    let (line, name) = (key.pos.line, key.as_str().unwrap_or_default().to_string());
                    if let Some(old) = m.set(key, node, true) {
                        warnings.push(SyntaxError {
                            pos: old.pos,
                            message: format!(
                                "duplicate key `{name}`: kubectl keeps only the last value (line {line}) and drops this one"
                            ),
                        });
                    }
                }
                Some(None) => {
                    if let Err(message) = merge(m, node, &mut warnings) {
                        return fail(f, pos, message);
                    }
                }
            },
        }
    }
    if let Some(doc) = doc {
        f(Item::Document(doc));
    }
    for w in warnings {
        f(Item::Warning(w));
    }
}

/// Applies a `<<` merge as go-yaml v2 does: the named mapping's entries are set in order, so
/// they replace keys written before the `<<` and are replaced by keys written after it; of a
/// list of mappings, the earlier ones win.
fn merge(m: &mut MapBuilder, value: Node, warnings: &mut Vec<SyntaxError>) -> Result<(), String> {
    let merge_pos = value.pos;
    let sources: Vec<Node> = match value.value {
        Value::Map(_) => vec![value],
        Value::Seq(items) => items.into_iter().rev().collect(),
        _ => return Err("a `<<` merge takes an object or a list of objects".into()),
    };
    for source in sources {
        let Value::Map(entries) = source.value else {
            return Err("a `<<` merge takes an object or a list of objects".into());
        };
        for (k, v) in entries {
            let name = k.as_str().unwrap_or_default().to_string();
            if let Some(old) = m.set(k, v, false) {
                warnings.push(SyntaxError {
                    pos: old.pos,
                    message: format!(
                        "`{name}` is replaced by the value the `<<` merge on line {} brings: kubectl's YAML reader merges in order, so keys written before `<<` lose",
                        merge_pos.line
                    ),
                });
            }
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

    /// The bound is on what aliases add, not on what is written: a file that big without an
    /// alias (a generated config of 50,000 ServiceEntries has 5.6 million nodes) was refused as
    /// "expands through aliases".
    #[test]
    fn a_big_file_without_aliases_is_not_bounded() {
        let items = MAX_NODES + 10;
        let mut big = String::with_capacity(items * 4 + 16);
        big.push_str("items:\n");
        for _ in 0..items {
            big.push_str("- 1\n");
        }
        let docs = parse_stream(&big).unwrap();
        let Some(Value::Seq(seq)) = docs[0].get("items").map(|n| &n.value) else {
            panic!("not a sequence")
        };
        assert_eq!(seq.len(), items);
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
