//! A small request validator for GitHub's OpenAPI description (the subset in
//! `forge/tests/fixtures/github/openapi-subset.json`): finds the operation by method and path
//! template, checks path parameters, and validates the JSON body against the request body
//! schema ($ref, type, nullable, enum, required, properties, additionalProperties, items,
//! maxItems, maxLength, oneOf, anyOf, allOf).

use serde_json::Value;

/// The forge API fixtures (`forge/tests/fixtures`).
pub fn fixtures_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../forge/tests/fixtures")
}

pub struct OpenApi {
    doc: Value,
}

impl OpenApi {
    /// GitHub's subset, `github/openapi-subset.json` under [`fixtures_dir`].
    pub fn github() -> OpenApi {
        OpenApi::load(&fixtures_dir().join("github/openapi-subset.json"))
    }

    pub fn load(path: &std::path::Path) -> OpenApi {
        let text = std::fs::read_to_string(path).expect("read the OpenAPI description");
        OpenApi {
            doc: serde_json::from_str(&text).expect("the OpenAPI description is JSON"),
        }
    }

    /// A schema of `components/schemas`, to validate what a fake answers.
    pub fn schema(&self, name: &str) -> Option<&Value> {
        self.doc.pointer(&format!("/components/schemas/{name}"))
    }

    /// An example of `components/examples`.
    pub fn example(&self, name: &str) -> Option<&Value> {
        self.doc
            .pointer(&format!("/components/examples/{name}/value"))
    }

    /// The `paths` template and operation matching `method path` (path without query).
    pub fn operation(&self, method: &str, path: &str) -> Option<(String, &Value)> {
        let method = method.to_ascii_lowercase();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let paths = self.doc.get("paths")?.as_object()?;
        let mut best: Option<(usize, String, &Value)> = None;
        for (template, item) in paths {
            let Some(op) = item.get(&method) else {
                continue;
            };
            let t: Vec<&str> = template.trim_start_matches('/').split('/').collect();
            if let Some(literals) =
                template_match(&t, &segments, |name| self.multi_segment(op, name))
            {
                if best.as_ref().is_none_or(|(n, _, _)| literals > *n) {
                    best = Some((literals, template.clone(), op));
                }
            }
        }
        best.map(|(_, t, op)| (t, op))
    }

    fn multi_segment(&self, op: &Value, name: &str) -> bool {
        self.parameters(op).iter().any(|p| {
            p.get("name").and_then(Value::as_str) == Some(name)
                && p.get("x-multi-segment") == Some(&Value::Bool(true))
        })
    }

    fn parameters<'a>(&'a self, op: &'a Value) -> Vec<&'a Value> {
        op.get("parameters")
            .and_then(Value::as_array)
            .map(|ps| ps.iter().map(|p| self.resolve(p)).collect())
            .unwrap_or_default()
    }

    fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        for _ in 0..16 {
            let Some(r) = v.get("$ref").and_then(Value::as_str) else {
                return v;
            };
            let pointer = r.trim_start_matches('#');
            match self.doc.pointer(pointer) {
                Some(target) => v = target,
                None => return v,
            }
        }
        v
    }

    /// Every problem with the request; empty when it is valid.
    pub fn validate_request(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Vec<String> {
        let path = path_and_query.split('?').next().unwrap_or("");
        let Some((template, op)) = self.operation(method, path) else {
            return vec![format!(
                "{method} {path}: no such operation in the OpenAPI subset"
            )];
        };
        let mut errors = Vec::new();
        let here = format!("{method} {template}");
        // Path parameters.
        let t: Vec<&str> = template.trim_start_matches('/').split('/').collect();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for (i, part) in t.iter().enumerate() {
            let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) else {
                continue;
            };
            let Some(value) = segments.get(i) else {
                continue;
            };
            let Some(param) = self.parameters(op).into_iter().find(|p| {
                p.get("name").and_then(Value::as_str) == Some(name)
                    && p.get("in").and_then(Value::as_str) == Some("path")
            }) else {
                errors.push(format!("{here}: path parameter `{name}` is not declared"));
                continue;
            };
            if value.is_empty() {
                errors.push(format!("{here}: path parameter `{name}` is empty"));
            }
            let ty = param
                .get("schema")
                .map(|s| self.resolve(s))
                .and_then(|s| s.get("type"))
                .and_then(Value::as_str);
            if ty == Some("integer") && value.parse::<i64>().is_err() {
                errors.push(format!(
                    "{here}: path parameter `{name}` = `{value}` is not an integer"
                ));
            }
        }
        // Body.
        let request_body = op.get("requestBody").map(|b| self.resolve(b));
        match (request_body, body) {
            (None, Some(b)) if !b.is_null() => {
                errors.push(format!("{here}: the operation takes no body"))
            }
            (None, _) => {}
            (Some(rb), None) | (Some(rb), Some(Value::Null)) => {
                if rb.get("required") == Some(&Value::Bool(true)) {
                    errors.push(format!("{here}: the request body is required"));
                }
            }
            (Some(rb), Some(b)) => match rb.pointer("/content/application~1json/schema") {
                Some(schema) => self.validate(schema, b, "$", &mut errors),
                None => errors.push(format!("{here}: the operation takes no JSON body")),
            },
        }
        errors
            .into_iter()
            .map(|e| {
                if e.starts_with(&here) {
                    e
                } else {
                    format!("{here}: {e}")
                }
            })
            .collect()
    }

    /// Validates `value` against `schema`, pushing one message per problem.
    pub fn validate(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if value.is_null() && schema.get("nullable") == Some(&Value::Bool(true)) {
            return;
        }
        if let Some(ty) = schema.get("type").and_then(Value::as_str) {
            let ok = match ty {
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                "object" => value.is_object(),
                "array" => value.is_array(),
                "null" => value.is_null(),
                _ => true,
            };
            if !ok {
                errors.push(format!("{at}: expected {ty}, got {value}"));
                return;
            }
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array) {
            if !options.contains(value) {
                errors.push(format!(
                    "{at}: {value} is not one of {}",
                    Value::Array(options.clone())
                ));
            }
        }
        if let (Some(max), Some(s)) = (
            schema.get("maxLength").and_then(Value::as_u64),
            value.as_str(),
        ) {
            if s.chars().count() as u64 > max {
                errors.push(format!("{at}: longer than {max} characters"));
            }
        }
        if let Some(object) = value.as_object() {
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for name in required.iter().filter_map(Value::as_str) {
                    if !object.contains_key(name) {
                        errors.push(format!("{at}: missing required property `{name}`"));
                    }
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            for (name, v) in object {
                match properties.and_then(|p| p.get(name)) {
                    Some(property) => self.validate(property, v, &format!("{at}.{name}"), errors),
                    None => match schema.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            errors.push(format!("{at}: unknown property `{name}`"))
                        }
                        Some(extra @ Value::Object(_)) => {
                            self.validate(extra, v, &format!("{at}.{name}"), errors)
                        }
                        _ => {}
                    },
                }
            }
        }
        if let Some(items) = value.as_array() {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if items.len() as u64 > max {
                    errors.push(format!("{at}: more than {max} items ({})", items.len()));
                }
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    self.validate(item_schema, item, &format!("{at}[{i}]"), errors);
                }
            }
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for s in all {
                self.validate(s, value, at, errors);
            }
        }
        let matching = |options: &Vec<Value>| {
            options
                .iter()
                .filter(|s| {
                    let mut e = Vec::new();
                    self.validate(s, value, at, &mut e);
                    e.is_empty()
                })
                .count()
        };
        if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
            let n = matching(one);
            if n != 1 {
                errors.push(format!(
                    "{at}: matches {n} of the oneOf alternatives (exactly 1 required)"
                ));
            }
        }
        if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
            if matching(any) == 0 {
                errors.push(format!("{at}: matches none of the anyOf alternatives"));
            }
        }
    }
}

/// How many literal segments matched, if `template` matches `segments`. A parameter marked
/// `x-multi-segment` may span several segments when it is the last part of the template.
fn template_match(
    template: &[&str],
    segments: &[&str],
    multi: impl Fn(&str) -> bool,
) -> Option<usize> {
    let mut literals = 0;
    for (i, part) in template.iter().enumerate() {
        let param = part.strip_prefix('{').and_then(|p| p.strip_suffix('}'));
        let last = i + 1 == template.len();
        match param {
            Some(name) if last && multi(name) => return (segments.len() > i).then_some(literals),
            Some(_) => {
                if segments.get(i).is_none_or(|s| s.is_empty()) {
                    return None;
                }
            }
            None => {
                if segments.get(i) != Some(part) {
                    return None;
                }
                literals += 1;
            }
        }
    }
    (segments.len() == template.len()).then_some(literals)
}
