//! YAML as kubectl reads it: one row per edge case, with the JSON kubectl sends to the API
//! server for it (or that it refuses it). Every row was checked against a real kubectl (1.32,
//! sigs.k8s.io/yaml 1.4 over go-yaml v2) creating the resource on a real apiextensions API
//! server (1.36) with `kubectl create --dry-run=server -o json`; `docs/compatibility.md` ("YAML
//! as kubectl reads it") is the same table in prose. `KNOWN_DIFFERENCES` pins where meshentry
//! still reads differently, so that a change there is deliberate.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use meshentry_api::yaml::{Item, read_stream};
use serde_json::Value;

/// What reading a stream gives: the documents as kubectl's JSON, then errors and warnings.
#[derive(Debug, Default)]
struct Read {
    docs: Vec<Value>,
    errors: Vec<String>,
    warnings: Vec<String>,
}

fn read(yaml: &str) -> Read {
    let mut out = Read::default();
    read_stream(yaml, |item| match item {
        Item::Document(doc) => out.docs.push(doc.to_json()),
        Item::Error(e) => out
            .errors
            .push(format!("{}:{}: {}", e.pos.line, e.pos.column, e.message)),
        Item::Warning(w) => out
            .warnings
            .push(format!("{}:{}: {}", w.pos.line, w.pos.column, w.message)),
    });
    out
}

