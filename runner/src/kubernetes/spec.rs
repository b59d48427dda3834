//! What the executor sends: the Pod's name, labels and spec, the clone script of the init
//! container and the step script of the main container.

use std::collections::BTreeMap;

use deploylite_model::{Attempt, RunId};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, Pod, PodSpec, ResourceRequirements,
    SecretKeySelector, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::job::StageJob;
use crate::source_url::{credential_helper_config, origin};

/// Where the workspace (an emptyDir) is mounted in both containers; the main container's
/// working directory and its `DEPLOYLITE_WORKSPACE`.
pub const WORKSPACE_DIR: &str = "/workspace";
/// The init container that clones the commit.
pub const CLONE_CONTAINER: &str = "clone";
/// The container that runs the steps.
pub const STAGE_CONTAINER: &str = "stage";
/// Where the step script writes which step failed; Kubernetes copies the file into
/// `status.containerStatuses[].state.terminated.message`.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "deploylite";
pub const LABEL_RUN: &str = "deploylite.dev/run";
pub const LABEL_STAGE: &str = "deploylite.dev/stage";
pub const LABEL_ATTEMPT: &str = "deploylite.dev/attempt";

const WORKSPACE_VOLUME: &str = "workspace";
const MAX_NAME: usize = 63;

/// What the executor's configuration contributes to a Pod.
pub struct PodSettings<'a> {
    pub namespace: &'a str,
    pub git_image: &'a str,
    pub default_image: &'a str,
    pub service_account: Option<&'a str>,
    pub labels: &'a BTreeMap<String, String>,
    /// Server-side safety net beyond the stage timeout (the kubelet kills the Pod even if the
    /// daemon is gone).
    pub deadline_slack_secs: i64,
    /// The Secret (keys `username`, `password`) the init container clones with.
    pub git_secret: Option<&'a str>,
}

/// FNV-1a, 64 bits: stable across Rust releases (unlike `DefaultHasher`), enough for a short
/// disambiguating suffix.
pub fn short_hash(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", (hash >> 32) ^ (hash & 0xffff_ffff))
}

/// Lowercase alphanumerics and single dashes, no dash at either end.
fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// The Pod of one stage attempt: `<prefix>-<run>-<stage>-<attempt>`, a DNS-1123 label (≤ 63
/// characters). When the stage name does not survive as is (other characters, or too long) a
/// hash of it is added so that two stages of a run never share a name.
pub fn pod_name(prefix: &str, run_id: RunId, stage: &str, attempt: Attempt) -> String {
    let prefix = match slug(prefix) {
        p if p.is_empty() => "deploylite".to_string(),
        p if !p.starts_with(|c: char| c.is_ascii_lowercase()) => format!("dl-{p}"),
        p => p,
    };
    let prefix: String = prefix.chars().take(20).collect();
    let prefix = prefix.trim_end_matches('-');
    let stage_slug = slug(stage);
    let plain = format!("{prefix}-{run_id}-{stage_slug}-{attempt}");
    if stage_slug == stage && !stage_slug.is_empty() && plain.len() <= MAX_NAME {
        return plain;
    }
    let hash = short_hash(stage);
    let fixed = format!("{prefix}-{run_id}--{hash}-{attempt}").len();
    let room = MAX_NAME.saturating_sub(fixed);
    let cut: String = stage_slug.chars().take(room).collect();
    let cut = cut.trim_end_matches('-');
    if cut.is_empty() {
        format!("{prefix}-{run_id}-{hash}-{attempt}")
    } else {
        format!("{prefix}-{run_id}-{cut}-{hash}-{attempt}")
    }
}

