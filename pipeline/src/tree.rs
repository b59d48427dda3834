//! The spanned YAML tree the grammar walker reads: every node and mapping key keeps its
//! `line:col`, mappings keep their key order (stage order is meaningful).

use std::borrow::Cow;

use saphyr_parser::ScalarStyle;

use crate::model::Pos;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node<'a> {
    pub pos: Pos,
    pub kind: NodeKind<'a>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NodeKind<'a> {
    Scalar(Scalar<'a>),
    Seq(Vec<Node<'a>>),
    Map(Vec<Entry<'a>>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scalar<'a> {
    /// Borrowed from the source where possible: most scalars need no unescaping.
    pub value: Cow<'a, str>,
    pub style: ScalarStyle,
    /// Whether the scalar's source text sits on one line and maps 1:1 (plus quotes) onto
    /// `value`, so that a byte offset into `value` can be turned into a source column.
    pub verbatim_single_line: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry<'a> {
    pub key: Cow<'a, str>,
    pub key_pos: Pos,
    pub value: Node<'a>,
}

/// Rough YAML 1.2 core-schema classification of a scalar, used only for "found a ..." texts
/// and to decide what counts as null.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScalarKind {
    Null,
    Bool,
    Number,
    String,
}

impl Scalar<'_> {
    pub fn kind(&self) -> ScalarKind {
        if self.style != ScalarStyle::Plain {
            return ScalarKind::String;
        }
        match &*self.value {
            "" | "~" | "null" | "Null" | "NULL" => ScalarKind::Null,
            "true" | "True" | "TRUE" | "false" | "False" | "FALSE" => ScalarKind::Bool,
            v if looks_numeric(v) => ScalarKind::Number,
            _ => ScalarKind::String,
        }
    }
}

fn looks_numeric(v: &str) -> bool {
    let t = v.strip_prefix(['+', '-']).unwrap_or(v);
    if t.is_empty() {
        return false;
    }
    if matches!(t, ".inf" | ".Inf" | ".INF" | ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0o")) {
        return !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit());
    }
    // Integers and floats: digits, at most one '.', optional exponent. The digit test comes
    // first: it is cheap and rejects most strings before the float parser runs.
    t.bytes().any(|b| b.is_ascii_digit()) && t.parse::<f64>().is_ok()
}

impl Node<'_> {
    /// Human name of the node's type, as used in "expected X, found Y".
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            NodeKind::Map(_) => "a mapping",
            NodeKind::Seq(_) => "a sequence",
            NodeKind::Scalar(s) => match s.kind() {
                ScalarKind::Null => "null",
                ScalarKind::Bool => "a boolean",
                ScalarKind::Number => "a number",
                ScalarKind::String => "a string",
            },
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar(s) if s.kind() == ScalarKind::Null)
    }
}
