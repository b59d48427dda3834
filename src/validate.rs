//! `deploylite validate`: the pipeline front door, offline, plus warnings about runner labels
//! when a server can be asked.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use deploylite_pipeline::labels::unserved_stages;
use deploylite_pipeline::{check_pipeline_set, parse_pipeline_with_warnings, Diagnostic, Pipeline};

/// Where the pipelines of a `.deploylite` directory live.
const PIPELINES: &str = "pipelines";

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

/// Pipeline files named by the user: files as given, directories expanded (see
/// [`pipelines_dir`]).
pub fn pipeline_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    pipeline_files_and_dirs(paths).map(|(files, _)| files)
}

/// [`pipeline_files`], and the directories looked in.
fn pipeline_files_and_dirs(paths: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let defaults = [PathBuf::from(".")];
    let paths = if paths.is_empty() {
        &defaults[..]
    } else {
        paths
    };
    let mut files = Vec::new();
    let mut searched = Vec::new();
    for path in paths {
        if path.is_dir() {
            let dir = pipelines_dir(path);
            if dir.is_dir() {
                let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .with_context(|| format!("cannot read directory {}", dir.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml")
                    })
                    .collect();
                found.sort();
                files.extend(found);
            }
            searched.push(dir);
        } else if path.exists() {
            files.push(path.clone());
        } else {
            anyhow::bail!("{}: no such file or directory", path.display());
        }
    }
    Ok((files, searched))
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
        let problem = |message: String| Diagnostic {
            file: name.clone(),
            line: 1,
            col: 1,
            message,
        };
        match std::fs::read(file) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => {
                    let (parsed, warnings) = parse_pipeline_with_warnings(&name, &text);
                    loaded.warnings.extend(warnings);
                    match parsed {
                        Ok(p) => loaded.valid.push((name, p)),
                        Err(d) => loaded.problems.extend(d),
                    }
                }
                Err(_) => loaded
                    .problems
                    .push(problem("the file is not valid UTF-8".into())),
            },
            Err(e) => loaded
                .problems
                .push(problem(format!("cannot read the file: {e}"))),
        }
    }
    let set_problems = check_pipeline_set(loaded.valid.iter().map(|(f, p)| (f.as_str(), p)));
    loaded.problems.extend(set_problems);
    loaded
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
    let (files, searched) = tokio::task::spawn_blocking(move || pipeline_files_and_dirs(&paths))
        .await
        .context("validate task failed")??;
    if files.is_empty() {
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
    let order: Vec<String> = files.iter().map(|f| display_path(f)).collect();
    let mut loaded = tokio::task::spawn_blocking(move || load_all(&files))
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
        eprintln!("{} valid{warnings}", count(file_count, "pipeline file"));
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
