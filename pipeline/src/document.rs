//! The YAML front door for the project's other YAML (the daemon's config file, YAML-valued
//! environment variables): the pipelines' parser with its restrictions (one document, no
//! anchors or aliases, bounded nesting, duplicate keys reported), every node and key with its
//! `line:col`, every problem a [`Diagnostic`], and the pipelines' "did you mean".

use crate::limits::MAX_FILE_BYTES;
use crate::model::Pos;
use crate::tree::{Node, NodeKind, ScalarKind};
use crate::Diagnostic;

/// One node of a YAML document and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlNode {
    pub pos: Pos,
    pub value: YamlValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum YamlValue {
    /// `~`, `null`, nothing at all.
    Null,
    /// A scalar as written (quotes removed); `kind` is how YAML 1.2's core schema reads it
    /// (a quoted scalar is always a string).
    Scalar {
        text: String,
        kind: ScalarType,
    },
    Seq(Vec<YamlNode>),
    /// In file order.
    Map(Vec<YamlEntry>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarType {
    Bool,
    Number,
    String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct YamlEntry {
    pub key: String,
    pub key_pos: Pos,
    pub value: YamlNode,
}

impl YamlNode {
    /// As in "expected X, found Y": `a mapping`, `a sequence`, `a string`, `a number`,
    /// `a boolean`, `null`.
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            YamlValue::Null => "null",
            YamlValue::Map(_) => "a mapping",
            YamlValue::Seq(_) => "a sequence",
            YamlValue::Scalar { kind, .. } => match kind {
                ScalarType::Bool => "a boolean",
                ScalarType::Number => "a number",
                ScalarType::String => "a string",
            },
        }
    }
}

/// Parses one YAML document: its tree and the problems found building it. Some problems leave
/// a tree (a duplicate key: the first one wins), so that its other problems can be reported
/// too; a document that cannot be read (a syntax error) or is empty is [`YamlValue::Null`] at
/// 1:1. `file` is only used in diagnostics.
pub fn parse_yaml(file: &str, src: &str) -> (YamlNode, Vec<Diagnostic>) {
    let diagnostic = |pos: Pos, message: String| Diagnostic {
        file: file.to_string(),
        line: pos.line,
        col: pos.col,
        message,
    };
    let start = Pos { line: 1, col: 1 };
    let null = YamlNode {
        pos: start,
        value: YamlValue::Null,
    };
    if src.len() > MAX_FILE_BYTES {
        let problem = diagnostic(
            start,
            format!(
                "file too large: {} bytes; at most {MAX_FILE_BYTES} are read",
                src.len()
            ),
        );
        return (null, vec![problem]);
    }
    let mut raw = Vec::new();
    let root = crate::yaml::load(src, &mut raw);
    let problems = raw
        .into_iter()
        .map(|(pos, message)| diagnostic(pos, message))
        .collect();
    (root.map_or(null, |root| owned(&root)), problems)
}

/// `"; did you mean `x`?"` for the candidate closest to `word`, or `""` when none is close
/// (the pipelines' measure: see `suggest.rs`).
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    crate::suggest::did_you_mean(word, candidates)
}

fn owned(node: &Node<'_>) -> YamlNode {
    let value = match &node.kind {
        NodeKind::Scalar(s) => match s.kind() {
            ScalarKind::Null => YamlValue::Null,
            kind => YamlValue::Scalar {
                text: s.value.to_string(),
                kind: match kind {
                    ScalarKind::Bool => ScalarType::Bool,
                    ScalarKind::Number => ScalarType::Number,
                    _ => ScalarType::String,
                },
            },
        },
        NodeKind::Seq(items) => YamlValue::Seq(items.iter().map(owned).collect()),
        NodeKind::Map(entries) => YamlValue::Map(
            entries
                .iter()
                .map(|e| YamlEntry {
                    key: e.key.to_string(),
                    key_pos: e.key_pos,
                    value: owned(&e.value),
                })
                .collect(),
        ),
    };
    YamlNode {
        pos: node.pos,
        value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_kinds_and_problems() {
        let (doc, problems) = parse_yaml("c.yaml", "a: 1\nb: [x, \"2\"]\nc:\n");
        assert_eq!(problems, vec![]);
        let YamlValue::Map(entries) = &doc.value else {
            panic!("{doc:?}")
        };
        assert_eq!(entries[1].key_pos, Pos { line: 2, col: 1 });
        assert_eq!(entries[0].value.type_name(), "a number");
        let YamlValue::Seq(items) = &entries[1].value.value else {
            panic!("{doc:?}")
        };
        assert_eq!(items[1].type_name(), "a string", "quoted");
        assert_eq!(items[1].pos, Pos { line: 2, col: 8 });
        assert_eq!(entries[2].value.value, YamlValue::Null);
        assert_eq!(parse_yaml("c.yaml", "").0.value, YamlValue::Null);

        let (doc, problems) = parse_yaml("c.yaml", "a: 1\na: 2\n");
        assert_eq!(
            problems[0].to_string(),
            "c.yaml:2:1: duplicate key `a` (first defined at 1:1)"
        );
        assert!(matches!(doc.value, YamlValue::Map(_)), "the tree is kept");
    }
}