/// A valid label value (≤ 63, alphanumerics, `-_.`, alphanumeric at both ends) standing for
/// `text`; the full text goes into an annotation.
pub fn label_value(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(MAX_NAME)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// Whether `text` is a Kubernetes quantity (`0.5`, `500m`, `512Mi`, `1e3`).
pub fn is_quantity(text: &str) -> bool {
    let s = text.strip_prefix(['+', '-']).unwrap_or(text);
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let valid_number = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    if !valid_number {
        return false;
    }
    match suffix {
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T"
        | "P" | "E" => true,
        _ => {
            let Some(exp) = suffix.strip_prefix(['e', 'E']) else {
                return false;
            };
            let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            !exp.is_empty() && exp.chars().all(|c| c.is_ascii_digit())
        }
    }
}

/// A stage's `resources:` value that the API server would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resources.{key} `{value}` is not a Kubernetes quantity (e.g. {example})")]
pub struct QuantityError {
    pub key: &'static str,
    pub value: String,
    pub example: &'static str,
}

/// The stage's resources as requests = limits; an error names the value that is not a quantity.
pub fn resources(job: &StageJob) -> Result<Option<ResourceRequirements>, QuantityError> {
    let mut amounts = BTreeMap::new();
    for (key, value, example) in [
        ("cpu", &job.resources.cpu, "0.5, 500m or 2"),
        ("memory", &job.resources.memory, "512Mi or 1Gi"),
    ] {
        if let Some(value) = value {
            let value = value.trim();
            if !is_quantity(value) {
                return Err(QuantityError {
                    key,
                    value: value.to_string(),
                    example,
                });
            }
            amounts.insert(key.to_string(), Quantity(value.to_string()));
        }
    }
    if amounts.is_empty() {
        return Ok(None);
    }
    Ok(Some(ResourceRequirements {
        requests: Some(amounts.clone()),
        limits: Some(amounts),
        ..Default::default()
    }))
}

/// Single-quotes `text` for `sh`.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The marker line the step script prints before step `index + 1`; the log follower turns it
/// into the same `step N: label` system line the local executor writes.
pub fn step_marker(nonce: &str, index: usize) -> String {
    format!("##deploylite:{nonce}:step:{}", index + 1)
}

/// Parses a step marker back into the step's index.
pub fn parse_step_marker(nonce: &str, line: &str) -> Option<usize> {
    let rest = line.strip_prefix("##deploylite:")?.strip_prefix(nonce)?;
    let number: usize = rest.strip_prefix(":step:")?.trim_end().parse().ok()?;
    number.checked_sub(1)
}

/// The main container's script: each step is `sh -e -c <run>` (as with the local executor) with
/// the step's env layered on the container's env, preceded by its marker line; the first
/// failing step writes `deploylite: step=N exit=C` to `termination_log` and its code becomes the
/// container's exit code.
pub fn step_script(job: &StageJob, nonce: &str, termination_log: &str) -> String {
    let mut script = String::new();
    script.push_str(&format!(
        "deploylite_fail() {{ printf 'deploylite: step=%s exit=%s\\n' \"$1\" \"$2\" > {} 2>/dev/null || true; exit \"$2\"; }}\n",
        shell_quote(termination_log)
    ));
    for (index, step) in job.steps.iter().enumerate() {
        script.push_str(&format!(
            "printf '%s\\n' {}\n",
            shell_quote(&step_marker(nonce, index))
        ));
        let mut command = String::new();
        if !step.env.is_empty() {
            command.push_str("env");
            for (key, value) in &step.env {
                command.push(' ');
                command.push_str(&shell_quote(&format!("{key}={value}")));
            }
            command.push(' ');
        }
        command.push_str("sh -e -c ");
        command.push_str(&shell_quote(&step.run));
        script.push_str(&format!(
            "{command} </dev/null || deploylite_fail {} $?\n",
            index + 1
        ));
    }
    script.push_str("exit 0\n");
    script
}

/// Parses the termination message the step script writes: `(step index, exit code)`.
pub fn parse_termination(message: &str) -> Option<(usize, i32)> {
    let line = message
        .lines()
        .rev()
        .find(|l| l.starts_with("deploylite: step="))?;
    let rest = line.strip_prefix("deploylite: step=")?;
    let (step, exit) = rest.split_once(" exit=")?;
    let step: usize = step.trim().parse().ok()?;
    let exit: i32 = exit.trim().parse().ok()?;
    Some((step.checked_sub(1)?, exit))
}

/// The init container's script: fetch just the commit (shallow) when the server allows it,
/// else the whole repository, and check it out detached. URL and commit come from the env so
/// that nothing is interpolated into the script. The URL never holds a credential: with a git
/// Secret, git gets it from a credential helper configured in the init container's environment
/// ([`clone_env`]), so neither the Pod spec nor the workspace's `.git/config` holds it.
pub const CLONE_SCRIPT: &str = r#"set -eu
cd "$DEPLOYLITE_WORKSPACE"
git init -q .
git remote add origin "$DEPLOYLITE_SOURCE_URL"
if ! git fetch -q --depth 1 origin "$DEPLOYLITE_COMMIT"; then
  echo "shallow fetch of $DEPLOYLITE_COMMIT refused; fetching the whole repository" >&2
  git fetch -q --tags origin '+refs/heads/*:refs/remotes/origin/*'
fi
git -c advice.detachedHead=false checkout -q --detach "$DEPLOYLITE_COMMIT"
echo "checked out $(git rev-parse HEAD)"
"#;

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..Default::default()
    }
}

