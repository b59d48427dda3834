//! The Kubernetes executor against a fake API server (tests/fake_kube): a real `kube::Client`
//! speaks HTTP to it, so the protocol code (create, watch, get, log streaming, delete, error
//! Status parsing) is exercised; the fake scripts what the Pod does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_kube;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deploylite_pipeline::{Resources, Service, Step};
use deploylite_runner::kubernetes::{KubernetesConfig, KubernetesExecutor};
use deploylite_runner::{AttemptOutcome, CancellationToken, Executor, StageJob, StageLog};
use deploylite_testkit::wait;
use fake_kube::{never_finishes, runs, Act, FakeKube};
use serde_json::{json, Value};

const SOURCE: &str = "https://git.example.com/acme/app.git";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
/// Every test must end well within this.
const LIMIT: Duration = Duration::from_secs(30);

fn step(name: Option<&str>, run: &str, env: &[(&str, &str)]) -> Step {
    Step {
        name: name.map(str::to_string),
        run: run.to_string(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn job(steps: Vec<Step>) -> StageJob {
    StageJob {
        run_id: 7.into(),
        stage: "build".into(),
        attempt: 1.into(),
        workspace: PathBuf::from("/host/workspaces/7"),
        env: BTreeMap::from([
            ("CI".to_string(), "true".to_string()),
            (
                "DEPLOYLITE_WORKSPACE".to_string(),
                "/host/workspaces/7".to_string(),
            ),
            ("GREETING".to_string(), "it's \"quoted\" $HOME".to_string()),
        ]),
        steps,
        timeout: None,
        image: Some("rust:1.80".into()),
        resources: Resources {
            cpu: Some("500m".into()),
            memory: Some("256Mi".into()),
        },
        services: Vec::new(),
        source_url: Some(SOURCE.into()),
        repo: "acme/app".into(),
        pipeline: "ci".into(),
        commit: COMMIT.into(),
    }
}

fn two_steps() -> StageJob {
    job(vec![
        step(Some("compile"), "cargo build", &[("RUST_LOG", "debug")]),
        step(None, "echo 'hi'\necho more", &[]),
    ])
}

fn config() -> KubernetesConfig {
    KubernetesConfig {
        namespace: Some("ci".into()),
        labels: BTreeMap::from([("team".to_string(), "platform".to_string())]),
        image_pull_timeout: Duration::from_millis(400),
        api_retry_window: Duration::from_secs(1),
        ..Default::default()
    }
}

fn executor(fake: &FakeKube) -> KubernetesExecutor {
    KubernetesExecutor::with_client(fake.client(), config())
}

/// The log as (tag, text) pairs.
fn parse_log(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(3, ' ');
            let _ts = parts.next();
            let tag = parts.next().unwrap_or_default().to_string();
            (tag, parts.next().unwrap_or_default().to_string())
        })
        .collect()
}

struct Ran {
    outcome: AttemptOutcome,
    log: Vec<(String, String)>,
    elapsed: Duration,
    _dir: tempfile::TempDir,
}

impl Ran {
    fn has(&self, tag: &str, needle: &str) -> bool {
        self.log
            .iter()
            .any(|(t, text)| t == tag && text.contains(needle))
    }
}

async fn run_with(fake: &FakeKube, job: StageJob, cancel: CancellationToken) -> Ran {
    run_config(fake, job, cancel, config()).await
}

async fn run_config(
    fake: &FakeKube,
    job: StageJob,
    cancel: CancellationToken,
    config: KubernetesConfig,
) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs/7/build/1.log");
    let mut log = StageLog::create(&path).await.unwrap();
    let exec = KubernetesExecutor::with_client(fake.client(), config);
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(LIMIT, exec.execute(job, &mut log, cancel))
        .await
        .expect("the executor returned in time");
    let elapsed = started.elapsed();
    drop(log);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        let ts = parts.next().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
            "malformed log line {line:?}"
        );
        assert!(
            matches!(parts.next(), Some("out" | "err" | "---")),
            "malformed log line {line:?}"
        );
    }
    Ran {
        outcome,
        log: parse_log(&text),
        elapsed,
        _dir: dir,
    }
}

async fn run(fake: &FakeKube, job: StageJob) -> Ran {
    run_with(fake, job, CancellationToken::new()).await
}

