//! The Docker executor against a real engine, with the locally built image
//! `deploylite-test/busybox:latest` (`.ci/images.sh` builds it; nothing is pulled).
//!
//! Without a Docker socket at all the tests are skipped, loudly (and fail under CI); with an
//! engine but without the image they fail, pointing at `.ci/images.sh` (`./scripts/test` runs it). Every test uses its own run id, so
//! they run in parallel, and checks that nothing labelled with it is left behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
};
use bollard::Docker;
use deploylite_pipeline::{Resources, Service, Step};
use deploylite_runner::docker::{
    DockerConfig, DockerExecutor, PullPolicy, DEFAULT_DOCKER_HOST, LABEL_ATTEMPT, LABEL_INSTANCE,
    LABEL_MANAGED, LABEL_RUN_ID, LABEL_STAGE,
};
use deploylite_runner::{
    read_log, AttemptOutcome, CancellationToken, Executor, StageJob, StageLog,
};
use deploylite_testkit::wait;

const IMAGE: &str = "deploylite-test/busybox:latest";

/// The engine the tests talk to, or None (and a printed reason) when there is no socket.
async fn engine() -> Option<(DockerExecutor, Docker)> {
    let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| DEFAULT_DOCKER_HOST.into());
    let socket = host.strip_prefix("unix://").unwrap_or(&host);
    if socket.starts_with('/') {
        let path = socket;
        if !Path::new(path).exists() {
            deploylite_testkit::skip(
                "the Docker executor tests",
                &format!("no Docker socket at {path}"),
            );
            return None;
        }
    }
    let executor = executor(DockerConfig::default());
    let version = executor
        .ping()
        .await
        .unwrap_or_else(|e| panic!("a Docker socket exists but the engine does not answer: {e}"));
    eprintln!("engine: {version}");
    let docker = Docker::connect_with_defaults()
        .expect("bollard client")
        .negotiate_version()
        .await
        .expect("negotiate the API version");
    if let Err(e) = docker.inspect_image(IMAGE).await {
        panic!("the test image {IMAGE} is missing ({e}): run .ci/images.sh first");
    }
    Some((executor, docker))
}

fn executor(config: DockerConfig) -> DockerExecutor {
    DockerExecutor::new(config).expect("docker executor")
}

/// A run id no other test (in this process or a concurrent one) uses.
fn unique_run_id() -> i64 {
    static NEXT: AtomicI64 = AtomicI64::new(0);
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
        % 1_000_000_000_000;
    let seed = base * 1000 + i64::from(std::process::id() % 1000);
    let _ = NEXT.compare_exchange(0, seed, Ordering::SeqCst, Ordering::SeqCst);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

fn step(run: &str) -> Step {
    Step {
        name: None,
        run: run.to_string(),
        env: BTreeMap::new(),
    }
}

fn job(run_id: i64, workspace: &Path, steps: Vec<Step>) -> StageJob {
    let mut env = BTreeMap::new();
    env.insert("DEPLOYLITE_RUN_ID".to_string(), run_id.to_string());
    env.insert("DEPLOYLITE_STAGE".to_string(), "build".to_string());
    env.insert(
        "DEPLOYLITE_WORKSPACE".to_string(),
        workspace.display().to_string(),
    );
    StageJob {
        run_id: run_id.into(),
        stage: "build".into(),
        attempt: 1.into(),
        workspace: workspace.to_path_buf(),
        env,
        steps,
        timeout: Some(Duration::from_secs(60)),
        image: Some(IMAGE.into()),
        resources: Resources::default(),
        services: Vec::new(),
        source_url: None,
        repo: "demo".into(),
        pipeline: "ci".into(),
        commit: "0123456789abcdef".into(),
    }
}

struct Run {
    outcome: AttemptOutcome,
    log: String,
    elapsed: Duration,
}

async fn run(executor: &DockerExecutor, job: StageJob, cancel: CancellationToken) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("1.log");
    let mut log = StageLog::create(&path).await.unwrap();
    let started = Instant::now();
    let outcome = executor.execute(job, &mut log, cancel).await;
    let elapsed = started.elapsed();
    drop(log);
    let log = read_log(&path).await.unwrap();
    eprintln!("{log}");
    Run {
        outcome,
        log,
        elapsed,
    }
}

