//! `deploylite`: the daemon and its command-line tools. A thin layer over the library crates;
//! errors become exit codes here and nowhere else.

mod client;
mod config;
mod executors;
mod isolation;
mod known_runners;
mod local_run;
mod logs;
mod plan;
mod policy_cli;
mod run_view;
mod serve;
mod server_url;
mod table;
mod text;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

const ABOUT: &str = "DeployLite: GitOps pipelines from `.deploylite/` in your git repositories.";

const LONG_ABOUT: &str = "DeployLite watches git repositories, reads the pipelines committed under \
`.deploylite/pipelines/*.yaml` at each new commit, runs the stages they describe (a DAG) and records \
every run. One binary; SQLite and the local filesystem by default.

Quick start:
  deploylite validate                       check the pipelines of the repository you are in
  deploylite plan                           show what would run for HEAD, without running it
  deploylite run --pipeline ci              run one pipeline of this working copy, here, now
  deploylite serve --config deploylite.yaml start the daemon
  deploylite status                         list the daemon's recent runs
  deploylite logs RUN -f                    follow a run's stage logs until it ends
  deploylite env list                       the environments, in sync or not, and why
  deploylite deploy app/staging             deploy an environment's desired version now";

#[derive(Parser)]
#[command(name = "deploylite", version, about = ABOUT, long_about = LONG_ABOUT, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: watch repositories, create runs, execute stages, serve the API.
    ///
    /// Configuration comes in layers, each overriding the one before: built-in defaults, the
    /// YAML file given by --config, DEPLOYLITE_* environment variables (e.g.
    /// DEPLOYLITE_LISTEN, DEPLOYLITE_DATABASE_URL, DEPLOYLITE_RETENTION__LOGS=7d,
    /// DEPLOYLITE_REPOS='[{name: app, url: /srv/git/app}]'), then these flags.
    /// See README.md for every key.
    Serve(ServeArgs),
    /// Check pipeline and environment files; print one `file:line:col: message` line per
    /// problem, and `file:line:col: warning: message` per warning.
    ///
    /// PATHs may be files or directories: a repository means its `.deploylite/pipelines/` and
    /// `.deploylite/environments/`, a `.deploylite` directory its `pipelines/` and
    /// `environments/`, a directory named `environments` (or a file in one) environment files,
    /// any other directory the pipeline files in it. Environments are checked against the
    /// pipelines of their `.deploylite` directory. Default: the current directory.
    /// When the server answers (within a short timeout; else the check is skipped), stages
    /// whose `runs_on` labels no runner offers are warned about. Exits 0 when everything is
    /// valid (warnings or not), 1 when there are problems, 2 when no file was found.
    Validate {
        #[arg(value_name = "PATH")]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Show what would run for a commit, stage by stage in DAG layers, without running anything.
    ///
    /// Names every pipeline the commit does not trigger, and why. Warns like `validate`.
    Plan {
        /// The git repository (working copy or bare), or any directory inside it.
        #[arg(long, default_value = ".", value_name = "DIR")]
        repo: PathBuf,
        /// Any revision git accepts: a branch, tag, full ref, commit id (also abbreviated),
        /// `HEAD~1`, `main^`... The event is a push to that branch or tag; for other
        /// revisions, to the branch checked out.
        #[arg(long = "ref", default_value = "HEAD", value_name = "REF")]
        git_ref: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Run one pipeline of a working copy once, here, with live logs.
    ///
    /// The steps work in a temporary copy of the working tree, deleted afterwards, so that
    /// nothing they do reaches your checkout. The copy holds what `git ls-files --cached
    /// --others --exclude-standard` lists, as it is on disk: tracked files with their
    /// uncommitted changes, and untracked files that are not ignored. It has no `.git`: a step
    /// that needs git history or `git` commands needs --in-place. Outside a git work tree the
    /// whole directory is copied. The copy lives in TMPDIR (on a file system with reflinks,
    /// btrfs or XFS, put TMPDIR on the same one to make it almost free).
    ///
    /// Stages run on this machine whatever their `runs_on` says; a stage with `image:` fails
    /// unless --ignore-image. Exits 0 if and only if the run succeeded.
    Run {
        #[arg(long, default_value = ".", value_name = "DIR")]
        repo: PathBuf,
        /// Which pipeline (by `name:`); needed when the working copy has several.
        #[arg(long, value_name = "NAME")]
        pipeline: Option<String>,
        /// Stages running at once.
        #[arg(long, value_name = "N")]
        max_parallel_stages: Option<usize>,
        /// Run the steps in the working copy itself, not in a copy: whatever they change or
        /// delete there stays changed or deleted.
        #[arg(long)]
        in_place: bool,
        #[command(flatten)]
        image: IgnoreImage,
    },
    /// List recent runs of a running daemon, or show one run with its stages.
    Status {
        /// A run id: show that run and its stages.
        run: Option<i64>,
        #[command(flatten)]
        server: ServerArg,
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        pipeline: Option<String>,
        /// queued, running, success, failed, cancelled, skipped or error.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a run's stage logs, or follow a live one (-f) until its attempt ends.
    ///
    /// Without STAGE: every stage's latest attempt, in the order the stages run, each under a
    /// `==> stage NAME, attempt N <==` header (no header when the run has one stage). Log lines
    /// are as stored: `<time> out|err|--- <text>`; every attempt's log ends with DeployLite's
    /// `attempt N ended: ...` line. With -f, exits 0 when the stage (without STAGE: the run)
    /// succeeded and 1 otherwise, like `deploylite run`.
    Logs {
        /// The run's id (see `deploylite status`).
        run: i64,
        /// One stage [default: every stage].
        stage: Option<String>,
        /// Follow the log while it grows, until the attempt ends; a retried stage's next
        /// attempts are followed too.
        #[arg(short, long)]
        follow: bool,
        /// This attempt instead of the latest (needs STAGE when the run has several stages).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        attempt: Option<u32>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Cancel a run: running stages are stopped, the rest skipped. Needs an operator token.
    Cancel {
        run: i64,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Approve a deployment waiting for approval, or an untrusted run so that it starts.
    ///
    /// ID is `deployment/N`, `run/N`, or a bare `N`: runs and deployments are numbered apart,
    /// so a bare N approves whichever of deployment N and run #N waits for an approval (when
    /// both do, nothing is approved: say which).
    ///
    /// A deployment gets one approval per operator token; it leaves `waiting` once it has the
    /// `approval: {required: N}` its environment asks for (see `deploylite env status`).
    /// A run: its head commit is approved, and the other runs of that commit waiting for
    /// approval start too; a later push to the fork needs a new approval.
    ///
    /// Needs an operator token. Exits 1 when nothing is waiting for approval.
    ///
    /// Examples:
    ///   deploylite approve 12              the deployment (or run) 12 that waits
    ///   deploylite approve deployment/12   deployment 12, whatever run #12 does
    ///   deploylite approve run/7           run #7 (a pull request from a fork)
    #[command(verbatim_doc_comment)]
    Approve {
        /// deployment/N, run/N, or N.
        #[arg(value_name = "ID", value_parser = client::environments::parse_approvable)]
        id: client::environments::Approvable,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Environments: list them, show one with its deployments, or its whole history.
    ///
    /// An environment is a file in `.deploylite/environments/` on a repository's default
    /// branch (docs/environments.md). Its status: sync (in_sync, out_of_sync, drifted,
    /// unknown), health (healthy, degraded, progressing, unknown), the current and desired
    /// versions, and a hold when someone pinned it.
    ///
    /// Examples:
    ///   deploylite env list                        every environment
    ///   deploylite env list --repo app             those of one repository
    ///   deploylite env status app/production       where it stands, and why it waits
    ///   deploylite env history app/production      every deployment, newest first
    #[command(verbatim_doc_comment)]
    Env {
        #[command(subcommand)]
        command: EnvCommand,
    },
    /// Deploy a version to an environment now, even while it is held.
    ///
    /// The deployment still passes the environment's gates (requires, promote_from, approval,
    /// policy) and waits its turn. Without --version, the environment's desired version (the newest commit that passes
    /// its gates) is deployed again as a new attempt: the way to retry a version that failed
    /// (automation does not retry it). Needs an operator token. Exits 1 when the daemon
    /// refuses (no desired version yet, unknown version).
    ///
    /// Examples:
    ///   deploylite deploy app/staging                     the desired version, again
    ///   deploylite deploy app/staging --version 9f8e7d6   a commit (a branch or tag works too)
    ///   deploylite deploy org/app/production              a repository named `org/app`
    // `--version` is the version to deploy (issue 11's interface), not the binary's.
    #[command(verbatim_doc_comment, disable_version_flag = true)]
    Deploy {
        /// REPO/ENV, e.g. app/production (the repository's name may hold `/`).
        #[arg(value_name = "REPO/ENV")]
        target: String,
        /// A commit id (full or abbreviated), branch or tag [default: the desired version].
        #[arg(long, value_name = "SHA")]
        version: Option<String>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Roll an environment back to an earlier good version, and hold it there.
    ///
    /// Redeploys, as a `rollback`, a version that once deployed successfully (default: the
    /// newest one before the current). The environment is then held: automation records new
    /// desired versions but does not deploy them until `deploylite release REPO/ENV`.
    /// Needs an operator token. Exits 1 when there is no good version to go back to.
    ///
    /// Examples:
    ///   deploylite rollback app/production                the previous good version
    ///   deploylite rollback app/production --to 1a2b3c4   that one (it must have succeeded)
    #[command(verbatim_doc_comment)]
    Rollback {
        #[arg(value_name = "REPO/ENV")]
        target: String,
        /// A version that deployed successfully to this environment before.
        #[arg(long, value_name = "SHA")]
        to: Option<String>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Pin an environment at its current version: automation keeps recording desired versions
    /// but deploys none until `deploylite release`. Waiting deployments show
    /// `hold: pinned to ... by ...` as their reason. Needs an operator token.
    ///
    /// Example:
    ///   deploylite hold app/production
    #[command(verbatim_doc_comment)]
    Hold {
        #[arg(value_name = "REPO/ENV")]
        target: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Release a held environment: automation deploys its desired version again.
    /// Needs an operator token.
    ///
    /// Example:
    ///   deploylite release app/production
    #[command(verbatim_doc_comment)]
    Release {
        #[arg(value_name = "REPO/ENV")]
        target: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Manage API tokens (admin token needed).
    ///
    /// Roles: viewer (read runs, logs, runners), operator (also cancel and approve), admin (also
    /// runners, tokens and the audit log). The first start of a daemon writes an admin token to
    /// DATA_DIR/admin.token (mode 0600).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Show the audit log: every state-changing API call, who made it and how it ended (admin).
    Audit {
        #[command(flatten)]
        server: ServerArg,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Run a runner agent: take stages from a DeployLite server and run them here.
    ///
    /// The first start registers the runner with a registration token (one of the server's
    /// `runners.registration_tokens`) and keeps the credential it receives in --state-dir;
    /// later starts reuse it. Stages whose `runs_on` labels are all among --labels come here.
    /// SIGTERM: no new work; running stages get --grace to finish, the rest is handed back.
    Runner(RunnerArgs),
    /// Manage the runners of a running daemon.
    Runners {
        #[command(subcommand)]
        command: RunnersCommand,
    },
    /// Rego policy gates: run policy unit tests, or evaluate a gate for an input document.
    Policy {
        #[command(subcommand)]
        command: policy_cli::PolicyCommand,
    },
}

#[derive(Subcommand)]
enum EnvCommand {
    /// Every environment: sync, health, current and desired versions, hold.
    List {
        /// Only this repository's.
        #[arg(long, value_name = "REPO")]
        repo: Option<String>,
        #[command(flatten)]
        server: ServerArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One environment: where it stands and its newest deployments, with what each waiting
    /// one waits for (`approval: 0 of 1`, `hold: pinned to ...`, `requires: ci running ...`).
    Status {
        #[arg(value_name = "REPO/ENV")]
        target: String,
        #[command(flatten)]
        server: ServerArg,
        #[arg(long)]
        json: bool,
    },
    /// An environment's deployments, newest first: versions, who or what triggered each, its
    /// runs, and its errors.
    History {
        #[arg(value_name = "REPO/ENV")]
        target: String,
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=1000))]
        limit: i64,
        #[command(flatten)]
        server: ServerArg,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it (only this once) on stdout.
    Create {
        /// viewer, operator or admin.
        #[arg(long, value_name = "ROLE")]
        role: String,
        /// A unique name (letters, digits, `-`, `_`, `.`), shown in the audit log.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Lifetime, e.g. 30d or 12h [default: until revoked].
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Revoke a token at once.
    Revoke {
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List tokens: names, roles, expiry (never their values).
    List {
        #[command(flatten)]
        server: ServerArg,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RunnersCommand {
    /// Registered runners: labels, executor, capacity, stages running, online or offline.
    List {
        #[command(flatten)]
        server: ServerArg,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a runner's credential at once; its running stages go to other runners.
    Revoke {
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(Args)]
pub struct RunnerArgs {
    #[command(flatten)]
    server: ServerUrl,
    /// Registration token, needed only for the first start. Prefer --token-file or
    /// DEPLOYLITE_RUNNER_TOKEN: command lines are visible to other users of the machine.
    #[arg(
        long,
        env = "DEPLOYLITE_RUNNER_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    /// A file holding the registration token.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// This runner's name (unique per server) [default: the host name].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Labels offered to stages' `runs_on`, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    labels: Vec<String>,
    /// Stages run at once.
    #[arg(long, default_value_t = 1, value_name = "N")]
    capacity: usize,
    /// Where stages run: local (processes here), docker (a container per step), or kubernetes
    /// (a Pod per stage).
    #[arg(long, value_enum, default_value = "local")]
    executor: ExecutorKind,
    /// Workspaces of running stages [default: <temp dir>/deploylite-runner-<name>].
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Where the runner keeps its credential [default: $XDG_STATE_HOME/deploylite or
    /// ~/.local/state/deploylite].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// After SIGTERM, how long running stages may take to finish before they are handed back.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    grace: String,
    /// Register again with the registration token, replacing the stored credential (e.g. after
    /// the server's data was reset and it refuses the old one).
    #[arg(long)]
    reregister: bool,
    #[command(flatten)]
    image: IgnoreImage,
    /// Export stage spans to this OTLP/HTTP collector, as children of the daemon's spans
    /// (the daemon's tracing.otlp_endpoint).
    #[arg(long, env = "DEPLOYLITE_TRACING__OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
}

/// What the local executor does with a stage's `image:`, which it cannot honour.
#[derive(Args)]
struct IgnoreImage {
    /// Run stages that name an `image:` on this machine anyway, with a warning in their log,
    /// instead of failing them (the local executor runs no containers).
    #[arg(
        long,
        env = "DEPLOYLITE_LOCAL_RUNNER__IGNORE_IMAGE",
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::SetTrue
    )]
    ignore_image: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExecutorKind {
    Local,
    Docker,
    Kubernetes,
}

/// The daemon a runner works for (it authenticates with its own credential).
#[derive(Args)]
struct ServerUrl {
    /// The daemon's URL; http:// is assumed without a scheme (localhost:8080).
    #[arg(
        long,
        env = "DEPLOYLITE_SERVER",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL",
        value_parser = server_url::parse_server_url
    )]
    server: String,
}

/// The daemon a client command talks to, and the API token it presents.
#[derive(Args)]
struct ServerArg {
    #[command(flatten)]
    url: ServerUrl,
    /// A file holding the API token [default: DEPLOYLITE_TOKEN, else, for a daemon on this
    /// machine, the data dir's admin.token].
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

impl ServerArg {
    /// The server `validate` and `plan` may ask about runners.
    fn for_warnings(&self) -> validate::Server<'_> {
        validate::Server {
            url: &self.url.server,
            token_file: self.token_file.as_deref(),
        }
    }

    fn client(&self) -> anyhow::Result<client::Client> {
        let token = client::find_token(&self.url.server, self.token_file.as_deref())?;
        client::Client::new(&self.url.server, token)
    }
}

#[derive(Args)]
pub struct ServeArgs {
    /// The YAML config file (also DEPLOYLITE_CONFIG).
    #[arg(long, short, env = "DEPLOYLITE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address of the HTTP API and health check: IP:PORT or HOST:PORT (a host name is resolved
    /// and every address it resolves to is listened on) [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Where the database, logs, workspaces and mirrors live [default: ./.deploylite-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// sqlite://PATH or postgres://USER@HOST/DB [default: SQLite in the data dir].
    /// Prefer DEPLOYLITE_DATABASE_URL for URLs that hold a password.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Stages running at once over all runs [default: number of CPUs].
    #[arg(long, value_name = "N")]
    max_parallel_stages: Option<usize>,
    /// A Rego policy bundle directory (repeat for more); replaces `policy.bundles`.
    #[arg(long = "policy-bundle", value_name = "DIR")]
    policy_bundles: Vec<PathBuf>,
    /// Also serve GET /metrics on this address, without the API's authentication
    /// (metrics.listen) [default: only on the API listener].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS stack, chosen once: rustls over aws-lc-rs. Installing it explicitly keeps a
    // dependency that enables another provider from making rustls panic at first use.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::serve(args).await.map(|()| ExitCode::SUCCESS),
            Command::Validate { paths, server } => {
                validate::validate(paths, server.for_warnings()).await
            }
            Command::Plan {
                repo,
                git_ref,
                server,
            } => plan::plan(&repo, &git_ref, server.for_warnings()).await,
            Command::Run {
                repo,
                pipeline,
                max_parallel_stages,
                in_place,
                image,
            } => {
                let options = local_run::RunOptions {
                    pipeline: pipeline.as_deref(),
                    max_parallel: max_parallel_stages,
                    in_place,
                    ignore_image: image.ignore_image,
                };
                local_run::run(&repo, options).await
            }
            Command::Status {
                run,
                server,
                repo,
                pipeline,
                status,
                limit,
                json,
            } => {
                let query = client::ListQuery {
                    repo,
                    pipeline,
                    status,
                    limit,
                };
                client::status(&server.client()?, run, query, json).await
            }
            Command::Logs {
                run,
                stage,
                follow,
                attempt,
                server,
            } => {
                let request = logs::LogsRequest {
                    run: run.into(),
                    stage,
                    follow,
                    attempt: attempt.map(Into::into),
                };
                logs::logs(&server.client()?, request).await
            }
            Command::Cancel { run, server } => client::cancel(&server.client()?, run).await,
            Command::Approve { id, server } => {
                client::environments::approve(&server.client()?, id).await
            }
            Command::Env { command } => env(command).await,
            Command::Deploy {
                target,
                version,
                server,
            } => {
                let action = client::environments::Action::Deploy { version };
                client::environments::act(&server.client()?, &target, action).await
            }
            Command::Rollback { target, to, server } => {
                let action = client::environments::Action::Rollback { to };
                client::environments::act(&server.client()?, &target, action).await
            }
            Command::Hold { target, server } => {
                let action = client::environments::Action::Hold;
                client::environments::act(&server.client()?, &target, action).await
            }
            Command::Release { target, server } => {
                let action = client::environments::Action::Release;
                client::environments::act(&server.client()?, &target, action).await
            }
            Command::Token { command } => token(command).await,
            Command::Audit {
                server,
                limit,
                json,
            } => client::audit(&server.client()?, limit, json).await,
            Command::Runner(args) => runner(args).await,
            Command::Runners {
                command: RunnersCommand::List { server, json },
            } => client::runners(&server.client()?, json).await,
            Command::Runners {
                command: RunnersCommand::Revoke { name, server },
            } => client::revoke(&server.client()?, &name).await,
            Command::Policy { command } => policy_cli::run(command).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn env(command: EnvCommand) -> anyhow::Result<ExitCode> {
    use client::environments as envs;
    match command {
        EnvCommand::List { repo, server, json } => envs::list(&server.client()?, repo, json).await,
        EnvCommand::Status {
            target,
            server,
            json,
        } => envs::status(&server.client()?, &target, json).await,
        EnvCommand::History {
            target,
            limit,
            server,
            json,
        } => envs::history(&server.client()?, &target, limit, json).await,
    }
}

async fn token(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create {
            role,
            name,
            expires_in,
            server,
        } => {
            role.parse::<deploylite_reconciler::store::Role>()
                .map_err(|e| anyhow::anyhow!("--role: {e}"))?;
            deploylite_server::valid_token_name(&name)
                .map_err(|e| anyhow::anyhow!("--name: {e}"))?;
            let expires_in = expires_in
                .map(|d| deploylite_pipeline::duration::parse_duration(&d))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--expires-in: {e}"))?;
            client::token_create(&server.client()?, &name, &role, expires_in).await
        }
        TokenCommand::Revoke { name, server } => {
            client::token_revoke(&server.client()?, &name).await
        }
        TokenCommand::List { server, json } => client::token_list(&server.client()?, json).await,
    }
}

async fn runner(args: RunnerArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    use deploylite_runner::agent;
    let trace_guard = serve::init_tracing(
        config::LogFormat::Text,
        args.otlp_endpoint.as_deref(),
        "deploylite-runner",
    )?;
    let name = match args.name {
        Some(name) => name,
        None => std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .context("cannot tell the host name: give --name")?,
    };
    let token_file = args.token_file.clone();
    let token = match (args.token, args.token_file) {
        (Some(t), _) => Some(t),
        (None, Some(path)) => Some(
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read --token-file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let grace = deploylite_pipeline::duration::parse_duration(&args.grace)
        .map_err(|e| anyhow::anyhow!("--grace: {e}"))?;
    let state_dir = args.state_dir.unwrap_or_else(|| {
        std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(std::env::temp_dir)
            .join("deploylite")
    });
    let work_dir = args
        .work_dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("deploylite-runner-{name}")));
    if args.capacity == 0 {
        anyhow::bail!("--capacity must be at least 1");
    }
    let (executor_name, executor, needs_workspace): (
        &str,
        std::sync::Arc<dyn deploylite_runner::Executor>,
        bool,
    ) = match args.executor {
        ExecutorKind::Local => {
            executors::local(
                &work_dir,
                &state_dir,
                token_file.as_deref(),
                args.image.ignore_image,
            )
            .await?
        }
        ExecutorKind::Docker => executors::docker(&name).await?,
        ExecutorKind::Kubernetes => executors::kubernetes().await?,
    };
    isolation::harden_process();
    isolation::warn_if_readable_by_others(&[agent::credential_path(&state_dir, &name)]);
    let shutdown = deploylite_runner::CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            serve::wait_for_signal().await;
            shutdown.cancel();
        }
    });
    let config = agent::AgentConfig {
        server: args.server.server,
        registration_token: token,
        name,
        labels: args.labels,
        capacity: args.capacity,
        executor_name: executor_name.to_string(),
        executor,
        needs_workspace,
        work_dir,
        state_dir,
        grace,
        reregister: args.reregister,
    };
    let result = agent::run(config, shutdown).await;
    // Sends the stage spans still buffered (blocking: off the runtime's threads).
    let _ = tokio::task::spawn_blocking(move || trace_guard.shutdown()).await;
    result?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        // Catches clashing flags (two `--token-file`s in one command) before a user does.
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
