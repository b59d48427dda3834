//! `deploylite serve`: wires the store, the watcher, the scheduler, the HTTP API and the
//! janitor together, and shuts them down in order on SIGINT/SIGTERM.

mod data_dir_lock;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use deploylite_policy::Policies;
use deploylite_reconciler::changes::ChangeFeed;
use deploylite_reconciler::paths::{sqlite_file, DataDir};
use deploylite_reconciler::scheduler::{Scheduler, SchedulerConfig};
use deploylite_reconciler::store::{now_ms, redact, DatabaseLock, Store, StoreError};
use deploylite_reconciler::watcher::{Repos, Watcher};
use deploylite_runner::{CancellationToken, LocalExecutor, Sandbox, SandboxConfig};
use deploylite_telemetry::trace::{TraceConfig, TraceGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, ConfigLayer, ConfigProblems, EnvLayer, LogFormat};
use crate::ServeArgs;
use deploylite_server::auth::{hash_token, new_token};
use deploylite_server::page::runners::LocalRunner;
use deploylite_server::page::session::SessionKeys;
use deploylite_server::page::PageState;
use deploylite_server::AuthConfig;

/// The config, the files it took secrets from (the config file itself when it holds any, and
/// the `*_file` / `*_path` files it names), and warnings for the log (unknown `DEPLOYLITE_*`
/// variables). Every problem of the file, the variables and the merged result is reported at
/// once.
pub fn load_config_and_secret_files(
    args: &ServeArgs,
) -> Result<(Config, Vec<PathBuf>, Vec<String>)> {
    let mut problems = Vec::new();
    let file = match &args.config {
        Some(path) => ConfigLayer::from_file(path).unwrap_or_else(|e| {
            problems.extend(e.0);
            ConfigLayer::default()
        }),
        None => ConfigLayer::default(),
    };
    let mut secret_files: Vec<PathBuf> = args
        .config
        .iter()
        .filter(|_| holds_inline_secrets(&file))
        .cloned()
        .collect();
    let EnvLayer {
        layer: env,
        warnings,
    } = ConfigLayer::from_env(std::env::vars()).unwrap_or_else(|e| {
        problems.extend(e.0);
        EnvLayer {
            layer: ConfigLayer::default(),
            warnings: Vec::new(),
        }
    });
    let flags = ConfigLayer {
        listen: args.listen.clone(),
        data_dir: args.data_dir.clone(),
        database_url: args.database_url.clone(),
        max_parallel_stages: args.max_parallel_stages,
        policy: (!args.policy_bundles.is_empty()).then(|| crate::config::PolicyLayer {
            bundles: Some(args.policy_bundles.clone()),
            eval_timeout: None,
        }),
        metrics: args
            .metrics_listen
            .clone()
            .map(|listen| crate::config::MetricsLayer {
                listen: Some(listen),
            }),
        ..Default::default()
    };
    let merged = ConfigLayer::default().merge(file).merge(env).merge(flags);
    secret_files.extend(merged.secret_files());
    // The layers that had problems count as empty: what the rest says is checked too, so that
    // one start reports everything.
    match merged.finish() {
        Ok(config) if problems.is_empty() => Ok((config, secret_files, warnings)),
        Ok(_) => Err(ConfigProblems(problems).into()),
        Err(more) => {
            problems.extend(more.0);
            Err(ConfigProblems(problems).into())
        }
    }
}