fn env_of(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_string(),
                e["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_stage_runs_in_a_pod_with_its_spec_logs_and_is_deleted() {
    let mut acts = runs(&[], 20, 0, None);
    let exit = acts.pop().unwrap();
    acts.extend([
        Act::Step(1),
        Act::Log("   Compiling app v0.1.0".into()),
        Act::Step(2),
        Act::Log("hi".into()),
        Act::Log("more".into()),
        Act::Sleep(20),
        exit,
    ]);
    let fake = FakeKube::start(acts).await;
    let ran = run(&fake, two_steps()).await;
    assert_eq!(ran.outcome, AttemptOutcome::Succeeded, "{:?}", ran.log);

    let name = executor(&fake).pod_name(7.into(), "build", 1.into());
    assert_eq!(name, "deploylite-7-build-1");
    let created = fake.created();
    assert_eq!(created.len(), 1);
    let pod = &created[0];
    assert_eq!(pod["apiVersion"], "v1");
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(pod["metadata"]["name"], name);
    assert_eq!(pod["metadata"]["namespace"], "ci");
    assert_eq!(
        pod["metadata"]["labels"],
        json!({
            "app.kubernetes.io/managed-by": "deploylite",
            "deploylite.dev/run": "7",
            "deploylite.dev/stage": "build",
            "deploylite.dev/attempt": "1",
            "team": "platform",
        })
    );
    assert_eq!(
        pod["metadata"]["annotations"]["deploylite.dev/commit"],
        COMMIT
    );
    let spec = &pod["spec"];
    assert_eq!(spec["restartPolicy"], "Never");
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert!(spec.get("serviceAccountName").is_none());
    assert_eq!(
        spec["volumes"],
        json!([{"name": "workspace", "emptyDir": {}}])
    );
    let mount = json!([{"name": "workspace", "mountPath": "/workspace"}]);

    let init = &spec["initContainers"][0];
    assert_eq!(init["name"], "clone");
    assert_eq!(init["image"], "alpine/git:latest");
    assert_eq!(init["volumeMounts"], mount);
    assert_eq!(init["command"][0], "sh");
    let init_env = env_of(init);
    assert_eq!(init_env["DEPLOYLITE_SOURCE_URL"], SOURCE);
    assert_eq!(init_env["DEPLOYLITE_COMMIT"], COMMIT);
    let clone_script = init["command"][2].as_str().unwrap();
    assert!(clone_script.contains("git fetch -q --depth 1 origin \"$DEPLOYLITE_COMMIT\""));
    assert!(clone_script.contains("checkout -q --detach \"$DEPLOYLITE_COMMIT\""));

    assert_eq!(spec["containers"].as_array().unwrap().len(), 1);
    let main = &spec["containers"][0];
    assert_eq!(main["name"], "stage");
    assert_eq!(main["image"], "rust:1.80");
    assert_eq!(main["workingDir"], "/workspace");
    assert_eq!(main["volumeMounts"], mount);
    assert_eq!(
        main["resources"],
        json!({
            "requests": {"cpu": "500m", "memory": "256Mi"},
            "limits": {"cpu": "500m", "memory": "256Mi"},
        })
    );
    let env = env_of(main);
    assert_eq!(env["CI"], "true");
    assert_eq!(env["GREETING"], "it's \"quoted\" $HOME");
    assert_eq!(env["DEPLOYLITE_WORKSPACE"], "/workspace");
    assert!(!env.contains_key("RUST_LOG"), "step env stays in its step");
    assert_eq!(main["command"][0], "sh");
    assert_eq!(main["command"][1], "-c");
    let script = main["command"][2].as_str().unwrap();
    assert!(
        script.contains("env 'RUST_LOG=debug' sh -e -c 'cargo build'"),
        "{script}"
    );
    assert!(
        script.contains("sh -e -c 'echo '\\''hi'\\''\necho more'"),
        "{script}"
    );

    // The log: headers from the markers, the output in order.
    let body: Vec<(&str, &str)> = ran
        .log
        .iter()
        .map(|(t, x)| (t.as_str(), x.as_str()))
        .collect();
    assert_eq!(
        body,
        vec![
            (
                "---",
                "pod ci/deploylite-7-build-1 created (image rust:1.80)"
            ),
            ("---", "step 1: compile"),
            ("out", "   Compiling app v0.1.0"),
            ("---", "step 2: echo 'hi'"),
            ("out", "hi"),
            ("out", "more"),
        ]
    );

    // The protocol as kube sends it.
    let gets = fake.requests_of("GET");
    let watch = gets
        .iter()
        .find(|r| r.query.contains_key("watch"))
        .expect("a watch");
    assert_eq!(watch.path, "/api/v1/namespaces/ci/pods");
    assert_eq!(
        watch.query["fieldSelector"],
        format!("metadata.name={name}")
    );
    assert_eq!(watch.query["resourceVersion"], "101");
    let log = gets
        .iter()
        .find(|r| r.path.ends_with("/log"))
        .expect("a log request");
    assert_eq!(log.path, format!("/api/v1/namespaces/ci/pods/{name}/log"));
    assert_eq!(log.query["follow"], "true");
    assert_eq!(log.query["container"], "stage");
    let post = &fake.requests_of("POST")[0];
    assert_eq!(post.path, "/api/v1/namespaces/ci/pods");
    let delete = &fake.requests_of("DELETE")[0];
    assert_eq!(delete.path, format!("/api/v1/namespaces/ci/pods/{name}"));
    fake.assert_all_pods_deleted().await;
}

#[tokio::test]
async fn logs_reach_the_stage_log_while_the_pod_runs() {
    let mut acts = runs(&[], 20, 0, None);
    let exit = acts.pop().unwrap();
    acts.extend([
        Act::Step(1),
        Act::Log("first".into()),
        Act::Sleep(600),
        Act::Log("second".into()),
        Act::Sleep(600),
        Act::Log("third".into()),
        Act::Sleep(50),
        exit,
    ]);
    let fake = Arc::new(FakeKube::start(acts).await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("1.log");
    let mut log = StageLog::create(&path).await.unwrap();
    let exec = executor(&fake);
    let task = tokio::spawn(async move {
        let outcome = exec
            .execute(
                job(vec![step(None, "./slow", &[])]),
                &mut log,
                CancellationToken::new(),
            )
            .await;
        (outcome, log)
    });
    let name = "deploylite-7-build-1";
    // Each line must be in the stage's log while the pod still runs and before the next one
    // is printed (600 ms apart): streamed, not collected at the end.
    let streamed = |line: &'static str, next: &'static str| {
        let (fake, path) = (&fake, &path);
        wait::try_until(LIMIT, move || async move {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let running =
                fake.pod(name).map(|p| p["status"]["phase"].clone()) == Some(json!("Running"));
            (text.contains(line) && !text.contains(next) && running).then_some(())
        })
    };
    let first = streamed(" out first", " out second").await;
    let second = streamed(" out second", " out third").await;
    let (outcome, log) = tokio::time::timeout(LIMIT, task).await.unwrap().unwrap();
    drop(log);
    assert_eq!(outcome, AttemptOutcome::Succeeded);
    assert!(first.is_ok(), "the first line was not streamed");
    assert!(second.is_ok(), "the second line was not streamed");
    let text = std::fs::read_to_string(&path).unwrap();
    let outs: Vec<String> = parse_log(&text)
        .into_iter()
        .filter(|(t, _)| t == "out")
        .map(|(_, x)| x)
        .collect();
    assert_eq!(outs, ["first", "second", "third"]);
    fake.assert_all_pods_deleted().await;
}

#[tokio::test]
async fn a_failing_step_maps_to_failed_with_its_number_and_exit_code() {
    let mut acts = runs(&[], 20, 0, None);
    acts.pop();
    acts.extend([
        Act::Step(1),
        Act::Log("ok".into()),
        Act::Step(2),
        Act::Log("error: boom".into()),
        Act::Sleep(20),
        Act::MainExit {
            code: 3,
            reason: Some("Error".into()),
            message: Some("deploylite: step=2 exit=3\n".into()),
        },
    ]);
    let fake = FakeKube::start(acts).await;
    let ran = run(&fake, two_steps()).await;
    assert_eq!(
        ran.outcome,
        AttemptOutcome::Failed {
            step: 1,
            exit_code: Some(3)
        }
    );
    assert!(ran.has("out", "error: boom"));
    assert!(ran.has("---", "step 2 exited with 3"), "{:?}", ran.log);
    fake.assert_all_pods_deleted().await;
}

#[tokio::test]
async fn an_oom_kill_fails_the_running_step_and_says_so() {
    let mut acts = runs(&[], 20, 0, None);
    acts.pop();
    acts.extend([
        Act::Step(1),
        Act::MainExit {
            code: 137,
            reason: Some("OOMKilled".into()),
            message: None,
        },
    ]);
    let fake = FakeKube::start(acts).await;
    let ran = run(&fake, two_steps()).await;
    assert_eq!(
        ran.outcome,
        AttemptOutcome::Failed {
            step: 0,
            exit_code: Some(137)
        }
    );
    assert!(
        ran.has("---", "OOMKilled; memory limit 256Mi"),
        "{:?}",
        ran.log
    );
    fake.assert_all_pods_deleted().await;
}

#[tokio::test]
async fn a_container_that_cannot_run_its_script_is_an_error() {
    let mut acts = runs(&[], 20, 0, None);
    acts.pop();
    acts.push(Act::MainExit {
        code: 128,
        reason: Some("StartError".into()),
        message: Some("exec: \"sh\": executable file not found in $PATH".into()),
    });
    let fake = FakeKube::start(acts).await;
    let ran = run(&fake, two_steps()).await;
    let AttemptOutcome::Error(message) = &ran.outcome else {
        panic!("{:?}", ran.outcome)
    };
    assert!(message.contains("executable file not found"), "{message}");
    fake.assert_all_pods_deleted().await;
}

#[tokio::test]
async fn a_failed_clone_is_an_error_with_its_message() {
    let fake = FakeKube::start(vec![
        Act::Sleep(20),
        Act::Scheduled,
        Act::InitRunning,
        Act::Sleep(30),
        Act::InitFailed {
            code: 128,
            message: format!("Cloning into '.'...\nfatal: repository '{SOURCE}/' not found\n"),
        },
    ])
    .await;
    let ran = run(&fake, two_steps()).await;
    let AttemptOutcome::Error(message) = &ran.outcome else {
        panic!("{:?}", ran.outcome)
    };
    assert!(
        message.contains(&format!("cloning {SOURCE} at {COMMIT} failed")),
        "{message}"
    );
    assert!(message.contains("not found"), "{message}");
    assert!(ran.has("---", "fatal: repository"));
    assert!(
        !fake.requests().iter().any(|r| r.path.ends_with("/log")),
        "no log of a container that never started"
    );
    fake.assert_all_pods_deleted().await;
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_is_an_error_after_a_bounded_wait() {
    let waiting = |reason: &str| Act::MainWaiting {
        reason: reason.into(),
        message: "Back-off pulling image \"rust:1.80\": not found".into(),
    };
    let fake = FakeKube::start(vec![
        Act::Scheduled,
        Act::InitDone,
        Act::Sleep(20),
        waiting("ErrImagePull"),
        Act::Sleep(150),
        waiting("ImagePullBackOff"),
        Act::Sleep(150),
        waiting("ErrImagePull"),
        Act::Sleep(150),
        waiting("ImagePullBackOff"),
    ])
    .await;
    let ran = run(&fake, two_steps()).await;
    let AttemptOutcome::Error(message) = &ran.outcome else {
        panic!("{:?}", ran.outcome)
    };
    assert!(message.contains("cannot pull image rust:1.80"), "{message}");
    assert!(
        ran.elapsed >= Duration::from_millis(400),
        "{:?}",
        ran.elapsed
    );
    assert!(ran.has("---", "cannot pull image rust:1.80 yet"));
    fake.assert_all_pods_deleted().await;
}

#[tokio::test]
async fn a_git_image_that_cannot_be_pulled_is_named() {
    let fake = FakeKube::start(vec![
        Act::Scheduled,
        Act::InitWaiting {
            reason: "ImagePullBackOff".into(),
            message: "Back-off pulling image".into(),
        },
    ])
    .await;
    let ran = run(&fake, two_steps()).await;
    let AttemptOutcome::Error(message) = &ran.outcome else {
        panic!("{:?}", ran.outcome)
    };
    assert!(message.contains("alpine/git:latest"), "{message}");
    assert!(message.contains("clone container"), "{message}");
    fake.assert_all_pods_deleted().await;
}

#[tokio::test]
async fn an_invalid_image_name_fails_at_once() {
    let fake = FakeKube::start(vec![
        Act::Scheduled,
        Act::InitDone,
        Act::MainWaiting {
            reason: "InvalidImageName".into(),
            message: "couldn't parse image name \"Rust:1.80\"".into(),
        },
    ])
    .await;
    let patient = KubernetesConfig {
        image_pull_timeout: Duration::from_secs(60),
        ..config()
    };
    let ran = run_config(&fake, two_steps(), CancellationToken::new(), patient).await;
    assert!(
        matches!(&ran.outcome, AttemptOutcome::Error(m) if m.contains("InvalidImageName")),
        "{:?}",
        ran.outcome
    );
    assert!(ran.elapsed < Duration::from_secs(20), "{:?}", ran.elapsed);
    fake.assert_all_pods_deleted().await;
}

#[tokio::test]
async fn a_timeout_deletes_the_pod_promptly() {
    let fake = FakeKube::start(never_finishes(&["working"])).await;
    let mut job = two_steps();
    job.timeout = Some(Duration::from_millis(700));
    let ran = run(&fake, job).await;
    assert_eq!(ran.outcome, AttemptOutcome::TimedOut);
    assert!(ran.elapsed < Duration::from_secs(5), "{:?}", ran.elapsed);
    assert!(ran.has("out", "working"));
    assert!(ran.has(
        "---",
        "timed out after 700ms: deleting pod ci/deploylite-7-build-1"
    ));
    let deletes = fake.requests_of("DELETE");
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].body.as_ref().unwrap()["gracePeriodSeconds"], 1);
    assert_eq!(
        deletes[0].body.as_ref().unwrap()["propagationPolicy"],
        "Background"
    );
    // The executor waited until the Pod was gone.
    assert_eq!(
        fake.deleted(),
        vec![("deploylite-7-build-1".to_string(), Some(1))]
    );
    fake.assert_all_pods_deleted().await;
}

#[tokio::test]
async fn a_timeout_while_pending_deletes_the_pod_too() {
    let fake = FakeKube::start(vec![Act::Unschedulable(
        "0/3 nodes are available: 3 Insufficient memory.".into(),
    )])
    .await;
    let mut job = two_steps();
    job.timeout = Some(Duration::from_millis(500));
    let ran = run(&fake, job).await;
    assert_eq!(ran.outcome, AttemptOutcome::TimedOut);
    assert!(ran.has("---", "waiting for a node: 0/3 nodes are available"));
    fake.assert_all_pods_deleted().await;
}

#[tokio::test]
async fn a_cancellation_deletes_the_pod_and_returns_cancelled() {
    let fake = FakeKube::start(never_finishes(&["working"])).await;
    // The log as a channel: each line reaches the test the moment the executor writes it, and
    // the test cancels once the container's output is in the stage's log.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(64);
    let mut log = StageLog::channel(tx);
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let reader = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            if line.contains(" out working") {
                trigger.cancel();
            }
            lines.push(line);
        }
        lines
    });
    let outcome = tokio::time::timeout(
        LIMIT,
        executor(&fake).execute(two_steps(), &mut log, cancel),
    )
    .await
    .expect("the executor returned in time");
    drop(log);
    let lines = reader.await.expect("the log reader");
    assert_eq!(outcome, AttemptOutcome::Cancelled, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" --- cancelled: deleting pod ci/deploylite-7-build-1")),
        "{lines:#?}"
    );
    assert_eq!(fake.requests_of("DELETE").len(), 1);
    fake.assert_all_pods_deleted().await;
}

