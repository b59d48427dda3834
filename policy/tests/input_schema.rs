//! The input document the daemon produces validates against the JSON Schema shipped for
//! policy authors. The `jsonschema` crate is heavy (it pulls an HTTP client for remote
//! references), so a small validator for the keywords the schema uses lives here: `type`,
//! `enum`, `required`, `properties`, `additionalProperties: false`, `items`, `oneOf`,
//! `minimum`, `maximum`. A keyword it does not know fails the test, so it cannot silently
//! skip part of the schema.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use deploylite_policy::{
    deploy_input, Approval, Author, Commit, CommitRun, DeploymentAction, DeploymentFacts,
    Environment, Gate, Now, Plan, PolicyInput, PullRequest, Repository, Trigger, INPUT_SCHEMA,
};
use serde_json::{json, Value};

fn validate(schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let Some(schema) = schema.as_object() else {
        errors.push(format!("{at}: schema is not an object"));
        return;
    };
    for (keyword, rule) in schema {
        match keyword.as_str() {
            "$schema" | "$id" | "title" | "description" => {}
            "type" => {
                let types: Vec<&str> = match rule {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                    _ => vec![],
                };
                if !types.iter().any(|t| has_type(value, t)) {
                    errors.push(format!("{at}: expected {types:?}, found {value}"));
                }
            }
            "enum" => {
                if !rule
                    .as_array()
                    .is_some_and(|options| options.contains(value))
                {
                    errors.push(format!("{at}: {value} is not one of {rule}"));
                }
            }
            "required" => {
                for key in rule
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    if value.as_object().is_some_and(|o| !o.contains_key(key)) {
                        errors.push(format!("{at}: missing `{key}`"));
                    }
                }
            }
            "properties" => {
                if let (Some(props), Some(object)) = (rule.as_object(), value.as_object()) {
                    for (key, sub) in props {
                        if let Some(v) = object.get(key) {
                            validate(sub, v, &format!("{at}.{key}"), errors);
                        }
                    }
                }
            }
            "additionalProperties" => {
                let known = schema.get("properties").and_then(Value::as_object);
                if let (Value::Bool(false), Some(object)) = (rule, value.as_object()) {
                    for key in object.keys() {
                        if !known.is_some_and(|k| k.contains_key(key)) {
                            errors.push(format!("{at}: unexpected `{key}`"));
                        }
                    }
                }
            }
            "items" => {
                for (i, item) in value.as_array().into_iter().flatten().enumerate() {
                    validate(rule, item, &format!("{at}[{i}]"), errors);
                }
            }
            "oneOf" => {
                let matching = rule
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|option| {
                        let mut sub = Vec::new();
                        validate(option, value, at, &mut sub);
                        sub.is_empty()
                    })
                    .count();
                if matching != 1 {
                    errors.push(format!("{at}: {matching} of oneOf match {value}"));
                }
            }
            "minimum" | "maximum" => {
                if let (Some(bound), Some(n)) = (rule.as_f64(), value.as_f64()) {
                    let ok = if keyword == "minimum" {
                        n >= bound
                    } else {
                        n <= bound
                    };
                    if !ok {
                        errors.push(format!("{at}: {n} breaks {keyword} {bound}"));
                    }
                }
            }
            other => errors.push(format!("{at}: the test validator does not know `{other}`")),
        }
    }
}

fn has_type(value: &Value, t: &str) -> bool {
    match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    }
}

fn errors_of(value: &Value) -> Vec<String> {
    let schema: Value = serde_json::from_str(INPUT_SCHEMA).expect("the schema is JSON");
    let mut errors = Vec::new();
    validate(&schema, value, "input", &mut errors);
    errors
}