fn workspace() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ws");
    std::fs::create_dir(&path).unwrap();
    // The steps may run as another user (see `user_is_configurable`).
    set_mode(&path, 0o777);
    (dir, path)
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn label_filter(run_id: i64) -> HashMap<String, Vec<String>> {
    let mut filters = HashMap::new();
    filters.insert(
        "label".to_string(),
        vec![format!("{LABEL_RUN_ID}={run_id}")],
    );
    filters
}

async fn containers_of(docker: &Docker, run_id: i64) -> Vec<bollard::models::ContainerSummary> {
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&label_filter(run_id))
        .build();
    docker.list_containers(Some(options)).await.unwrap()
}

/// Nothing labelled with the run id is left: no container (in any state), no network.
async fn assert_no_leftovers(docker: &Docker, run_id: i64) {
    let containers = containers_of(docker, run_id).await;
    assert!(
        containers.is_empty(),
        "containers left behind: {:?}",
        containers.iter().map(|c| &c.names).collect::<Vec<_>>()
    );
    let options = ListNetworksOptionsBuilder::new()
        .filters(&label_filter(run_id))
        .build();
    let networks = docker.list_networks(Some(options)).await.unwrap();
    assert!(
        networks.is_empty(),
        "networks left behind: {:?}",
        networks.iter().map(|n| &n.name).collect::<Vec<_>>()
    );
}

/// Waits until a container of the run is running; returns its id.
async fn running_container(docker: &Docker, run_id: i64) -> String {
    wait::until_within(
        Duration::from_secs(20),
        format_args!("a running container for run {run_id}"),
        || async {
            containers_of(docker, run_id)
                .await
                .into_iter()
                .find(|c| c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING))
                .and_then(|c| c.id)
        },
    )
    .await
}

/// A step that says, with a file in the workspace, that it runs, then runs for 30 s.
const MARK_THEN_SLEEP: &str = "touch step-started; sleep 30";

/// Waits until a [`MARK_THEN_SLEEP`] step runs in `workspace`: the stage is mid-step.
async fn step_started(workspace: &Path) {
    let mark = workspace.join("step-started");
    let mark = &mark;
    wait::until("the step's mark in the workspace", || async move {
        mark.exists().then_some(())
    })
    .await
}

#[tokio::test]
async fn image_env_workspace_and_working_dir() {
    let Some((executor, docker)) = engine().await else {
        return;
    };
    let run_id = unique_run_id();
    let (_dir, ws) = workspace();
    std::fs::write(ws.join("input.txt"), "from the host\n").unwrap();
    let mut env_step = step("echo \"greeting=$GREETING step=$STEP_ONLY\"; echo to-stderr >&2");
    env_step.name = Some("env".into());
    env_step.env.insert("STEP_ONLY".into(), "just-here".into());
    let mut job = job(
        run_id,
        &ws,
        vec![
            env_step,
            step("cat input.txt\npwd\necho \"ws=$DEPLOYLITE_WORKSPACE\""),
            step("echo written-by-the-step > output.txt; printf 'no newline at the end'"),
            step("cat output.txt; echo \"step=${STEP_ONLY:-unset}\""),
        ],
    );
    job.env
        .insert("GREETING".into(), "hello from the job".into());
    let run = run(&executor, job, CancellationToken::new()).await;

    assert_eq!(run.outcome, AttemptOutcome::Succeeded, "{}", run.log);
    for expected in [
        "--- step 1: env",
        "out greeting=hello from the job step=just-here",
        "err to-stderr",
        "--- step 2: cat input.txt",
        "out from the host",
        "out /workspace",
        "out ws=/workspace",
        "out no newline at the end",
        "out written-by-the-step",
        // Step env does not leak into the next step.
        "out step=unset",
    ] {
        assert!(
            run.log.contains(expected),
            "missing `{expected}` in:\n{}",
            run.log
        );
    }
    assert_eq!(
        std::fs::read_to_string(ws.join("output.txt")).unwrap(),
        "written-by-the-step\n"
    );
    assert_no_leftovers(&docker, run_id).await;
}

