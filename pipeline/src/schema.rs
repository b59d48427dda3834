//! The JSON Schema of pipeline files, for editors (yaml-language-server) and for
//! `deploylite schema`-style tooling. A test keeps it in sync with the parser's key lists.

/// JSON Schema (draft 2020-12) of a `.deploylite/pipelines/*.yaml` file.
pub const PIPELINE_SCHEMA: &str = include_str!("../schema/pipeline.schema.json");

#[cfg(test)]
mod tests {
    use super::PIPELINE_SCHEMA;
    use crate::keys::alternate_spelling;
    use crate::parse::{ALL_KEY_LISTS, CONCURRENCY_VALUES, ON_KEYS};
    use serde_json::Value;

    fn schema() -> Value {
        serde_json::from_str(PIPELINE_SCHEMA).expect("schema is valid JSON")
    }

    /// The `properties` of a definition, looking into `oneOf` branches (steps may be strings).
    fn properties(def: &Value) -> &serde_json::Map<String, Value> {
        if let Some(p) = def.get("properties").and_then(Value::as_object) {
            return p;
        }
        def["oneOf"]
            .as_array()
            .and_then(|bs| {
                bs.iter()
                    .find_map(|b| b.get("properties").and_then(Value::as_object))
            })
            .expect("definition has properties")
    }

    #[test]
    fn schema_and_parser_accept_the_same_keys() {
        let s = schema();
        assert_eq!(s["$schema"], "http://json-schema.org/draft-07/schema#");
        for (def, keys) in ALL_KEY_LISTS {
            let props = properties(&s["definitions"][*def]);
            let mut in_schema: Vec<&str> = props.keys().map(String::as_str).collect();
            // Every canonical key, and the deprecated other spelling of those that have one.
            let alternates: Vec<String> =
                keys.iter().filter_map(|k| alternate_spelling(k)).collect();
            let mut expected: Vec<&str> = keys.to_vec();
            expected.extend(alternates.iter().map(String::as_str));
            in_schema.sort_unstable();
            expected.sort_unstable();
            assert_eq!(
                in_schema, expected,
                "keys of `{def}` differ between schema and parser"
            );
            for (k, v) in props {
                let described = v.get("description").is_some() || v.get("$ref").is_some();
                assert!(described, "`{def}.{k}` has no description");
                let deprecated = v.get("deprecated") == Some(&Value::Bool(true));
                assert_eq!(
                    deprecated,
                    alternates.iter().any(|a| a == k),
                    "`{def}.{k}`: only the other spellings are deprecated"
                );
            }
        }
        let conc: Vec<&str> = s["definitions"]["pipeline"]["properties"]["concurrency"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(conc, CONCURRENCY_VALUES);
        let events: Vec<&str> = s["definitions"]["pipeline"]["properties"]["on"]["oneOf"][0]
            ["enum"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(events, ON_KEYS);
    }

    #[test]
    fn every_ref_resolves() {
        fn walk(v: &Value, root: &Value) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        let ptr = r.strip_prefix('#').expect("local ref");
                        assert!(root.pointer(ptr).is_some(), "dangling $ref {r}");
                    }
                    m.values().for_each(|c| walk(c, root));
                }
                Value::Array(a) => a.iter().for_each(|c| walk(c, root)),
                _ => {}
            }
        }
        let s = schema();
        walk(&s, &s);
    }
}
