//! The grammar's full example parses to exactly the expected model.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use deploylite_pipeline::*;

pub const EXAMPLE: &str = r#"name: ci
on:
  push: { branches: [main, "release/**"], tags: ["v*"], paths: ["src/**", "Cargo.*"], paths_ignore: ["docs/**"] }
  pull_request: { branches: [main], paths: ["src/**"], paths_ignore: ["docs/**"] }
concurrency: cancel-in-progress
env: { RUST_LOG: info, THREADS: 4, VERBOSE: true }
stages:
  lint:
    steps: [cargo clippy]
  test:
    needs: [lint]
    runs_on: [linux]
    image: rust:1.83
    timeout: 15m
    retry: { max: 2, backoff: 2s, max_backoff: 1m, exit_codes: [75] }
    env: { CARGO_INCREMENTAL: "0" }
    if: branch == 'main'
    resources: { cpu: 2, memory: 512Mi }
    services:
      db:
        image: postgres:16
        env: { POSTGRES_PASSWORD: test }
      cache-1: { image: redis, command: [redis-server, --port, "6380"] }
    steps:
      - name: unit tests
        run: cargo test
    rollback: [ { run: ./scripts/undo.sh } ]
  deploy:
    needs: test
    runs_on: linux
    retry: 3
    steps:
      - ./deploy.sh
      - name: smoke
        run: |
          curl -f http://localhost/health
        env: { URL: x }
"#;

fn gl(p: &[&str]) -> GlobList {
    GlobList::new(p).unwrap()
}

