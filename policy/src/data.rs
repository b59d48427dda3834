//! A bundle's `data.yaml` as the JSON document Rego sees under `data`: read with the
//! project's YAML front door (one document, no anchors, problems with `file:line:col`).

use deploylite_pipeline::document::{parse_yaml, ScalarType, YamlNode, YamlValue};
use serde_json::{Map, Number, Value};

use crate::error::PolicyError;
use crate::sources::PolicyFile;

/// The document of one `data.yaml`; its top level must be a mapping (it is merged at the root
/// of `data`).
pub(crate) fn data_document(file: &PolicyFile) -> Result<Value, PolicyError> {
    // The front door calls an empty document a problem (pipelines must not be empty); a
    // bundle without data is fine.
    let blank = file
        .text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
    if blank {
        return Ok(Value::Object(Map::new()));
    }
    let (root, problems) = parse_yaml(&file.path, &file.text);
    if let Some(first) = problems.first() {
        return Err(PolicyError::Data {
            path: file.path.clone(),
            message: format!("{}:{}: {}", first.line, first.col, first.message),
        });
    }
    match &root.value {
        YamlValue::Null => Ok(Value::Object(Map::new())),
        YamlValue::Map(_) => to_json(&root, &file.path),
        _ => Err(PolicyError::Data {
            path: file.path.clone(),
            message: format!(
                "{}:{}: expected a mapping at the top, found {}",
                root.pos.line,
                root.pos.col,
                root.type_name()
            ),
        }),
    }
}

fn to_json(node: &YamlNode, path: &str) -> Result<Value, PolicyError> {
    Ok(match &node.value {
        YamlValue::Null => Value::Null,
        YamlValue::Scalar { text, kind } => match kind {
            ScalarType::String => Value::String(text.clone()),
            ScalarType::Bool => Value::Bool(text.eq_ignore_ascii_case("true")),
            ScalarType::Number => number(text).ok_or_else(|| PolicyError::Data {
                path: path.to_string(),
                message: format!(
                    "{}:{}: `{text}` is not a finite number; quote it to make it a string",
                    node.pos.line, node.pos.col
                ),
            })?,
        },
        YamlValue::Seq(items) => Value::Array(
            items
                .iter()
                .map(|item| to_json(item, path))
                .collect::<Result<_, _>>()?,
        ),
        YamlValue::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|e| Ok((e.key.clone(), to_json(&e.value, path)?)))
                .collect::<Result<_, PolicyError>>()?,
        ),
    })
}

/// YAML 1.2 core-schema numbers: decimal integers and floats, `0x`/`0o` integers.
fn number(text: &str) -> Option<Value> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let radix = [("0x", 16), ("0o", 8)]
        .into_iter()
        .find_map(|(prefix, radix)| digits.strip_prefix(prefix).map(|d| (d, radix)));
    if let Some((d, radix)) = radix {
        let magnitude = i64::from_str_radix(d, radix).ok()?;
        return Some(Value::from(if negative { -magnitude } else { magnitude }));
    }
    if let Ok(i) = text.trim_start_matches('+').parse::<i64>() {
        return Some(Value::from(i));
    }
    text.parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .map(Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Value, PolicyError> {
        data_document(&PolicyFile {
            path: "bundle/data.yaml".into(),
            text: text.into(),
        })
    }

    #[test]
    fn yaml_scalars_become_json_types() {
        let value = parse(
            "registries:\n  allowed: [ghcr.io/acme, 'docker.io/library']\n\
             windows: {hour: 9, ratio: 0.5, hex: 0x1f, on: true, off: ~, quoted: '10'}\n",
        )
        .expect("valid");
        assert_eq!(
            value,
            serde_json::json!({
                "registries": {"allowed": ["ghcr.io/acme", "docker.io/library"]},
                "windows": {"hour": 9, "ratio": 0.5, "hex": 31, "on": true, "off": null, "quoted": "10"}
            })
        );
    }

    #[test]
    fn problems_name_the_file_line_and_column() {
        let err = parse("a: 1\na: 2\n").expect_err("duplicate key");
        assert!(
            err.to_string().starts_with("bundle/data.yaml:2:1:"),
            "{err}"
        );
        let err = parse("- a\n- b\n").expect_err("not a mapping");
        assert!(err.to_string().contains("expected a mapping"), "{err}");
        let err = parse("x: .inf\n").expect_err("infinite");
        assert!(err.to_string().contains("not a finite number"), "{err}");
        assert_eq!(parse("").expect("empty"), serde_json::json!({}));
        assert_eq!(
            parse("# nothing yet\n").expect("comments"),
            serde_json::json!({})
        );
    }
}