fn full_input() -> PolicyInput {
    let pipeline = deploylite_pipeline::parse_pipeline(
        "deploy.yaml",
        "name: deploy\non: push\nstages:\n  ship:\n    image: alpine:3.20\n    runs_on: [prod]\n    services:\n      db: {image: postgres:17}\n    steps: [{run: ./ship}]\n",
    )
    .expect("valid pipeline");
    PolicyInput {
        gate: Gate::Deploy,
        now: Now::from_unix_ms(1_796_668_089_000),
        repository: Repository {
            name: "webapp".into(),
            default_branch: Some("main".into()),
        },
        commit: Commit {
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            git_ref: "refs/pull/7/head".into(),
            branch: None,
            tag: None,
            author: Some(Author {
                name: "Ada".into(),
                email: "ada@example.com".into(),
            }),
            runs: vec![CommitRun {
                pipeline: "ci".into(),
                status: "success".into(),
            }],
        },
        trigger: Trigger {
            event: "pull_request".into(),
            trusted: false,
            pull_request: Some(PullRequest {
                number: 7,
                head_repo: "mallory/webapp".into(),
            }),
        },
        plan: Plan::of(&pipeline, ".deploylite/pipelines/deploy.yaml", &[]),
        environment: Some(Environment {
            name: "production".into(),
            current_version: None,
            desired_version: Some("0123456789abcdef0123456789abcdef01234567".into()),
            requires: vec!["ci".into()],
        }),
        approvals: vec![Approval {
            by: "token:ops".into(),
            at: "2026-12-07T18:00:00Z".into(),
        }],
    }
}

#[test]
fn a_full_input_validates_against_the_schema() {
    let value = serde_json::to_value(full_input()).expect("serializes");
    assert_eq!(errors_of(&value), Vec::<String>::new(), "{value:#}");
}

#[test]
fn a_run_gate_input_with_nulls_validates_too() {
    let mut input = full_input();
    input.gate = Gate::Run;
    input.environment = None;
    input.commit.author = None;
    input.trigger.pull_request = None;
    input.approvals.clear();
    input.repository.default_branch = None;
    let value = serde_json::to_value(input).expect("serializes");
    assert_eq!(errors_of(&value), Vec::<String>::new(), "{value:#}");
}

#[test]
fn the_validator_catches_what_the_schema_forbids() {
    let mut value = serde_json::to_value(full_input()).expect("serializes");
    value["extra"] = json!(1);
    value["now"]["hour"] = json!(24);
    value["trigger"]["event"] = json!("cron");
    if let Some(commit) = value["commit"].as_object_mut() {
        commit.remove("sha");
    }
    value["environment"]["requires"] = json!("ci");
    let errors = errors_of(&value);
    for expected in [
        "input: unexpected `extra`",
        "input.now.hour: 24 breaks maximum 23",
        "input.trigger.event",
        "input.commit: missing `sha`",
        "input.environment: 0 of oneOf match",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "no `{expected}` in {errors:#?}"
        );
    }
}

fn deployment_facts() -> DeploymentFacts {
    DeploymentFacts {
        now: Now::from_unix_ms(1_796_668_089_000),
        repository: Repository {
            name: "webapp".into(),
            default_branch: Some("main".into()),
        },
        environment: "production".into(),
        current_version: Some("fedcba9876543210fedcba9876543210fedcba98".into()),
        version: "0123456789abcdef0123456789abcdef01234567".into(),
        git_ref: "refs/heads/main".into(),
        author: None,
        runs: vec![CommitRun {
            pipeline: "ci".into(),
            status: "success".into(),
        }],
        requires: vec!["ci".into()],
        action: DeploymentAction::Rollback,
        approvals: vec![Approval {
            by: "github:ada".into(),
            at: "2026-12-07T18:00:00Z".into(),
        }],
        trusted: true,
        pull_request: None,
    }
}

#[test]
fn a_deployment_input_carries_versions_action_and_approvals_and_validates() {
    let plan = full_input().plan;
    let value = deploy_input(deployment_facts(), plan).expect("serializes");
    assert_eq!(errors_of(&value), Vec::<String>::new(), "{value:#}");
    assert_eq!(value["gate"], json!("deploylite.deploy"));
    assert_eq!(value["trigger"]["event"], json!("deploy"));
    assert_eq!(value["commit"]["branch"], json!("main"));
    assert_eq!(value["commit"]["tag"], json!(null));
    assert_eq!(value["environment"]["action"], json!("rollback"));
    assert_eq!(
        value["environment"]["current_version"],
        json!("fedcba9876543210fedcba9876543210fedcba98")
    );
    assert_eq!(
        value["environment"]["desired_version"],
        json!("0123456789abcdef0123456789abcdef01234567")
    );
    assert_eq!(value["approvals"][0]["by"], json!("github:ada"));
    let mut value = value;
    value["environment"]["action"] = json!("promote");
    assert!(
        errors_of(&value)
            .iter()
            .any(|e| e.starts_with("input.environment")),
        "an unknown action is refused by the schema"
    );
}