fn secret_var(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_string(),
                key: key.to_string(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The init container's environment: where to clone from, and with a git Secret the
/// credential helper (scoped to the URL's host) and the Secret's keys, by reference.
pub fn clone_env(job: &StageJob, source_url: &str, git_secret: Option<&str>) -> Vec<EnvVar> {
    let mut env = vec![
        env_var("DEPLOYLITE_SOURCE_URL", source_url),
        env_var("DEPLOYLITE_COMMIT", &job.commit),
        env_var("DEPLOYLITE_WORKSPACE", WORKSPACE_DIR),
    ];
    if let (Some(secret), Some(origin)) = (git_secret, origin(source_url)) {
        env.extend(
            credential_helper_config(&origin)
                .iter()
                .map(|(name, value)| env_var(name, value)),
        );
        env.push(secret_var("DEPLOYLITE_GIT_USERNAME", secret, "username"));
        env.push(secret_var("DEPLOYLITE_GIT_PASSWORD", secret, "password"));
    }
    env
}

/// The whole Pod of one stage attempt.
pub fn build_pod(
    job: &StageJob,
    settings: &PodSettings<'_>,
    name: &str,
    source_url: &str,
    nonce: &str,
) -> Result<Pod, QuantityError> {
    let resources = resources(job)?;
    let image = job
        .image
        .as_deref()
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .unwrap_or(settings.default_image);

    let mut labels = settings.labels.clone();
    labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
    labels.insert(LABEL_RUN.into(), job.run_id.to_string());
    labels.insert(LABEL_STAGE.into(), label_value(&job.stage));
    labels.insert(LABEL_ATTEMPT.into(), job.attempt.to_string());
    let annotations = BTreeMap::from([
        ("deploylite.dev/stage".to_string(), job.stage.to_string()),
        ("deploylite.dev/repo".to_string(), job.repo.to_string()),
        ("deploylite.dev/pipeline".to_string(), job.pipeline.clone()),
        ("deploylite.dev/commit".to_string(), job.commit.to_string()),
    ]);

    let mount = vec![VolumeMount {
        name: WORKSPACE_VOLUME.into(),
        mount_path: WORKSPACE_DIR.into(),
        ..Default::default()
    }];

    let mut env: Vec<EnvVar> = job
        .env
        .iter()
        .filter(|(k, _)| k.as_str() != "DEPLOYLITE_WORKSPACE")
        .map(|(k, v)| env_var(k, v))
        .collect();
    env.push(env_var("DEPLOYLITE_WORKSPACE", WORKSPACE_DIR));

    let clone = Container {
        name: CLONE_CONTAINER.into(),
        image: Some(settings.git_image.to_string()),
        command: Some(vec!["sh".into(), "-c".into(), CLONE_SCRIPT.into()]),
        env: Some(clone_env(job, source_url, settings.git_secret)),
        volume_mounts: Some(mount.clone()),
        working_dir: Some(WORKSPACE_DIR.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    let main = Container {
        name: STAGE_CONTAINER.into(),
        image: Some(image.to_string()),
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            step_script(job, nonce, TERMINATION_LOG),
        ]),
        env: Some(env),
        resources,
        volume_mounts: Some(mount),
        working_dir: Some(WORKSPACE_DIR.into()),
        termination_message_path: Some(TERMINATION_LOG.into()),
        termination_message_policy: Some("File".into()),
        ..Default::default()
    };
    let deadline = job
        .timeout
        .map(|t| i64::try_from(t.as_secs()).unwrap_or(i64::MAX / 2) + settings.deadline_slack_secs);

    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(settings.namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            init_containers: Some(vec![clone]),
            containers: vec![main],
            volumes: Some(vec![Volume {
                name: WORKSPACE_VOLUME.into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            }]),
            service_account_name: settings.service_account.map(str::to_string),
            // Stage code gets no API credentials unless a service account was configured.
            automount_service_account_token: Some(settings.service_account.is_some()),
            // Keep the stage's env what the pipeline says, not one variable per Service.
            enable_service_links: Some(false),
            active_deadline_seconds: deadline,
            ..Default::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::process::Command;

    use deploylite_pipeline::{Resources, Step};

    use super::*;

    fn job(steps: Vec<Step>) -> StageJob {
        StageJob {
            run_id: RunId::new(1),
            stage: "test".into(),
            attempt: Attempt::FIRST,
            workspace: PathBuf::from("/nowhere"),
            env: BTreeMap::new(),
            steps,
            timeout: None,
            image: None,
            resources: Resources::default(),
            services: Vec::new(),
            source_url: None,
            repo: "r".into(),
            pipeline: "p".into(),
            commit: "c".into(),
        }
    }

    fn step(run: &str, env: &[(&str, &str)]) -> Step {
        Step {
            name: None,
            run: run.into(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// The step script, run by a real `sh`: markers, step env, `-e`, the failing step's code
    /// and termination message.
    #[test]
    fn the_step_script_runs_steps_in_order_and_reports_the_failing_one() {
        let dir = tempfile::tempdir().unwrap();
        let termination = dir.path().join("termination-log");
        let three = job(vec![
            step(
                "echo \"one $ONLY_ONE\"; echo 'it'\\''s'",
                &[("ONLY_ONE", "a b 'c'")],
            ),
            step("echo \"two [$ONLY_ONE]\"; false; echo unreachable", &[]),
            step("echo three", &[]),
        ]);
        let script = step_script(&three, "n0nce", termination.to_str().unwrap());
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            stdout,
            "##deploylite:n0nce:step:1\none a b 'c'\nit's\n##deploylite:n0nce:step:2\ntwo []\n"
        );
        assert_eq!(out.status.code(), Some(1));
        let message = std::fs::read_to_string(&termination).unwrap();
        assert_eq!(parse_termination(&message), Some((1, 1)));
        assert_eq!(
            parse_step_marker("n0nce", "##deploylite:n0nce:step:2"),
            Some(1)
        );
        assert_eq!(
            parse_step_marker("other", "##deploylite:n0nce:step:2"),
            None
        );

        let ok = step_script(
            &job(vec![step("exit 0", &[])]),
            "x",
            termination.to_str().unwrap(),
        );
        let out = Command::new("sh").arg("-c").arg(&ok).output().unwrap();
        assert_eq!(out.status.code(), Some(0));

        let code = step_script(
            &job(vec![step("exit 42", &[])]),
            "x",
            termination.to_str().unwrap(),
        );
        let out = Command::new("sh").arg("-c").arg(&code).output().unwrap();
        assert_eq!(out.status.code(), Some(42));
        let message = std::fs::read_to_string(&termination).unwrap();
        assert_eq!(parse_termination(&message), Some((0, 42)));
    }

    fn git(dir: &std::path::Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The init container's script, run by a real `sh` and `git` against a local repository:
    /// the workspace holds the asked commit (not the branch head).
    #[test]
    fn the_clone_script_checks_out_the_commit() {
        if Command::new("git").arg("--version").output().is_err() {
            eprintln!("no git: skipped");
            return;
        }
        let repo = tempfile::tempdir().unwrap();
        git(repo.path(), &["init", "-q", "-b", "main"]);
        std::fs::write(repo.path().join("file"), "first\n").unwrap();
        git(repo.path(), &["add", "file"]);
        git(repo.path(), &["commit", "-q", "-m", "first"]);
        let first = git(repo.path(), &["rev-parse", "HEAD"]);
        std::fs::write(repo.path().join("file"), "second\n").unwrap();
        git(repo.path(), &["commit", "-q", "-am", "second"]);

        let workspace = tempfile::tempdir().unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(CLONE_SCRIPT)
            .env(
                "DEPLOYLITE_SOURCE_URL",
                format!("file://{}", repo.path().display()),
            )
            .env("DEPLOYLITE_COMMIT", &first)
            .env("DEPLOYLITE_WORKSPACE", workspace.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(workspace.path().join("file")).unwrap(),
            "first\n"
        );
        assert_eq!(git(workspace.path(), &["rev-parse", "HEAD"]), first);

        let bad = tempfile::tempdir().unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(CLONE_SCRIPT)
            .env(
                "DEPLOYLITE_SOURCE_URL",
                format!("file://{}/missing", repo.path().display()),
            )
            .env("DEPLOYLITE_COMMIT", &first)
            .env("DEPLOYLITE_WORKSPACE", bad.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
    }

    #[test]
    fn quantities() {
        for ok in [
            "1", "0.5", "500m", "2", "512Mi", "1Gi", "1e3", "1.5G", "+1", ".5",
        ] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "512MB", "1 Gi", "m", "1..2", "abc", "1e", "1Gib", "."] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn a_resource_that_is_not_a_quantity_is_named() {
        let mut stage = job(vec![step("true", &[])]);
        stage.resources.memory = Some(" 1 GB ".into());
        assert_eq!(
            resources(&stage).unwrap_err().to_string(),
            "resources.memory `1 GB` is not a Kubernetes quantity (e.g. 512Mi or 1Gi)"
        );
    }

    #[test]
    fn label_values_are_valid() {
        assert_eq!(label_value("build"), "build");
        assert_eq!(label_value("Deploy to EU!"), "Deploy-to-EU");
        assert_eq!(label_value("_x_"), "x");
        assert!(label_value(&"a".repeat(100)).len() <= 63);
        assert_eq!(label_value("!!!"), "");
    }
}