fn holds_inline_secrets(layer: &ConfigLayer) -> bool {
    let forges = layer.forges.as_ref();
    let github = forges.and_then(|f| f.github.as_ref());
    let gitlab = forges.and_then(|f| f.gitlab.as_ref());
    github.is_some_and(|g| g.token.is_some() || g.webhook_secret.is_some())
        || gitlab.is_some_and(|g| g.token.is_some() || g.webhook_secret.is_some())
        || layer
            .runners
            .as_ref()
            .is_some_and(|r| r.registration_tokens.is_some())
        // postgres://user:password@host/...
        || layer
            .database_url
            .as_deref()
            .and_then(|u| u.split_once("://"))
            .and_then(|(_, rest)| rest.split_once('@'))
            .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// Local stages: in a sandbox that keeps them from the data dir (their workspaces aside), the
/// config file and the secret files.
async fn local_executor(
    config: &Config,
    data: &DataDir,
    config_file: Option<&PathBuf>,
    secret_files: &[PathBuf],
) -> Result<LocalExecutor> {
    if !config.local_runner_enabled {
        return Ok(LocalExecutor::default());
    }
    let mut protected = vec![data.root().to_path_buf()];
    protected.extend(config_file.cloned());
    protected.extend(secret_files.iter().cloned());
    protected.extend(sqlite_file(&config.database_url));
    let sandbox = Sandbox::for_stages(&SandboxConfig {
        user: config.local_runner_user.clone(),
        protected,
        workspaces: data.workspaces(),
    })
    .await
    .context("cannot isolate local stages (local_runner.user; docs/local-isolation.md)")?;
    tracing::info!(isolation = %sandbox.describe(), ignore_image = config.local_runner_ignore_image, "local stages");
    Ok(LocalExecutor::sandboxed(sandbox).ignoring_image(config.local_runner_ignore_image))
}

fn status_page_state(
    config: &Config,
    store: &Store,
    data: &DataDir,
    scheduler: &Scheduler,
    watcher: &Arc<Watcher>,
    changes: &Arc<ChangeFeed>,
    auth: &Arc<AuthConfig>,
) -> PageState {
    let https = config
        .public_url
        .as_deref()
        .is_some_and(|u| u.to_ascii_lowercase().starts_with("https://"));
    PageState {
        store: store.clone(),
        data: data.clone(),
        scheduler: scheduler.waker(),
        watcher: Some(watcher.clone()),
        changes: changes.clone(),
        auth: auth.clone(),
        sessions: Arc::new(SessionKeys::new(https)),
        runner_offline_after: config.lease_ttl.max(Duration::from_secs(30)) * 2,
        local_runner: config.local_runner_enabled.then(|| LocalRunner {
            labels: config.local_runner_labels.clone(),
            capacity: config.max_parallel_stages,
        }),
    }
}

fn scheduler_config(config: &Config) -> SchedulerConfig {
    let mut scheduler = SchedulerConfig::local(
        config.max_parallel_stages,
        config.local_runner_labels.clone(),
    );
    if !config.local_runner_enabled {
        scheduler.local = None;
    }
    scheduler.lease_ttl = config.lease_ttl;
    scheduler.untrusted_labels = config.untrusted_labels.clone();
    scheduler.log_bytes = config.log_bytes;
    scheduler.runner_offline_after = config.lease_ttl.max(Duration::from_secs(30)) * 2;
    // Remote executors that fetch the commit themselves (Kubernetes) clone from here; a local
    // path only works for runners on this machine.
    scheduler.source_urls = config
        .repos
        .iter()
        .map(|r| (r.name.clone(), r.url.clone()))
        .collect();
    scheduler
}

/// Logs on stderr (text or JSON), and spans to `otlp_endpoint` when given; the guard flushes
/// them at the end.
pub fn init_tracing(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
    service_name: &'static str,
) -> Result<TraceGuard> {
    let filter = EnvFilter::try_from_env("DEPLOYLITE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        // octocrab logs every non-2xx answer at error level, expected ones included; the
        // reporter logs what matters itself.
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,octocrab=off"));
    Ok(deploylite_telemetry::trace::init(TraceConfig {
        json: format == LogFormat::Json,
        ansi: crate::text::stderr_colour(),
        filter,
        otlp_endpoint: otlp_endpoint.map(str::to_string),
        service_name,
    })?)
}

/// The operator's policy bundles, compiled once (off the runtime). A bundle that does not
/// load stops the start: running without the gates the operator asked for would be worse.
async fn load_policies(config: &Config) -> Result<Arc<Policies>> {
    let (bundles, limit) = (config.policy_bundles.clone(), config.policy_eval_timeout);
    let policies = tokio::task::spawn_blocking(move || Policies::from_bundles(&bundles, limit))
        .await
        .context("loading the policy bundles stopped")?
        .context("cannot load policy.bundles")?;
    if !config.policy_bundles.is_empty() {
        tracing::info!(
            bundles = ?config.policy_bundles,
            revision = %policies.operator().revision_sha256(),
            "policy bundles loaded"
        );
    }
    Ok(Arc::new(policies))
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    let (config, secret_files, warnings) = load_config_and_secret_files(&args)?;
    let trace_guard = init_tracing(
        config.log_format,
        config.otlp_endpoint.as_deref(),
        "deploylite",
    )?;
    let result = serve_configured(args, config, secret_files, warnings).await;
    // Sends the spans still buffered (blocking: off the runtime's threads).
    let _ = tokio::task::spawn_blocking(move || trace_guard.shutdown()).await;
    result
}

async fn serve_configured(
    args: ServeArgs,
    config: Config,
    secret_files: Vec<PathBuf>,
    warnings: Vec<String>,
) -> Result<()> {
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    crate::isolation::harden_process();
    crate::isolation::warn_if_readable_by_others(&secret_files);
    let policies = load_policies(&config).await?;
    let data = DataDir::new(&config.data_dir);
    // Before anything reads or writes the data dir or the database: one daemon each.
    let root = data.root().to_path_buf();
    let data_dir_lock = tokio::task::spawn_blocking(move || data_dir_lock::acquire(&root))
        .await
        .context("locking the data dir stopped")??;
    let database_lock = DatabaseLock::acquire(&config.database_url, &session_name().await)
        .await
        .map_err(|e| match e {
            StoreError::DatabaseLocked { .. } => anyhow::Error::from(e),
            other => anyhow::Error::from(other).context("cannot lock the database"),
        })?;
    let layout = data.clone();
    let database = sqlite_file(&config.database_url);
    tokio::task::spawn_blocking(move || layout.create_private(database.as_deref()))
        .await
        .context("creating the data dir stopped")?
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let executor = local_executor(&config, &data, args.config.as_ref(), &secret_files).await?;
    let store = Store::connect(&config.database_url, config.sqlite_synchronous)
        .await
        .with_context(|| format!("cannot open the store at {}", redact(&config.database_url)))?;

    if let Some(path) = write_initial_admin_token(&store, &data).await? {
        tracing::info!(path = %path.display(), "first start: an admin API token was written (mode 0600); `deploylite token create` makes more");
    }

    let repos = Arc::new(Repos::new(config.repos.clone(), &data));
    let scheduler = Scheduler::new(
        store.clone(),
        data.clone(),
        scheduler_config(&config),
        Arc::new(executor),
        repos.clone(),
    );
    let recovered = scheduler
        .recover()
        .await
        .context("cannot recover interrupted stages")?;
    let environments = deploylite_reconciler::environments::Environments::new(
        store.clone(),
        repos.clone(),
        policies.clone(),
        scheduler.waker(),
    );
    let watcher = Watcher::with_policies(store.clone(), repos.clone(), scheduler.waker(), policies);
    watcher.notify_on_commit(environments.waker());
    let forges = Arc::new(config.forges.clone());
    // Open pull requests are watched state: every poll lists them from the forge.
    watcher.watch_pull_requests(
        deploylite_forge::pulls::ForgePullRequests::new(forges.clone(), Duration::from_secs(30)),
        deploylite_reconciler::pulls::DEFAULT_CLOSE_GRACE,
    );

    let metrics = deploylite_server::metrics::MetricsSource {
        store: store.clone(),
        data_dir: data.root().to_path_buf(),
        local_capacity: config
            .local_runner_enabled
            .then_some(config.max_parallel_stages),
        runner_offline_after: scheduler_config(&config).runner_offline_after,
    };
    let metrics_listening = match &config.metrics_listen {
        Some(addr) => Some(
            crate::config::listen::bind(addr, None)
                .await
                .context("metrics.listen")?,
        ),
        None => None,
    };
    let listening =
        crate::config::listen::bind(&config.listen, config.public_url.as_deref()).await?;
    if listening.hosts.is_empty() {
        tracing::warn!(listen = %config.listen, "listening on every address without `public_url`: requests naming any Host are taken; set public_url to refuse DNS-rebound ones");
    }
    let anonymous_read = config.anonymous_read.unwrap_or(listening.all_loopback());
    let auth = Arc::new(AuthConfig {
        anonymous_read,
        hosts: listening.hosts.clone(),
    });
    // The status page's live updates: the scheduler's transitions, numbered and remembered.
    let changes = ChangeFeed::new();
    tokio::spawn(changes.clone().follow(scheduler.subscribe()));
    tokio::spawn(changes.clone().follow_deployments(environments.subscribe()));
    let status_page = deploylite_server::page::routes(status_page_state(
        &config, &store, &data, &scheduler, &watcher, &changes, &auth,
    ));
    let app = deploylite_server::app(
        deploylite_server::AppState {
            store: store.clone(),
            data: data.clone(),
            scheduler: scheduler.waker(),
            watcher: Some(watcher.clone()),
            forges: forges.clone(),
            auth,
            environments: Some(environments.clone()),
        },
        deploylite_server::runners::routes(deploylite_server::runners::RunnerState {
            scheduler: scheduler.clone(),
            repos: repos.clone(),
            registration_tokens: Arc::new(config.registration_tokens.clone()),
            poll_wait: Duration::from_secs(20),
            offline_after: config.lease_ttl.max(Duration::from_secs(30)) * 2,
        })
        .merge(deploylite_server::metrics::routes(metrics.clone()))
        .merge(status_page),
    );

    tracing::info!(
        listen = %config.listen,
        bound = %listening.describe(),
        data_dir = %config.data_dir.display(),
        database = %redact(&config.database_url),
        repos = config.repos.len(),
        max_parallel_stages = config.max_parallel_stages,
        anonymous_read,
        recovered_attempts = recovered,
        lock = %data_dir_lock.path().display(),
        metrics_listen = config.metrics_listen.as_ref().map(|m| m.to_string()),
        otlp_endpoint = config.otlp_endpoint.as_deref(),
        "deploylite is running"
    );

    let shutdown = CancellationToken::new();
    let recorder_task = tokio::spawn(deploylite_reconciler::observe::record_events(
        store.clone(),
        scheduler.subscribe(),
        shutdown.clone(),
    ));
    let scheduler_task = tokio::spawn(scheduler.clone().run(shutdown.clone()));
    let watcher_task = tokio::spawn(watcher.run(shutdown.clone()));
    let environments_task = tokio::spawn(
        environments
            .clone()
            .run(scheduler.subscribe(), shutdown.clone()),
    );
    let janitor_task = tokio::spawn(janitor(
        store.clone(),
        data.clone(),
        config.clone(),
        shutdown.clone(),
    ));
    // Reports go out on their own task: a forge outage never slows the runs.
    let reporter = deploylite_forge::Reporter::new(store.clone(), data.clone(), forges.clone());
    let reporter_task = tokio::spawn(reporter.run(shutdown.clone()));
    // One server per address listened on (`localhost`: 127.0.0.1 and ::1).
    let mut servers = tokio::task::JoinSet::new();
    // `metrics.listen`: /metrics alone, for a scraper on a private network.
    for listener in metrics_listening
        .map(|l| l.into_listeners())
        .unwrap_or_default()
    {
        let (app, stop) = (
            deploylite_server::metrics::routes(metrics.clone()),
            shutdown.clone(),
        );
        servers.spawn(async move {
            deploylite_server::serve_router(listener, app, async move { stop.cancelled().await })
                .await
        });
    }
    for listener in listening.into_listeners() {
        let (app, stop) = (app.clone(), shutdown.clone());
        servers.spawn(async move {
            deploylite_server::serve_router(listener, app, async move { stop.cancelled().await })
                .await
        });
    }
    let server = tokio::spawn(async move {
        let mut result = Ok(());
        while let Some(ended) = servers.join_next().await {
            let ended = ended.unwrap_or_else(|e| Err(std::io::Error::other(e)));
            if result.is_ok() {
                result = ended;
            }
        }
        result
    });

    let database_lock = watch_database_lock(database_lock);
    tokio::pin!(database_lock);
    let lock_lost = tokio::select! {
        _ = wait_for_signal() => None,
        lost = &mut database_lock => Some(lost),
    };
    if let Some(error) = &lock_lost {
        tracing::error!(error = %format!("{error:#}"), "stopping: another daemon may be running the stages now");
    }
    tracing::info!("shutting down: running stages are stopped and will run again after a restart");
    shutdown.cancel();
    changes.close();
    let _ = watcher_task.await;
    let _ = environments_task.await;
    let _ = scheduler_task.await;
    let _ = janitor_task.await;
    let _ = reporter_task.await;
    let _ = recorder_task.await;
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "HTTP server error"),
        Err(e) => tracing::error!(error = %e, "HTTP server task failed"),
    }
    store.close().await;
    drop(data_dir_lock);
    match lock_lost {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// How this daemon's database session names itself, for a second daemon that finds the
/// database locked (pg_stat_activity's application_name: at most 63 bytes).
async fn session_name() -> String {
    let host = tokio::fs::read_to_string("/proc/sys/kernel/hostname")
        .await
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let mut name = format!("deploylite serve pid {} on {host}", std::process::id());
    while name.len() > 63 {
        name.pop();
    }
    name.trim_end().to_string()
}

/// How often the database lock's session is checked.
const DATABASE_LOCK_CHECK: Duration = Duration::from_secs(10);

/// Keeps the database lock's session alive; completes only if the lock was lost to another
/// daemon (after a lost connection), which must stop this one.
async fn watch_database_lock(lock: Option<DatabaseLock>) -> anyhow::Error {
    let Some(mut lock) = lock else {
        return std::future::pending().await;
    };
    let mut interval = tokio::time::interval(DATABASE_LOCK_CHECK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match lock.check().await {
            Ok(()) => {}
            Err(error @ StoreError::DatabaseLocked { .. }) => {
                return anyhow::Error::from(error).context("the database lock was lost");
            }
            Err(error) => {
                tracing::warn!(%error, "cannot check the database lock; trying again");
            }
        }
    }
}

/// Where the initial admin token is written, as Argo CD writes its initial admin secret.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// On the very first start (no token was ever created), creates the token `admin` and writes
/// it to `data_dir/admin.token`, readable by this user only. Later starts leave it alone, so a
/// deleted file stays deleted and a revoked token stays revoked.
async fn write_initial_admin_token(
    store: &Store,
    data: &DataDir,
) -> Result<Option<std::path::PathBuf>> {
    if store
        .has_tokens()
        .await
        .context("cannot read the API tokens")?
    {
        return Ok(None);
    }
    let token = new_token();
    let path = data.root().join(ADMIN_TOKEN_FILE);
    let (file, text) = (path.clone(), format!("{token}\n"));
    tokio::task::spawn_blocking(move || write_private(&file, text.as_bytes()))
        .await
        .context("cannot write the admin token")?
        .with_context(|| format!("cannot write the admin token to {}", path.display()))?;
    let created = store
        .create_token(
            "admin",
            &hash_token(&token),
            deploylite_reconciler::store::Role::Admin,
            "deploylite serve (first start)",
            None,
        )
        .await
        .context("cannot record the admin token")?;
    if !created {
        // Another daemon on the same database got there first; its file is the one.
        let _ = tokio::fs::remove_file(&path).await;
        return Ok(None);
    }
    Ok(Some(path))
}

/// Writes a file only its owner can read (mode 0600 from the moment it exists).
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

pub async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Deletes workspaces, logs and webhook delivery records past their retention.
async fn janitor(store: Store, data: DataDir, config: Config, shutdown: CancellationToken) {
    // Often enough that a short retention is honoured closely, never busier than once a second.
    let period = (config.workspace_retention.min(config.log_retention) / 4)
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut interval = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let now = now_ms();
        let ws_before =
            now - i64::try_from(config.workspace_retention.as_millis()).unwrap_or(i64::MAX);
        match store.workspaces_to_clean(ws_before).await {
            Ok(list) => {
                for (run_id, path) in list {
                    let path = std::path::PathBuf::from(path);
                    // Only directories we made: `deploylite run` records the user's working copy.
                    if path.starts_with(data.workspaces()) {
                        if let Err(e) = tokio::fs::remove_dir_all(&path).await {
                            if e.kind() != std::io::ErrorKind::NotFound {
                                tracing::warn!(run_id = run_id.get(), path = %path.display(), error = %e, "cannot delete a workspace");
                                continue;
                            }
                        }
                    }
                    if let Err(error) = store.mark_workspace_cleaned(run_id).await {
                        tracing::warn!(run_id = run_id.get(), %error, "cannot record a cleaned workspace");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "janitor cannot list workspaces"),
        }
        let logs_before = now - i64::try_from(config.log_retention.as_millis()).unwrap_or(i64::MAX);
        match store.logs_to_clean(logs_before).await {
            Ok(ids) => {
                for id in ids {
                    let dir = data.run_logs(id);
                    if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            tracing::warn!(run_id = id.get(), error = %e, "cannot delete logs");
                            continue;
                        }
                    }
                    if let Err(error) = store.mark_logs_cleaned(id).await {
                        tracing::warn!(run_id = id.get(), %error, "cannot record cleaned logs");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "janitor cannot list old runs"),
        }
        let deliveries_before =
            now - i64::try_from(WEBHOOK_DELIVERY_RETENTION.as_millis()).unwrap_or(i64::MAX);
        match store.prune_deliveries(deliveries_before).await {
            Ok(0) => {}
            Ok(pruned) => tracing::debug!(pruned, "janitor pruned old webhook delivery records"),
            Err(error) => tracing::warn!(%error, "janitor cannot prune webhook deliveries"),
        }
    }
}

/// How long a webhook delivery id is remembered. It only has to outlast a forge's redelivery
/// of it (GitHub's and GitLab's retries come within hours; "Redeliver" by hand within days).
const WEBHOOK_DELIVERY_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