#[tokio::test]
async fn cpu_and_memory_limits_reach_the_engine() {
    let Some((executor, docker)) = engine().await else {
        return;
    };
    let run_id = unique_run_id();
    let (_dir, ws) = workspace();
    let mut job = job(
        run_id,
        &ws,
        vec![step(
            "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes\n\
             while [ ! -f release ]; do sleep 0.1; done",
        )],
    );
    job.resources = Resources {
        cpu: Some("0.5".into()),
        memory: Some("64Mi".into()),
    };
    let inspect = async {
        let id = running_container(&docker, run_id).await;
        let inspected = docker.inspect_container(&id, None).await.unwrap();
        std::fs::write(ws.join("release"), "").unwrap();
        let config = inspected.config.unwrap();
        let labels = config.labels.unwrap();
        assert_eq!(labels.get(LABEL_MANAGED).map(String::as_str), Some("true"));
        assert_eq!(labels.get(LABEL_STAGE).map(String::as_str), Some("build"));
        assert_eq!(labels.get(LABEL_ATTEMPT).map(String::as_str), Some("1"));
        assert_eq!(config.working_dir.as_deref(), Some("/workspace"));
        let host = inspected.host_config.unwrap();
        (host.memory, host.nano_cpus, host.network_mode)
    };
    let (run, (memory, nano_cpus, network)) =
        tokio::join!(run(&executor, job, CancellationToken::new()), inspect);

    assert_eq!(run.outcome, AttemptOutcome::Succeeded, "{}", run.log);
    assert_eq!(memory, Some(64 * 1024 * 1024));
    assert_eq!(nano_cpus, Some(500_000_000));
    let network = network.unwrap();
    assert!(
        network.starts_with(&format!("deploylite-{run_id}-build-1-")),
        "{network}"
    );
    // The step saw the limit from inside (cgroup v2 `memory.max` or v1 `limit_in_bytes`).
    assert!(run.log.contains("out 67108864"), "{}", run.log);
    assert_no_leftovers(&docker, run_id).await;
}

#[tokio::test]
async fn a_failing_step_reports_its_exit_code_and_stops_the_stage() {
    let Some((executor, docker)) = engine().await else {
        return;
    };
    let run_id = unique_run_id();
    let (_dir, ws) = workspace();
    let job = job(
        run_id,
        &ws,
        vec![
            step("echo before"),
            step("echo failing; exit 3"),
            step("echo never"),
        ],
    );
    let run = run(&executor, job, CancellationToken::new()).await;

    assert_eq!(
        run.outcome,
        AttemptOutcome::Failed {
            step: 1,
            exit_code: Some(3)
        }
    );
    assert!(run.log.contains("out failing"), "{}", run.log);
    assert!(run.log.contains("--- step 2 exited with 3"), "{}", run.log);
    assert!(!run.log.contains("out never"), "{}", run.log);
    // `sh -e`: a failing command in the middle of a script fails the step.
    let job2 = self::job(run_id, &ws, vec![step("false\necho not-reached")]);
    let run = self::run(&executor, job2, CancellationToken::new()).await;
    assert_eq!(
        run.outcome,
        AttemptOutcome::Failed {
            step: 0,
            exit_code: Some(1)
        }
    );
    assert!(!run.log.contains("out not-reached"), "{}", run.log);
    assert_no_leftovers(&docker, run_id).await;
}

