//! The JSON Schemas of pipeline and environment files, for editors (yaml-language-server)
//! and for `deploylite schema`-style tooling. Tests keep them in sync with the parsers' key
//! lists.

/// JSON Schema (draft-07) of a `.deploylite/pipelines/*.yaml` file.
pub const PIPELINE_SCHEMA: &str = include_str!("../schema/pipeline.schema.json");

/// JSON Schema (draft-07) of a `.deploylite/environments/*.yaml` file.
pub const ENVIRONMENT_SCHEMA: &str = include_str!("../schema/environment.schema.json");

#[cfg(test)]
mod tests {
    use super::{ENVIRONMENT_SCHEMA, PIPELINE_SCHEMA};
    use crate::environment;
    use crate::keys::alternate_spelling;
    use crate::parse::{ALL_KEY_LISTS, CONCURRENCY_VALUES, ON_KEYS};
    use serde_json::Value;

    fn schema() -> Value {
        serde_json::from_str(PIPELINE_SCHEMA).expect("schema is valid JSON")
    }

    fn environment_schema() -> Value {
        serde_json::from_str(ENVIRONMENT_SCHEMA).expect("schema is valid JSON")
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

    /// Every canonical key of every mapping, and the deprecated other spelling of those that
    /// have one (marked `deprecated`, and only those), each described.
    fn same_keys(s: &Value, lists: &[(&str, &[&str])]) {
        for (def, keys) in lists {
            let props = properties(&s["definitions"][*def]);
            let mut in_schema: Vec<&str> = props.keys().map(String::as_str).collect();
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
    }

    #[test]
    fn schema_and_parser_accept_the_same_keys() {
        let s = schema();
        assert_eq!(s["$schema"], "http://json-schema.org/draft-07/schema#");
        same_keys(&s, ALL_KEY_LISTS);
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
    fn environment_schema_and_parser_accept_the_same_keys() {
        let s = environment_schema();
        assert_eq!(s["$schema"], "http://json-schema.org/draft-07/schema#");
        same_keys(&s, environment::ALL_KEY_LISTS);
        let env = &s["definitions"]["environment"]["properties"];
        let values = |v: &Value| -> Vec<String> {
            v["enum"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        };
        assert_eq!(values(&env["on_drift"]), environment::ON_DRIFT_VALUES);
        assert_eq!(values(&env["on-drift"]), environment::ON_DRIFT_VALUES);
        assert_eq!(values(&env["rollback"]), environment::ROLLBACK_VALUES);
        let required: Vec<&str> = s["definitions"]["environment"]["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(required, ["name", "deploy", "follows"]);
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
        for s in [schema(), environment_schema()] {
            walk(&s, &s);
        }
    }
}