#[tokio::test]
async fn a_cancelled_job_creates_no_pod() {
    let fake = FakeKube::start(never_finishes(&[])).await;
    let cancel = CancellationToken::new();
    cancel.cancel();
    let ran = run_with(&fake, two_steps(), cancel).await;
    assert_eq!(ran.outcome, AttemptOutcome::Cancelled);
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn without_a_source_url_nothing_is_sent() {
    let fake = FakeKube::start(never_finishes(&[])).await;
    let mut job = two_steps();
    job.source_url = None;
    let ran = run(&fake, job).await;
    let AttemptOutcome::Error(message) = &ran.outcome else {
        panic!("{:?}", ran.outcome)
    };
    assert!(message.contains("source_url"), "{message}");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn resources_that_are_not_quantities_are_an_error_before_any_request() {
    let fake = FakeKube::start(never_finishes(&[])).await;
    let mut job = two_steps();
    job.resources.memory = Some("512MB".into());
    let ran = run(&fake, job).await;
    let AttemptOutcome::Error(message) = &ran.outcome else {
        panic!("{:?}", ran.outcome)
    };
    assert!(message.contains("resources.memory `512MB`"), "{message}");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn a_refused_create_is_an_error_with_the_api_message() {
    let fake = FakeKube::start(never_finishes(&[])).await;
    fake.reject_create(
        403,
        "Forbidden",
        "pods is forbidden: User \"system:serviceaccount:ci:deploylite\" cannot create resource \"pods\"",
    );
    let ran = run(&fake, two_steps()).await;
    let AttemptOutcome::Error(message) = &ran.outcome else {
        panic!("{:?}", ran.outcome)
    };
    assert!(
        message.contains("cannot create pod ci/deploylite-7-build-1: Forbidden: pods is forbidden"),
        "{message}"
    );
    fake.assert_all_pods_deleted().await;
}

#[tokio::test]
async fn an_unreadable_create_answer_is_an_error_and_the_pod_is_still_deleted() {
    let fake = FakeKube::start(never_finishes(&[])).await;
    fake.garbage_create();
    let ran = run(&fake, two_steps()).await;
    assert!(
        matches!(ran.outcome, AttemptOutcome::Error(_)),
        "{:?}",
        ran.outcome
    );
    assert_eq!(fake.requests_of("DELETE").len(), 1);
    fake.assert_all_pods_deleted().await;
}

#[tokio::test]
async fn garbage_from_the_api_while_running_ends_in_an_error_not_a_panic() {
    let mut acts = never_finishes(&["working"]);
    acts.push(Act::Sleep(50));
    acts.push(Act::Garbage);
    let fake = FakeKube::start(acts).await;
    let ran = run(&fake, two_steps()).await;
    let AttemptOutcome::Error(message) = &ran.outcome else {
        panic!("{:?}", ran.outcome)
    };
    assert!(
        message.contains("cannot read pod deploylite-7-build-1"),
        "{message}"
    );
    fake.assert_all_pods_deleted().await;
}

#[tokio::test]
async fn an_expired_watch_and_a_broken_log_stream_are_recovered() {
    let mut acts = runs(&[], 20, 0, None);
    let exit = acts.pop().unwrap();
    acts.extend([
        Act::Step(1),
        Act::Log("a".into()),
        Act::Log("b".into()),
        // The expired watch costs the executor about a second before it sees the Pod run.
        Act::Sleep(1500),
        Act::CutLogs,
        Act::Sleep(100),
        Act::Log("c".into()),
        Act::Sleep(700),
        Act::Log("d".into()),
        Act::Sleep(50),
        exit,
    ]);
    let fake = FakeKube::start(acts).await;
    fake.watch_gone_once();
    let ran = run(&fake, two_steps()).await;
    assert_eq!(ran.outcome, AttemptOutcome::Succeeded, "{:?}", ran.log);
    let outs: Vec<&str> = ran
        .log
        .iter()
        .filter(|(t, _)| t == "out")
        .map(|(_, x)| x.as_str())
        .collect();
    assert_eq!(outs, ["a", "b", "c", "d"]);
    let logs = fake
        .requests_of("GET")
        .into_iter()
        .filter(|r| r.path.ends_with("/log"))
        .count();
    assert!(logs >= 2, "the log was reopened");
    let watches = fake
        .requests_of("GET")
        .into_iter()
        .filter(|r| r.query.contains_key("watch"))
        .count();
    assert!(watches >= 2, "the watch was re-issued");
    fake.assert_all_pods_deleted().await;
}

#[tokio::test]
async fn a_pod_deleted_by_someone_else_is_an_error() {
    let mut acts = never_finishes(&["working"]);
    acts.push(Act::Sleep(100));
    acts.push(Act::DeleteExternally);
    let fake = FakeKube::start(acts).await;
    let ran = run(&fake, two_steps()).await;
    assert!(
        matches!(&ran.outcome, AttemptOutcome::Error(m) if m.contains("was deleted before the stage finished")),
        "{:?}",
        ran.outcome
    );
    fake.assert_all_pods_deleted().await;
}

#[tokio::test]
async fn an_evicted_pod_is_an_error() {
    let mut acts = never_finishes(&["working"]);
    acts.push(Act::Sleep(50));
    acts.push(Act::PodFailed {
        reason: "Evicted".into(),
        message: "The node was low on resource: memory.".into(),
    });
    let fake = FakeKube::start(acts).await;
    let ran = run(&fake, two_steps()).await;
    assert!(
        matches!(&ran.outcome, AttemptOutcome::Error(m) if m.contains("failed (Evicted): The node was low")),
        "{:?}",
        ran.outcome
    );
    fake.assert_all_pods_deleted().await;
}

#[tokio::test]
async fn a_leftover_pod_of_the_same_attempt_is_replaced() {
    // e.g. the rollback steps of a stage run as a second job of the same attempt.
    let fake = FakeKube::start(runs(&["again"], 20, 0, None)).await;
    fake.preexisting(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "deploylite-7-build-1",
            "namespace": "ci",
            "labels": {
                "app.kubernetes.io/managed-by": "deploylite",
                "deploylite.dev/run": "7",
                "deploylite.dev/stage": "build",
                "deploylite.dev/attempt": "1",
            }
        },
        "spec": {"containers": [{"name": "stage", "image": "alpine:3"}]}
    }));
    let ran = run(&fake, two_steps()).await;
    assert_eq!(ran.outcome, AttemptOutcome::Succeeded, "{:?}", ran.log);
    assert!(ran.has("out", "again"));
    assert_eq!(fake.requests_of("POST").len(), 2);
    let deletes = fake.requests_of("DELETE");
    assert_eq!(deletes.len(), 2);
    assert_eq!(deletes[0].body.as_ref().unwrap()["gracePeriodSeconds"], 0);
    fake.assert_all_pods_deleted().await;
}