#[tokio::test]
async fn timeout_stops_the_container_promptly() {
    let Some((executor, docker)) = engine().await else {
        return;
    };
    let run_id = unique_run_id();
    let (_dir, ws) = workspace();
    let mut job = job(run_id, &ws, vec![step("echo sleeping; sleep 30")]);
    // Long enough for a container to start and print on a loaded 2-core machine (1s was not:
    // the timeout then hit before `echo` ran), short against the step's 30 s.
    job.timeout = Some(Duration::from_secs(4));
    let run = run(&executor, job, CancellationToken::new()).await;

    assert_eq!(run.outcome, AttemptOutcome::TimedOut, "{}", run.log);
    assert!(
        run.elapsed < Duration::from_secs(12),
        "took {:?}",
        run.elapsed
    );
    assert!(run.log.contains("out sleeping"), "{}", run.log);
    assert!(
        run.log
            .contains("--- timed out after 4s: stopped the step's container"),
        "{}",
        run.log
    );
    assert_no_leftovers(&docker, run_id).await;
}

#[tokio::test]
async fn cancellation_stops_the_container_promptly() {
    let Some((executor, docker)) = engine().await else {
        return;
    };
    let run_id = unique_run_id();
    let (_dir, ws) = workspace();
    let job = job(run_id, &ws, vec![step(MARK_THEN_SLEEP), step("echo never")]);
    let cancel = CancellationToken::new();
    let canceller = async {
        running_container(&docker, run_id).await;
        step_started(&ws).await;
        cancel.cancel();
        Instant::now()
    };
    let (run, cancelled_at) = tokio::join!(run(&executor, job, cancel.clone()), canceller);

    assert_eq!(run.outcome, AttemptOutcome::Cancelled, "{}", run.log);
    let after_cancel = cancelled_at.elapsed();
    assert!(
        after_cancel < Duration::from_secs(6),
        "cancel took {after_cancel:?}"
    );
    assert!(
        run.log
            .contains("--- cancelled: stopped the step's container"),
        "{}",
        run.log
    );
    assert!(!run.log.contains("out never"), "{}", run.log);
    assert_no_leftovers(&docker, run_id).await;
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_is_a_clear_error() {
    let Some((executor, docker)) = engine().await else {
        return;
    };
    let run_id = unique_run_id();
    let (_dir, ws) = workspace();
    let image = format!("deploylite-test/no-such-image-{run_id}:1");
    let mut job = job(run_id, &ws, vec![step("echo never")]);
    job.image = Some(image.clone());
    let run = run(&executor, job, CancellationToken::new()).await;

    let AttemptOutcome::Error(message) = &run.outcome else {
        panic!("expected an error, got {:?}\n{}", run.outcome, run.log);
    };
    assert!(
        message.starts_with(&format!("cannot pull image `{image}`: ")),
        "{message}"
    );
    // The engine's own reason follows.
    assert!(
        message.len() > format!("cannot pull image `{image}`: ").len(),
        "{message}"
    );
    assert!(
        run.log.contains(&format!("--- pulling image {image}")),
        "{}",
        run.log
    );
    assert!(run.log.contains(message.as_str()), "{}", run.log);
    assert!(!run.log.contains("out never"), "{}", run.log);

    // With `pull: never` the engine is not even asked.
    let never = self::executor(DockerConfig {
        pull: PullPolicy::Never,
        ..DockerConfig::default()
    });
    let mut job = self::job(run_id, &ws, vec![step("echo never")]);
    job.image = Some(image.clone());
    let run = self::run(&never, job, CancellationToken::new()).await;
    assert_eq!(
        run.outcome,
        AttemptOutcome::Error(format!(
            "image `{image}` is not present on the Docker engine and the pull policy is `never`"
        ))
    );
    assert_no_leftovers(&docker, run_id).await;
}

#[tokio::test]
async fn bad_stages_fail_before_anything_is_created() {
    let Some((executor, docker)) = engine().await else {
        return;
    };
    let run_id = unique_run_id();
    let (_dir, ws) = workspace();

    let mut no_image = job(run_id, &ws, vec![step("echo never")]);
    no_image.image = None;
    let run = run(&executor, no_image.clone(), CancellationToken::new()).await;
    let AttemptOutcome::Error(message) = &run.outcome else {
        panic!("expected an error, got {:?}", run.outcome);
    };
    assert!(message.contains("names no `image`"), "{message}");

    // ... unless the executor has a default image.
    let with_default = executor_with_default_image();
    let run = self::run(&with_default, no_image, CancellationToken::new()).await;
    assert_eq!(run.outcome, AttemptOutcome::Succeeded, "{}", run.log);

    let mut bad_memory = job(run_id, &ws, vec![step("echo never")]);
    bad_memory.resources.memory = Some("12XB".into());
    let run = self::run(&executor, bad_memory, CancellationToken::new()).await;
    let AttemptOutcome::Error(message) = &run.outcome else {
        panic!("expected an error, got {:?}", run.outcome);
    };
    assert!(message.contains("invalid memory limit `12XB`"), "{message}");

    let mut bad_cpu = job(run_id, &ws, vec![step("echo never")]);
    bad_cpu.resources.cpu = Some("lots".into());
    let run = self::run(&executor, bad_cpu, CancellationToken::new()).await;
    let AttemptOutcome::Error(message) = &run.outcome else {
        panic!("expected an error, got {:?}", run.outcome);
    };
    assert!(message.contains("invalid cpu limit `lots`"), "{message}");

    let gone = job(run_id, &ws.join("missing"), vec![step("echo never")]);
    let run = self::run(&executor, gone, CancellationToken::new()).await;
    assert!(
        matches!(&run.outcome, AttemptOutcome::Error(m) if m.contains("does not exist")),
        "{:?}",
        run.outcome
    );
    assert_no_leftovers(&docker, run_id).await;
}

fn executor_with_default_image() -> DockerExecutor {
    executor(DockerConfig {
        default_image: Some(IMAGE.into()),
        ..DockerConfig::default()
    })
}

#[tokio::test]
async fn user_is_configurable() {
    let Some((_, docker)) = engine().await else {
        return;
    };
    let executor = executor(DockerConfig {
        user: Some("65534:65534".into()),
        ..DockerConfig::default()
    });
    let run_id = unique_run_id();
    let (_dir, ws) = workspace();
    let job = job(
        run_id,
        &ws,
        vec![step("echo \"uid=$(id -u) gid=$(id -g)\"; touch by-nobody")],
    );
    let run = run(&executor, job, CancellationToken::new()).await;
    assert_eq!(run.outcome, AttemptOutcome::Succeeded, "{}", run.log);
    assert!(run.log.contains("out uid=65534 gid=65534"), "{}", run.log);
    assert!(ws.join("by-nobody").exists());
    assert_no_leftovers(&docker, run_id).await;
}

#[tokio::test]
async fn leftovers_of_a_killed_daemon_are_removed_by_label() {
    let Some((executor, docker)) = engine().await else {
        return;
    };
    let run_id = unique_run_id();
    // What a daemon killed mid-attempt leaves: a running container with the attempt's labels.
    let mut labels = HashMap::new();
    labels.insert(LABEL_MANAGED.to_string(), "true".to_string());
    labels.insert(LABEL_INSTANCE.to_string(), "default".to_string());
    labels.insert(LABEL_RUN_ID.to_string(), run_id.to_string());
    labels.insert(LABEL_STAGE.to_string(), "build".to_string());
    labels.insert(LABEL_ATTEMPT.to_string(), "2".to_string());
    let network = format!("deploylite-{run_id}-build-2-orphan");
    docker
        .create_network(bollard::models::NetworkCreateRequest {
            name: network.clone(),
            labels: Some(labels.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let body = bollard::models::ContainerCreateBody {
        image: Some(IMAGE.into()),
        entrypoint: Some(vec!["sleep".into(), "300".into()]),
        labels: Some(labels.clone()),
        host_config: Some(bollard::models::HostConfig {
            network_mode: Some(network.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::new()
        .name(&format!("{network}-s1"))
        .build();
    let id = docker
        .create_container(Some(options), body)
        .await
        .unwrap()
        .id;
    docker.start_container(&id, None).await.unwrap();

    // Another attempt's objects are not touched.
    let other = executor
        .cleanup_attempt(run_id.into(), "build", 1.into())
        .await
        .unwrap();
    assert_eq!((other.containers, other.networks), (0, 0));
    // Nor another instance's.
    let other_instance = self::executor(DockerConfig {
        instance: "someone-else".into(),
        ..DockerConfig::default()
    });
    let other = other_instance.cleanup_run(run_id.into()).await.unwrap();
    assert_eq!((other.containers, other.networks), (0, 0));

    let cleaned = executor
        .cleanup_attempt(run_id.into(), "build", 2.into())
        .await
        .unwrap();
    assert_eq!((cleaned.containers, cleaned.networks), (1, 1));
    assert_no_leftovers(&docker, run_id).await;
    let again = executor.cleanup_run(run_id.into()).await.unwrap();
    assert_eq!((again.containers, again.networks), (0, 0));
}

#[tokio::test]
async fn a_dropped_attempt_still_removes_its_containers() {
    let Some((executor, docker)) = engine().await else {
        return;
    };
    let run_id = unique_run_id();
    let (_dir, ws) = workspace();
    let job = job(run_id, &ws, vec![step("sleep 30")]);
    let dir = tempfile::tempdir().unwrap();
    let mut log = StageLog::create(&dir.path().join("1.log")).await.unwrap();
    {
        let execute = executor.execute(job, &mut log, CancellationToken::new());
        tokio::select! {
            _ = execute => panic!("the step should still be running"),
            _ = running_container(&docker, run_id) => {}
        }
        // `execute` is dropped here, mid-step.
    }
    let docker = &docker;
    wait::until_within(
        Duration::from_secs(15),
        "the leftovers removed after the drop",
        || async move {
            let containers = containers_of(docker, run_id).await;
            let options = ListNetworksOptionsBuilder::new()
                .filters(&label_filter(run_id))
                .build();
            let networks = docker.list_networks(Some(options)).await.unwrap();
            (containers.is_empty() && networks.is_empty()).then_some(())
        },
    )
    .await
}

#[tokio::test]
async fn running_out_of_memory_is_reported_as_such() {
    let Some((executor, docker)) = engine().await else {
        return;
    };
    let run_id = unique_run_id();
    let (_dir, ws) = workspace();
    let mut job = job(
        run_id,
        &ws,
        vec![step(
            "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived",
        )],
    );
    job.resources.memory = Some("16Mi".into());
    let run = run(&executor, job, CancellationToken::new()).await;
    assert_eq!(
        run.outcome,
        AttemptOutcome::Failed {
            step: 0,
            exit_code: None
        },
        "{}",
        run.log
    );
    assert!(
        run.log
            .contains("--- step 1 was killed by a signal: out of memory (limit 16Mi)"),
        "{}",
        run.log
    );
    assert!(!run.log.contains("out survived"), "{}", run.log);
    assert_no_leftovers(&docker, run_id).await;
}

/// A service `web` serving a file: started before the step on the attempt's network, reachable
/// by its name, and gone afterwards.
fn web_service() -> Service {
    Service {
        name: "web".into(),
        image: IMAGE.into(),
        env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            "mkdir -p /srv && echo \"$GREETING from web\" > /srv/index.html && exec httpd -f -p 8080 -h /srv"
                .into(),
        ]),
    }
}

/// Services are not waited for, so the step retries until the service answers.
const FETCH_WEB: &str = "for i in $(seq 1 50); do \
    if wget -qO- http://web:8080/; then exit 0; fi; sleep 0.2; \
done; echo 'web never answered' >&2; exit 1";

#[tokio::test]
async fn a_service_is_reachable_by_name_and_removed_afterwards() {
    let Some((executor, docker)) = engine().await else {
        return;
    };
    let run_id = unique_run_id();
    let (_dir, ws) = workspace();
    let mut job = job(run_id, &ws, vec![step(FETCH_WEB)]);
    job.services = vec![web_service()];
    let run = run(&executor, job, CancellationToken::new()).await;

    assert_eq!(run.outcome, AttemptOutcome::Succeeded, "{}", run.log);
    assert!(run.log.contains("out hello from web"), "{}", run.log);
    assert!(
        run.log.contains(&format!(
            "--- service web: started from image {IMAGE} (not waited for)"
        )),
        "{}",
        run.log
    );
    assert_no_leftovers(&docker, run_id).await;
}

#[tokio::test]
async fn services_are_removed_after_a_failure_a_timeout_and_a_cancellation() {
    let Some((executor, docker)) = engine().await else {
        return;
    };
    let run_id = unique_run_id();
    let (_dir, ws) = workspace();

    let mut failing = job(run_id, &ws, vec![step(FETCH_WEB), step("exit 3")]);
    failing.services = vec![web_service()];
    let run = run(&executor, failing, CancellationToken::new()).await;
    assert_eq!(
        run.outcome,
        AttemptOutcome::Failed {
            step: 1,
            exit_code: Some(3)
        },
        "{}",
        run.log
    );
    assert_no_leftovers(&docker, run_id).await;

    let mut slow = job(run_id, &ws, vec![step("sleep 30")]);
    slow.services = vec![web_service()];
    slow.timeout = Some(Duration::from_secs(2));
    let run = self::run(&executor, slow, CancellationToken::new()).await;
    assert_eq!(run.outcome, AttemptOutcome::TimedOut, "{}", run.log);
    assert!(run.elapsed < Duration::from_secs(15), "{:?}", run.elapsed);
    assert_no_leftovers(&docker, run_id).await;

    let mut cancelled = job(run_id, &ws, vec![step(MARK_THEN_SLEEP)]);
    cancelled.services = vec![web_service()];
    let cancel = CancellationToken::new();
    let canceller = async {
        // The services are up and the step runs: the cancellation has them all to remove.
        step_started(&ws).await;
        cancel.cancel();
    };
    let (run, ()) = tokio::join!(self::run(&executor, cancelled, cancel.clone()), canceller);
    assert_eq!(run.outcome, AttemptOutcome::Cancelled, "{}", run.log);
    assert_no_leftovers(&docker, run_id).await;
}

#[tokio::test]
async fn a_service_image_that_cannot_be_pulled_is_a_clear_error() {
    let Some((executor, docker)) = engine().await else {
        return;
    };
    let run_id = unique_run_id();
    let (_dir, ws) = workspace();
    let image = format!("deploylite-test/no-such-service-{run_id}:1");
    let mut job = job(run_id, &ws, vec![step("echo never")]);
    job.services = vec![Service {
        name: "db".into(),
        image: image.clone(),
        env: BTreeMap::new(),
        command: None,
    }];
    let run = run(&executor, job, CancellationToken::new()).await;

    let AttemptOutcome::Error(message) = &run.outcome else {
        panic!("expected an error, got {:?}\n{}", run.outcome, run.log);
    };
    let prefix = format!("service `db`: cannot pull image `{image}`: ");
    assert!(message.starts_with(&prefix), "{message}");
    // The engine's own reason follows.
    assert!(message.len() > prefix.len(), "{message}");
    assert!(run.log.contains(message.as_str()), "{}", run.log);
    assert!(!run.log.contains("out never"), "{}", run.log);
    assert_no_leftovers(&docker, run_id).await;
}