fn env(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn full_example() {
    let p = parse_pipeline("ci.yaml", EXAMPLE).unwrap_or_else(|d| panic!("{d:#?}"));
    let expected = Pipeline {
        name: "ci".into(),
        name_pos: Pos { line: 1, col: 7 },
        on: Triggers {
            push: Some(PushTrigger {
                branches: gl(&["main", "release/**"]),
                tags: gl(&["v*"]),
                paths: gl(&["src/**", "Cargo.*"]),
                paths_ignore: gl(&["docs/**"]),
                ..PushTrigger::default()
            }),
            pull_request: Some(PullRequestTrigger {
                branches: gl(&["main"]),
                paths: gl(&["src/**"]),
                paths_ignore: gl(&["docs/**"]),
                ..PullRequestTrigger::default()
            }),
        },
        concurrency: Concurrency::CancelInProgress,
        env: env(&[("RUST_LOG", "info"), ("THREADS", "4"), ("VERBOSE", "true")]),
        stages: vec![
            Stage {
                name: "lint".into(),
                needs: vec![],
                runs_on: vec![],
                runs_on_pos: Pos::default(),
                image: None,
                timeout: None,
                retry: RetryPolicy::default(),
                env: BTreeMap::new(),
                condition: None,
                steps: vec![Step {
                    name: None,
                    run: "cargo clippy".into(),
                    env: BTreeMap::new(),
                }],
                rollback: vec![],
                resources: Resources::default(),
                services: vec![],
            },
            Stage {
                name: "test".into(),
                needs: vec!["lint".into()],
                runs_on: vec!["linux".into()],
                runs_on_pos: Pos { line: 12, col: 14 },
                image: Some("rust:1.83".into()),
                timeout: Some(Duration::from_secs(15 * 60)),
                retry: RetryPolicy {
                    max: 2,
                    backoff: Duration::from_secs(2),
                    max_backoff: Duration::from_secs(60),
                    exit_codes: vec![75],
                },
                env: env(&[("CARGO_INCREMENTAL", "0")]),
                condition: Some(Expr::parse("branch == 'main'").unwrap()),
                steps: vec![Step {
                    name: Some("unit tests".into()),
                    run: "cargo test".into(),
                    env: BTreeMap::new(),
                }],
                rollback: vec![Step {
                    name: None,
                    run: "./scripts/undo.sh".into(),
                    env: BTreeMap::new(),
                }],
                resources: Resources {
                    cpu: Some("2".into()),
                    memory: Some("512Mi".into()),
                },
                services: vec![
                    Service {
                        name: "db".into(),
                        image: "postgres:16".into(),
                        env: env(&[("POSTGRES_PASSWORD", "test")]),
                        command: None,
                    },
                    Service {
                        name: "cache-1".into(),
                        image: "redis".into(),
                        env: BTreeMap::new(),
                        command: Some(vec!["redis-server".into(), "--port".into(), "6380".into()]),
                    },
                ],
            },
            Stage {
                name: "deploy".into(),
                needs: vec!["test".into()],
                runs_on: vec!["linux".into()],
                runs_on_pos: Pos { line: 30, col: 14 },
                image: None,
                timeout: None,
                retry: RetryPolicy {
                    max: 3,
                    ..RetryPolicy::default()
                },
                env: BTreeMap::new(),
                condition: None,
                steps: vec![
                    Step {
                        name: None,
                        run: "./deploy.sh".into(),
                        env: BTreeMap::new(),
                    },
                    Step {
                        name: Some("smoke".into()),
                        run: "curl -f http://localhost/health\n".into(),
                        env: env(&[("URL", "x")]),
                    },
                ],
                rollback: vec![],
                resources: Resources::default(),
                services: vec![],
            },
        ],
        on_given: true,
        warnings: vec![],
    };
    assert_eq!(p, expected);
    assert_eq!(layers(&p), vec![vec![0], vec![1], vec![2]]);

    // The model survives the JSON round trip through `runs.spec`.
    let json = serde_json::to_string(&p).unwrap();
    let back: Pipeline = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
    assert!(back.stages[1]
        .condition
        .as_ref()
        .unwrap()
        .eval(&ExprContext::from_event(&Event::Push {
            branch: "main".into()
        })));
    assert_eq!(
        back.on.matches(&Event::Tag { tag: "v1.0".into() }, None),
        TriggerMatch::Yes
    );
}

#[test]
fn shorthands() {
    let p = parse_pipeline("a.yaml", "name: a\non: push\nstages:\n  s: {steps: [x]}\n").unwrap();
    assert!(p.on_given);
    assert_eq!(
        p.on,
        Triggers {
            push: Some(PushTrigger::default()),
            pull_request: None
        }
    );
    let p = parse_pipeline(
        "a.yaml",
        "name: a\non: [push, pull_request]\nstages:\n  s: {steps: [x]}\n",
    )
    .unwrap();
    assert_eq!(
        p.on,
        Triggers {
            push: Some(PushTrigger::default()),
            pull_request: Some(PullRequestTrigger::default())
        }
    );
    let p = parse_pipeline(
        "a.yaml",
        "name: a\non:\n  push:\n    branches: main\n  pull_request:\nstages:\n  s: {steps: [x]}\n",
    )
    .unwrap();
    assert_eq!(
        p.on,
        Triggers {
            push: Some(PushTrigger {
                branches: gl(&["main"]),
                ..PushTrigger::default()
            }),
            pull_request: Some(PullRequestTrigger::default()),
        }
    );
    // Absent `on:` and the defaults.
    let p = parse_pipeline(
        "a.yaml",
        "name: a\nstages:\n  s:\n    steps: [x]\n    timeout: 90\n",
    )
    .unwrap();
    assert_eq!(p.on, Triggers::default());
    assert!(!p.on_given, "no `on:` key");
    assert_eq!(p.concurrency, Concurrency::Parallel);
    assert_eq!(p.stages[0].timeout, Some(Duration::from_secs(90)));
}

/// Every complete pipeline in docs/pipeline.md (a ```yaml block starting with `name:`) is valid.
#[test]
fn docs_examples_parse() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/pipeline.md");
    let Ok(doc) = std::fs::read_to_string(path) else {
        return; // docs not present (e.g. crate vendored alone)
    };
    let mut found = 0;
    for block in doc.split("```yaml\n").skip(1) {
        let body = block.split("```").next().unwrap_or("");
        if body.starts_with("name:") {
            found += 1;
            match parse_pipeline("docs.yaml", body) {
                Err(d) => panic!("docs example does not parse: {d:#?}\n{body}"),
                Ok(p) => assert_eq!(p.warnings, [], "docs examples use the canonical spelling"),
            }
        }
    }
    assert!(found >= 1);
}