#[tokio::test]
async fn a_foreign_pod_with_the_same_name_is_left_alone() {
    let fake = FakeKube::start(runs(&[], 20, 0, None)).await;
    fake.preexisting(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "deploylite-7-build-1", "namespace": "ci", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "nginx"}]}
    }));
    let ran = run(&fake, two_steps()).await;
    assert!(
        matches!(&ran.outcome, AttemptOutcome::Error(m) if m.contains("not this attempt's")),
        "{:?}",
        ran.outcome
    );
    // Our final delete targets the name we tried; the fake records it. The foreign pod must
    // not have been force-deleted before that.
    let deletes = fake.requests_of("DELETE");
    assert!(deletes
        .iter()
        .all(|d| d.body.as_ref().unwrap()["gracePeriodSeconds"] != 0));
}

#[tokio::test]
async fn service_account_and_default_image_are_applied() {
    let fake = FakeKube::start(runs(&[], 10, 0, None)).await;
    let exec = KubernetesExecutor::with_client(
        fake.client(),
        KubernetesConfig {
            namespace: None,
            service_account: Some("builder".into()),
            default_image: "busybox:1.36".into(),
            git_image: "registry.local/git:2".into(),
            ..config()
        },
    );
    assert_eq!(exec.namespace(), "default");
    let mut job = two_steps();
    job.image = None;
    job.resources = Resources::default();
    job.timeout = Some(Duration::from_secs(600));
    let dir = tempfile::tempdir().unwrap();
    let mut log = StageLog::create(&dir.path().join("l.log")).await.unwrap();
    let outcome =
        tokio::time::timeout(LIMIT, exec.execute(job, &mut log, CancellationToken::new()))
            .await
            .unwrap();
    assert_eq!(outcome, AttemptOutcome::Succeeded);
    let pod = &fake.created()[0];
    assert_eq!(pod["metadata"]["namespace"], "default");
    assert_eq!(
        fake.requests_of("POST")[0].path,
        "/api/v1/namespaces/default/pods"
    );
    assert_eq!(pod["spec"]["serviceAccountName"], "builder");
    assert_eq!(pod["spec"]["automountServiceAccountToken"], true);
    assert_eq!(pod["spec"]["activeDeadlineSeconds"], 660);
    assert_eq!(pod["spec"]["containers"][0]["image"], "busybox:1.36");
    assert!(pod["spec"]["containers"][0].get("resources").is_none());
    assert_eq!(
        pod["spec"]["initContainers"][0]["image"],
        "registry.local/git:2"
    );
    fake.assert_all_pods_deleted().await;
}