/// How kubectl reads a row's YAML.
enum Kubectl {
    /// The documents it sends, as JSON (a JSON array when the stream has several).
    Sends(&'static str),
    /// It sends these and says nothing; meshentry warns with this text.
    SendsWarn(&'static str, &'static str),
    /// It refuses the stream; meshentry's error contains this text.
    Refuses(&'static str),
}
use Kubectl::*;

const TABLE: &[(&str, &str, Kubectl)] = &[
    // Flow collections with colons: a plain scalar ends at `:` only when a blank follows.
    (
        "ipv6 in a flow list",
        "a: [192.0.2.10, 2001:db8::]",
        Sends(r#"{"a":["192.0.2.10","2001:db8::"]}"#),
    ),
    (
        "ipv6 before a comma",
        "a: [2001:db8::,fe80::]",
        Sends(r#"{"a":["2001:db8::","fe80::"]}"#),
    ),
    (
        "ipv6 in a flow mapping",
        "a: {address: 2001:db8::}",
        Sends(r#"{"a":{"address":"2001:db8::"}}"#),
    ),
    (
        "ipv6 then a blank is a key",
        "a: [2001:db8:: ]",
        Sends(r#"{"a":[{"2001:db8:":null}]}"#),
    ),
    ("leading colon in flow", "a: [::1]", Refuses("`::1`")),
    ("leading colon quoted", "a: [\"::1\"]", Sends(r#"{"a":["::1"]}"#)),
    ("leading colon in block", "a: ::1", Sends(r#"{"a":"::1"}"#)),
    ("trailing colon in block", "a: 2001:db8::\n", Refuses("")),
    (
        "host:port and URLs",
        "a: [a.example.com:80, http://x.y/z, a:b]",
        Sends(r#"{"a":["a.example.com:80","http://x.y/z","a:b"]}"#),
    ),
    ("question mark in flow", "a: [a.com/?x=1]", Refuses("")),
    (
        "flow mapping value then blank colon",
        "a: {address: 2001:db8:: }",
        Refuses(""),
    ),
    // YAML 1.1 booleans, exactly these spellings.
    (
        "yes no on off y n",
        "a: [yes, no, on, off, y, n, Y, True, NO, Off]",
        Sends(r#"{"a":[true,false,true,false,true,false,true,true,false,false]}"#),
    ),
    (
        "mixed case is a string",
        "a: [yES, oN, tRUE]",
        Sends(r#"{"a":["yES","oN","tRUE"]}"#),
    ),
    (
        "quoted or !!str booleans",
        "a: ['yes', \"on\", !!str y]",
        Sends(r#"{"a":["yes","on","y"]}"#),
    ),
    // Numbers: Go's ParseInt with base prefixes after `_` is dropped, then decimal floats.
    (
        "octal hex binary",
        "a: [0777, 0x1F, 0o17, 0b101, -0x10, 0X10]",
        Sends(r#"{"a":[511,31,15,5,-16,16]}"#),
    ),
    (
        "underscores signs zero",
        "a: [1_000, 1__0, +12, -0, 08]",
        Sends(r#"{"a":[1000,10,12,0,8]}"#),
    ),
    (
        "whole floats are integers",
        "a: [1e3, 8e1, 80.0, 1.]",
        Sends(r#"{"a":[1000,80,80,1]}"#),
    ),
    ("fractions", "a: [.5, -.5, 1.25]", Sends(r#"{"a":[0.5,-0.5,1.25]}"#)),
    (
        "int64 and uint64 range",
        "a: [9223372036854775807, 18446744073709551615, 99999999999999999999]",
        Sends(r#"{"a":[9223372036854775807,18446744073709551615,1e20]}"#),
    ),
    (
        "number-like strings",
        "a: [1e400, 12e, 0x, _1, 1.2.3, 12:30, 1:2:3, 2001-12-14, 2001-12-14T21:59:43Z, NaN, Infinity, 0.0.0.0]",
        Sends(
            r#"{"a":["1e400","12e","0x","_1","1.2.3","12:30","1:2:3","2001-12-14","2001-12-14T21:59:43Z","NaN","Infinity","0.0.0.0"]}"#,
        ),
    ),
    (".inf", "a: .inf", Refuses("JSON has no infinity")),
    ("-.inf in a list", "a: [x, -.Inf]", Refuses("JSON has no infinity")),
    (".nan", "a: .NaN", Refuses("JSON has no infinity")),
    ("quoted .inf", "a: \".inf\"", Sends(r#"{"a":".inf"}"#)),
    (
        "tags",
        "a: [!!str 0777, !custom x, !!int \"80\"]",
        Sends(r#"{"a":["0777","x",80]}"#),
    ),
    // Anchors, aliases and merge keys.
    ("alias", "a: &x [1, 2]\nb: *x\n", Sends(r#"{"a":[1,2],"b":[1,2]}"#)),
    (
        "merge then override",
        "b: &b {number: 80, name: http}\np: {<<: *b, number: 81}\n",
        Sends(r#"{"b":{"number":80,"name":"http"},"p":{"number":81,"name":"http"}}"#),
    ),
    (
        "merge in block style",
        "b: &b {number: 80, name: http}\np:\n  <<: *b\n  name: h2\n",
        Sends(r#"{"b":{"number":80,"name":"http"},"p":{"number":80,"name":"h2"}}"#),
    ),
    (
        "merge after a key replaces it",
        "b: &b {number: 80, name: http}\np:\n  number: 83\n  <<: *b\n",
        SendsWarn(
            r#"{"b":{"number":80,"name":"http"},"p":{"number":80,"name":"http"}}"#,
            "3:3: `number` is replaced",
        ),
    ),
    (
        "merge of a list: earlier wins",
        "p:\n  <<: [{num: 81, a: x}, {num: 82, p: TCP}]\n  p: HTTP\n",
        Sends(r#"{"p":{"num":81,"a":"x","p":"HTTP"}}"#),
    ),
    ("merge of a scalar", "p: {<<: 1}", Refuses("merge")),
    ("quoted << is a key", "p: {\"<<\": 1}", Sends(r#"{"p":{"<<":1}}"#)),
    (
        "alias across ---",
        "a: &x 1\n---\nb: *x\n",
        Refuses("3:4: while parsing node, found unknown anchor"),
    ),
    // Streams.
    (
        "empty documents",
        "---\n---\n# only a comment\n---\na: 1\n---\n---\nb: 2\n...\n---\nc: 3\n...\n",
        Sends(r#"[{"a":1},{"b":2},{"c":3}]"#),
    ),
    (
        "--- with a comment or blanks",
        "a: 1\n--- # next\nb: 2\n---   \nc: 3\n",
        Sends(r#"[{"a":1},{"b":2},{"c":3}]"#),
    ),
    (
        "content after --- on its line",
        "a: 1\n--- b: 2\n",
        Refuses("2:4: invalid document separator"),
    ),
    (
        "document after ... without ---",
        "a: 1\n...\nb: 2\n",
        SendsWarn(r#"{"a":1}"#, "3:1: kubectl reads one document"),
    ),
    // Tabs.
    (
        "tab after a key's colon",
        "a:\tb\nc: [x,\tz]\t# c\n",
        Sends(r#"{"a":"b","c":["x","z"]}"#),
    ),
    (
        "tab inside values",
        "a: x\ty\nb: \"c\td\"\n",
        Sends(r#"{"a":"x\ty","b":"c\td"}"#),
    ),
    ("tab as indentation", "a:\n\tb: c\n", Refuses("2:")),
    // Byte order marks, line ends.
    ("BOM", "\u{feff}a: 1\n", Sends(r#"{"a":1}"#)),
    (
        "BOM after ---",
        "a: 1\n---\n\u{feff}b: 2\n",
        Sends(r#"[{"a":1},{"b":2}]"#),
    ),
    (
        "CRLF",
        "a: 1\r\nb: [x,\r\n  z]\r\nc: |\r\n  l1\r\n  l2\r\nd: \"x\r\n  y\"\r\ne: >\r\n  f1\r\n  f2\r\n---\r\nf: 2\r\n",
        Sends(r#"[{"a":1,"b":["x","z"],"c":"l1\nl2\n","d":"x y","e":"f1 f2\n"},{"f":2}]"#),
    ),
    // Keys.
    (
        "duplicate key: last wins",
        "a: 1\nb: 2\na: 3\n",
        SendsWarn(r#"{"a":3,"b":2}"#, "1:1: duplicate key `a`"),
    ),
    ("quoted keys", "\"a\": 1\n'b': 2\n", Sends(r#"{"a":1,"b":2}"#)),
    (
        "plain keys become JSON keys",
        "80: a\nyes: b\n1.5: c\n0x10: d\n1e6: e\n0.00001: h\n123456789: i\n1e400: j\n",
        Sends(r#"{"80":"a","true":"b","1.5":"c","16":"d","1e+06":"e","1e-05":"h","123456789":"i","1e400":"j"}"#),
    ),
    (
        "y and n keys are booleans",
        "y: 1\nn: 2\non: 3\n",
        SendsWarn(r#"{"true":3,"false":2}"#, "1:1: duplicate key `true`"),
    ),
    ("null key", "~: a\n", Refuses("null mapping key")),
    ("list as a key", "? [a]\n: x\n", Refuses("as a mapping key")),
    // Nulls.
    (
        "null spellings",
        "a: ~\nb: null\nc:\nd: [~, null, \"\", Null, NULL]\n",
        Sends(r#"{"a":null,"b":null,"c":null,"d":[null,null,"",null,null]}"#),
    ),
];

/// Where meshentry still reads differently from kubectl (saphyr's YAML 1.2 scanner underneath):
/// each row is what meshentry does, with kubectl's verdict in the name.
const KNOWN_DIFFERENCES: &[(&str, &str, Kubectl)] = &[
    // kubectl refuses a tab right after `-` ("found character that cannot start any token").
    ("kubectl refuses: tab after -", "a:\n-\tx\n", Sends(r#"{"a":["x"]}"#)),
    // kubectl refuses a tab on an otherwise blank line inside a block ("violates indentation").
    (
        "kubectl refuses: tab on a blank line",
        "a:\n  b: 1\n\t\n  c: 2\n",
        Sends(r#"{"a":{"b":1,"c":2}}"#),
    ),
    // kubectl reads `?` in a flow list as a key indicator (`[{"x": null}]`), which the API server
    // then refuses for a list of strings; meshentry refuses it while reading.
    (
        "kubectl reads a mapping: ? in flow",
        "a: [?x]\n",
        Refuses("unexpected end of plain scalar"),
    ),
    (
        "kubectl refuses: ? inside a flow value",
        "a: {b: c?}\n",
        Refuses("unexpected end of plain scalar"),
    ),
    // kubectl reads a byte order mark that is not at the start of a part as part of the key
    // after it (`"\u{feff}a"`).
    (
        "kubectl differs: BOM after a comment",
        "# c\n\u{feff}a: 1\n",
        Sends(r#"{"a":1}"#),
    ),
    // kubectl (libyaml) does not check indentation inside [ ] and { }; YAML 1.2 does.
    (
        "kubectl accepts: flow item left of its key",
        "a:\n  b: [x,\n  y]\n",
        Refuses("indentation"),
    ),
];

fn check(name: &str, yaml: &str, want: &Kubectl) -> Result<(), String> {
    let got = read(yaml);
    let docs = if got.docs.len() == 1 {
        got.docs[0].clone()
    } else {
        Value::Array(got.docs.clone())
    };
    match want {
        Sends(json) | SendsWarn(json, _) => {
            if !got.errors.is_empty() {
                return Err(format!("{name}: unexpected errors {:?}", got.errors));
            }
            let want: Value = serde_json::from_str(json).unwrap();
            if docs != want {
                return Err(format!("{name}: read {docs}, kubectl sends {want}"));
            }
        }
        Refuses(text) => {
            if !got.errors.iter().any(|e| e.contains(text)) {
                return Err(format!("{name}: want an error containing {text:?}, got {got:?}"));
            }
        }
    }
    match want {
        SendsWarn(_, w) if !got.warnings.iter().any(|g| g.contains(w)) => Err(format!(
            "{name}: want a warning containing {w:?}, got {:?}",
            got.warnings
        )),
        Sends(_) if !got.warnings.is_empty() => Err(format!("{name}: unexpected warnings {:?}", got.warnings)),
        _ => Ok(()),
    }
}

fn check_all(table: &[(&str, &str, Kubectl)]) {
    let failures: Vec<String> = table
        .iter()
        .filter_map(|(name, yaml, want)| check(name, yaml, want).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} rows differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn yaml_as_kubectl_reads_it() {
    check_all(TABLE);
}

#[test]
fn known_differences_from_kubectl() {
    check_all(KNOWN_DIFFERENCES);
}
