//! `deploylite validate`: the pipeline and environment front door, offline, plus warnings
//! about runner labels when a server can be asked.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use deploylite_pipeline::labels::unserved_stages;
use deploylite_pipeline::{
    check_environment_set, check_pipeline_set, parse_environment, parse_environment_with_warnings,
    parse_pipeline_with_warnings, Diagnostic, Environment, Pipeline,
};

/// Where the pipelines of a `.deploylite` directory live.
const PIPELINES: &str = "pipelines";
/// Where the environments of a `.deploylite` directory live, next to its pipelines.
const ENVIRONMENTS: &str = "environments";

/// The directory whose YAML files a directory argument means: `DIR/.deploylite/pipelines` for
/// a repository, `DIR/pipelines` for a `.deploylite` directory, else `DIR` itself.
fn pipelines_dir(dir: &Path) -> PathBuf {
    let nested = dir.join(".deploylite").join(PIPELINES);
    if nested.is_dir() {
        return nested;
    }
    // `.` or `..` name no directory by themselves: ask the file system.
    let named_deploylite = |p: &Path| p.file_name().is_some_and(|n| n == ".deploylite");
    if named_deploylite(dir) || dir.canonicalize().is_ok_and(|c| named_deploylite(&c)) {
        return dir.join(PIPELINES);
    }
    dir.to_path_buf()
}

/// Whether `p` (as written, or once resolved: `.` names no directory) is named `name`.
fn named(p: &Path, name: &str) -> bool {
    let is = |p: &Path| p.file_name().is_some_and(|n| n == name);
    is(p) || p.canonicalize().is_ok_and(|c| is(&c))
}

/// The environments directory that goes with a directory argument: `DIR/.deploylite/
/// environments` for a repository, `DIR/environments` for a `.deploylite` directory; none for
/// a directory of pipeline files.
fn environments_dir(dir: &Path) -> Option<PathBuf> {
    if dir.join(".deploylite").join(PIPELINES).is_dir()
        || dir.join(".deploylite").join(ENVIRONMENTS).is_dir()
    {
        return Some(dir.join(".deploylite").join(ENVIRONMENTS));
    }
    named(dir, ".deploylite").then(|| dir.join(ENVIRONMENTS))
}

/// The `*.yaml` and `*.yml` files of `dir`, sorted; none when it does not exist.
fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    found.sort();
    Ok(found)
}

/// Pipeline files named by the user: files as given, directories expanded (see
/// [`pipelines_dir`]).
pub fn pipeline_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    files_and_dirs(paths).map(|f| f.pipelines)
}

/// What the paths given to `validate` name.
struct Found {
    pipelines: Vec<PathBuf>,
    environments: Vec<PathBuf>,
    /// The directories looked in, for the message when nothing was found.
    searched: Vec<PathBuf>,
}

/// Pipeline and environment files named by the user, and the directories looked in. A
/// directory named `environments`, and a file in one, hold environment files.
fn files_and_dirs(paths: &[PathBuf]) -> Result<Found> {
    let defaults = [PathBuf::from(".")];
    let paths = if paths.is_empty() {
        &defaults[..]
    } else {
        paths
    };
    let mut found = Found {
        pipelines: Vec::new(),
        environments: Vec::new(),
        searched: Vec::new(),
    };
    for path in paths {
        if path.is_dir() {
            if named(path, ENVIRONMENTS) {
                found.environments.extend(yaml_files(path)?);
                found.searched.push(path.clone());
                continue;
            }
            let dir = pipelines_dir(path);
            found.pipelines.extend(yaml_files(&dir)?);
            found.searched.push(dir);
            if let Some(envs) = environments_dir(path) {
                found.environments.extend(yaml_files(&envs)?);
            }
        } else if path.exists() {
            let in_environments = path.parent().is_some_and(|p| {
                let p = if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                };
                named(p, ENVIRONMENTS)
            });
            if in_environments {
                found.environments.push(path.clone());
            } else {
                found.pipelines.push(path.clone());
            }
        } else {
            anyhow::bail!("{}: no such file or directory", path.display());
        }
    }
    Ok(found)
}