#[test]
fn pod_names_are_deterministic_dns_labels() {
    let names = [
        (1, "build", 1),
        (123456789, "Deploy to Production (EU)", 12),
        (5, "x".repeat(200).as_str(), 3),
        (5, "___", 1),
        (5, "build_", 1),
        (5, "Build", 1),
        (i64::MAX, &"very-long-stage-name-".repeat(10), u32::MAX),
    ]
    .map(|(run, stage, attempt)| (run, stage.to_string(), attempt));
    let fake_client_free = |run: i64, stage: &str, attempt: u32| {
        deploylite_runner::kubernetes::spec::pod_name(
            "deploylite",
            run.into(),
            stage,
            attempt.into(),
        )
    };
    let mut seen = std::collections::BTreeSet::new();
    for (run, stage, attempt) in &names {
        let name = fake_client_free(*run, stage, *attempt);
        assert_eq!(name, fake_client_free(*run, stage, *attempt));
        assert!(name.len() <= 63, "{name}");
        assert!(name.starts_with(|c: char| c.is_ascii_lowercase()), "{name}");
        assert!(
            name.ends_with(|c: char| c.is_ascii_alphanumeric()),
            "{name}"
        );
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{name}"
        );
        assert!(!name.contains("--"), "{name}");
        assert!(seen.insert(name.clone()), "duplicate {name}");
    }
    assert_eq!(fake_client_free(1, "build", 1), "deploylite-1-build-1");
    assert_ne!(
        fake_client_free(5, "build", 1),
        fake_client_free(5, "build_", 1)
    );
    assert_ne!(
        fake_client_free(5, "build", 1),
        fake_client_free(5, "Build", 1)
    );
}

