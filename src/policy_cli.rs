//! `deploylite policy test` and `deploylite policy eval`: the policy gates without a daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use deploylite_policy::testing::{run_tests, TestOutcome};
use deploylite_policy::{Gate, Policies, PolicySources};

/// The most an input file may hold.
const MAX_INPUT_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Run every `test_*` rule of every `*_test.rego` under DIR (with DIR's other modules and
    /// `data.yaml` files loaded), printing PASS, FAIL or ERROR per test.
    ///
    /// A test passes when its rule is true. Exits 0 when every test passed, 1 when one did
    /// not, 2 when none was found or the policies do not load.
    Test {
        #[arg(value_name = "DIR", default_value = ".")]
        dirs: Vec<PathBuf>,
        /// The time limit of each test.
        #[arg(long, default_value = "5s", value_name = "DURATION")]
        timeout: String,
    },
    /// Evaluate a gate for an input document (JSON, shaped as
    /// policy/schema/policy-input.schema.json) and print the decision as JSON.
    ///
    /// Exits 0 when nothing denied, 1 when a policy denied, 2 on an error.
    Eval {
        /// The input document (JSON).
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
        /// An operator bundle directory (repeat for more).
        #[arg(long = "bundle", value_name = "DIR")]
        bundles: Vec<PathBuf>,
        /// A repository's policy directory (e.g. .deploylite/policy): its `*.rego` files.
        #[arg(long, value_name = "DIR")]
        repo_policy: Option<PathBuf>,
        /// deploylite.run or deploylite.deploy [default: the input's `gate`, else run].
        #[arg(long, value_name = "GATE")]
        gate: Option<String>,
        /// The time limit of the evaluation.
        #[arg(long, default_value = "1s", value_name = "DURATION")]
        timeout: String,
    },
}

pub async fn run(command: PolicyCommand) -> Result<ExitCode> {
    // Reading directories and evaluating are blocking work.
    tokio::task::spawn_blocking(move || match command {
        PolicyCommand::Test { dirs, timeout } => test(&dirs, duration("--timeout", &timeout)?),
        PolicyCommand::Eval {
            input,
            bundles,
            repo_policy,
            gate,
            timeout,
        } => eval(EvalRequest {
            input,
            bundles,
            repo_policy,
            gate,
            limit: duration("--timeout", &timeout)?,
        }),
    })
    .await
    .context("the policy command stopped")?
}

fn duration(flag: &str, text: &str) -> Result<Duration> {
    deploylite_pipeline::duration::parse_duration(text).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}

fn test(dirs: &[PathBuf], limit: Duration) -> Result<ExitCode> {
    let results = run_tests(dirs, limit).context("cannot load the policies")?;
    if results.is_empty() {
        let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        eprintln!(
            "no test_* rule in any *_test.rego under {}",
            shown.join(", ")
        );
        return Ok(ExitCode::from(2));
    }
    let mut failed = 0;
    for result in &results {
        let micros = result.duration.as_micros();
        match &result.outcome {
            TestOutcome::Pass => println!("PASS  {} ({micros} µs)", result.rule),
            TestOutcome::Fail => {
                failed += 1;
                println!("FAIL  {} ({}) ({micros} µs)", result.rule, result.file);
            }
            TestOutcome::Error(message) => {
                failed += 1;
                println!("ERROR {} ({}): {message}", result.rule, result.file);
            }
        }
    }
    println!("{} passed, {failed} failed", results.len() - failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

struct EvalRequest {
    input: PathBuf,
    bundles: Vec<PathBuf>,
    repo_policy: Option<PathBuf>,
    gate: Option<String>,
    limit: Duration,
}

fn eval(request: EvalRequest) -> Result<ExitCode> {
    let size = std::fs::metadata(&request.input)
        .with_context(|| format!("cannot read {}", request.input.display()))?
        .len();
    anyhow::ensure!(
        size <= MAX_INPUT_BYTES,
        "{}: {size} bytes; an input may have at most {MAX_INPUT_BYTES}",
        request.input.display()
    );
    let text = std::fs::read_to_string(&request.input)
        .with_context(|| format!("cannot read {}", request.input.display()))?;
    let input: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", request.input.display()))?;
    let gate_text = request.gate.clone().or_else(|| {
        input
            .get("gate")
            .and_then(|g| g.as_str())
            .map(str::to_string)
    });
    let gate = match gate_text {
        Some(text) => text.parse::<Gate>().map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Gate::Run,
    };
    let policies =
        Policies::from_bundles(&request.bundles, request.limit).context("cannot load --bundle")?;
    let repository = match &request.repo_policy {
        Some(dir) => {
            let mut sources = PolicySources::from_dirs(std::slice::from_ref(dir), false)
                .context("cannot load --repo-policy")?;
            // A repository brings policies only, no data (as in the daemon).
            sources.data.clear();
            sources
        }
        None => PolicySources::default(),
    };
    let decision = policies
        .evaluate(gate, &repository, &input)
        .context("evaluation failed")?;
    println!("{}", serde_json::to_string_pretty(&decision)?);
    Ok(if decision.denied() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