/// Every file parsed: the valid pipelines, the problems and the warnings.
pub struct Loaded {
    pub valid: Vec<(String, Pipeline)>,
    pub problems: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

/// Parses every file; returns the valid pipelines and every problem found.
pub fn load(files: &[PathBuf]) -> (Vec<(String, Pipeline)>, Vec<Diagnostic>) {
    let loaded = load_all(files);
    (loaded.valid, loaded.problems)
}

/// Parses every file; returns the valid pipelines and every problem and warning found.
pub fn load_all(files: &[PathBuf]) -> Loaded {
    let mut loaded = Loaded {
        valid: Vec::new(),
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    for file in files {
        let name = display_path(file);
        match read_text(file, &name) {
            Ok(text) => {
                let (parsed, warnings) = parse_pipeline_with_warnings(&name, &text);
                loaded.warnings.extend(warnings);
                match parsed {
                    Ok(p) => loaded.valid.push((name, p)),
                    Err(d) => loaded.problems.extend(d),
                }
            }
            Err(d) => loaded.problems.push(d),
        }
    }
    let set_problems = check_pipeline_set(loaded.valid.iter().map(|(f, p)| (f.as_str(), p)));
    loaded.problems.extend(set_problems);
    loaded
}

/// The file's text, or the problem (at 1:1) that it has none.
fn read_text(file: &Path, name: &str) -> std::result::Result<String, Diagnostic> {
    let problem = |message: String| Diagnostic {
        file: name.to_string(),
        line: 1,
        col: 1,
        message,
    };
    match std::fs::read(file) {
        Ok(bytes) => {
            String::from_utf8(bytes).map_err(|_| problem("the file is not valid UTF-8".into()))
        }
        Err(e) => Err(problem(format!("cannot read the file: {e}"))),
    }
}

/// One directory's environment files named by the user: the directory, the valid
/// environments (by display name), and every named file's display name.
type EnvironmentDir = (PathBuf, Vec<(String, Environment)>, Vec<String>);

/// Parses every environment file and checks each `.deploylite` directory's environments
/// together, against the pipelines of that directory: those in `loaded.valid` when they came
/// from there, else its `pipelines/` files parsed here for their names only. The other
/// environment files of a directory take part in the set check even when only some were named
/// (a `promote_from` naming one of them is not unknown), but only the named files' problems
/// are reported. Appends to `loaded`'s problems and warnings; returns how many files were read.
fn load_environments(files: &[PathBuf], loaded: &mut Loaded) -> usize {
    let mut groups: Vec<EnvironmentDir> = Vec::new();
    for file in files {
        let name = display_path(file);
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let group = match groups.iter().position(|(d, _, _)| *d == dir) {
            Some(i) => i,
            None => {
                groups.push((dir, Vec::new(), Vec::new()));
                groups.len() - 1
            }
        };
        groups[group].2.push(name.clone());
        let text = match read_text(file, &name) {
            Ok(text) => text,
            Err(d) => {
                loaded.problems.push(d);
                continue;
            }
        };
        let (parsed, warnings) = parse_environment_with_warnings(&name, &text);
        loaded.warnings.extend(warnings);
        match parsed {
            Ok(env) => groups[group].1.push((name, env)),
            Err(d) => loaded.problems.extend(d),
        }
    }
    for (dir, mut envs, named) in groups {
        // A file named without a directory is in the current one.
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let pipelines_dir = dir.join("..").join(PIPELINES);
        let mut names: Vec<String> = loaded
            .valid
            .iter()
            .filter(|(f, _)| {
                Path::new(f)
                    .parent()
                    .is_some_and(|p| same_path(p, &pipelines_dir))
            })
            .map(|(_, p)| p.name.clone())
            .collect();
        if names.is_empty() {
            let quiet = load_all(&yaml_files(&pipelines_dir).unwrap_or_default());
            names.extend(quiet.valid.into_iter().map(|(_, p)| p.name));
        }
        for other in yaml_files(&dir).unwrap_or_default() {
            let name = display_path(&other);
            if named.contains(&name) {
                continue;
            }
            if let Ok(Ok(env)) = read_text(&other, &name).map(|t| parse_environment(&name, &t)) {
                envs.push((name, env));
            }
        }
        // File order, as a whole directory would be read: the first file owns a name.
        envs.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let refs: Vec<(&str, &Environment)> = envs.iter().map(|(f, e)| (f.as_str(), e)).collect();
        loaded.problems.extend(
            check_environment_set(&refs, &names)
                .into_iter()
                .filter(|d| named.contains(&d.file)),
        );
    }
    files.len()
}

/// Whether two paths name the same directory (one may be written `./x`, the other `x`).
fn same_path(a: &Path, b: &Path) -> bool {
    let strip = |p: &Path| -> PathBuf {
        p.components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect()
    };
    strip(a) == strip(b)
        || a.canonicalize()
            .ok()
            .zip(b.canonicalize().ok())
            .is_some_and(|(a, b)| a == b)
}

fn display_path(p: &Path) -> String {
    match p.strip_prefix("./") {
        Ok(rest) if !rest.as_os_str().is_empty() => rest.display().to_string(),
        _ => p.display().to_string(),
    }
}

/// `1 problem`, `7 problems`.
pub fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Where `validate` and `plan` may ask which runners exist.
pub struct Server<'a> {
    pub url: &'a str,
    pub token_file: Option<&'a Path>,
}

/// Warnings about stages no runner known to `server` can take, for pipelines that have a
/// `runs_on` at all; nothing when the server cannot be asked.
pub async fn runner_warnings(
    server: &Server<'_>,
    pipelines: &[(String, Pipeline)],
) -> Vec<Diagnostic> {
    let wanted = pipelines
        .iter()
        .any(|(_, p)| p.stages.iter().any(|s| !s.runs_on.is_empty()));
    if !wanted {
        return Vec::new();
    }
    let Some(runners) = crate::known_runners::label_sets(server.url, server.token_file).await
    else {
        return Vec::new();
    };
    pipelines
        .iter()
        .flat_map(|(file, p)| unserved_stages(file, p, &runners, server.url))
        .collect()
}

pub async fn validate(paths: Vec<PathBuf>, server: Server<'_>) -> Result<ExitCode> {
    let Found {
        pipelines: files,
        environments,
        searched,
    } = tokio::task::spawn_blocking(move || files_and_dirs(&paths))
        .await
        .context("validate task failed")??;
    if files.is_empty() && environments.is_empty() {
        let dirs: Vec<String> = searched.iter().map(|d| display_path(d)).collect();
        eprintln!(
            "no pipeline files found: no *.yaml or *.yml in {} (pipelines live in .deploylite/pipelines/)",
            if dirs.is_empty() {
                "the paths given".to_string()
            } else {
                dirs.join(", ")
            }
        );
        return Ok(ExitCode::from(2));
    }
    let file_count = files.len();
    let order: Vec<String> = files
        .iter()
        .chain(&environments)
        .map(|f| display_path(f))
        .collect();
    let (mut loaded, environment_count) = tokio::task::spawn_blocking(move || {
        let mut loaded = load_all(&files);
        let n = load_environments(&environments, &mut loaded);
        (loaded, n)
    })
    .await
    .context("validate task failed")?;
    loaded
        .warnings
        .extend(runner_warnings(&server, &loaded.valid).await);

    // Problems and warnings together, file by file, each file's in position order.
    let file_index = |d: &Diagnostic| order.iter().position(|f| *f == d.file);
    let mut lines: Vec<(&Diagnostic, bool)> = loaded
        .problems
        .iter()
        .map(|d| (d, false))
        .chain(loaded.warnings.iter().map(|d| (d, true)))
        .collect();
    lines.sort_by_key(|(d, warning)| (file_index(d), d.line, d.col, *warning));
    for (d, warning) in &lines {
        if *warning {
            println!("{}", d.as_warning());
        } else {
            println!("{d}");
        }
    }
    let warnings = match loaded.warnings.len() {
        0 => String::new(),
        n => format!(", {}", count(n, "warning")),
    };
    if loaded.problems.is_empty() {
        let what = match (file_count, environment_count) {
            (p, 0) => count(p, "pipeline file"),
            (0, e) => count(e, "environment file"),
            (p, e) => format!(
                "{} and {}",
                count(p, "pipeline file"),
                count(e, "environment file")
            ),
        };
        eprintln!("{what} valid{warnings}");
        Ok(ExitCode::SUCCESS)
    } else {
        let mut with_problems: Vec<&str> =
            loaded.problems.iter().map(|d| d.file.as_str()).collect();
        with_problems.sort_unstable();
        with_problems.dedup();
        eprintln!(
            "{} in {}{warnings}",
            count(loaded.problems.len(), "problem"),
            count(with_problems.len(), "file")
        );
        Ok(ExitCode::from(1))
    }
}