#[tokio::test]
async fn services_fail_the_attempt_instead_of_being_ignored() {
    let fake = FakeKube::start(vec![]).await;
    let mut job = two_steps();
    job.services = vec![Service {
        name: "db".into(),
        image: "postgres:16".into(),
        env: BTreeMap::new(),
        command: None,
    }];
    let ran = run(&fake, job).await;
    assert_eq!(
        ran.outcome,
        AttemptOutcome::Error(
            "services: needs the docker executor; the kubernetes executor cannot start the \
             services of stage `build` (db)"
                .into()
        )
    );
    assert!(
        ran.has("---", "services: needs the docker executor"),
        "{:?}",
        ran.log
    );
    fake.assert_all_pods_deleted().await;
}

#[tokio::test]
async fn no_credential_of_the_repository_url_reaches_the_pod() {
    let fake = FakeKube::start(runs(&[], 10, 0, None)).await;
    let mut job = two_steps();
    job.source_url = Some("https://deploy:s3cret-t0ken@git.example.com/acme/app.git".into());
    let ran = run_config(
        &fake,
        job,
        CancellationToken::new(),
        KubernetesConfig {
            git_secret: Some("acme-git".into()),
            ..config()
        },
    )
    .await;
    assert_eq!(ran.outcome, AttemptOutcome::Succeeded, "{:?}", ran.log);
    assert!(ran.has("---", "carries a credential"), "{:?}", ran.log);

    let created = fake.created();
    let everything_sent = serde_json::to_string(&created).unwrap()
        + &fake
            .requests()
            .iter()
            .map(|r| format!("{r:?}"))
            .collect::<String>();
    assert!(!everything_sent.contains("s3cret"), "{everything_sent}");
    assert!(!everything_sent.contains("deploy:"), "{everything_sent}");

    let spec = &created[0]["spec"];
    let init = &spec["initContainers"][0];
    let init_env = env_of(init);
    assert_eq!(init_env["DEPLOYLITE_SOURCE_URL"], SOURCE);
    assert_eq!(
        init_env["GIT_CONFIG_KEY_1"],
        "credential.https://git.example.com.helper"
    );
    let from_secret: Vec<(String, String, String)> = init["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            let r = &e["valueFrom"]["secretKeyRef"];
            Some((
                e["name"].as_str()?.to_string(),
                r["name"].as_str()?.to_string(),
                r["key"].as_str()?.to_string(),
            ))
        })
        .collect();
    assert_eq!(
        from_secret,
        vec![
            (
                "DEPLOYLITE_GIT_USERNAME".into(),
                "acme-git".into(),
                "username".into()
            ),
            (
                "DEPLOYLITE_GIT_PASSWORD".into(),
                "acme-git".into(),
                "password".into()
            ),
        ]
    );
    // The stage's own container knows nothing of the credential.
    let main = serde_json::to_string(&spec["containers"]).unwrap();
    assert!(
        !main.contains("DEPLOYLITE_GIT_") && !main.contains("acme-git"),
        "{main}"
    );
}
