//! `deploylite validate`: the pipeline front door, offline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use deploylite_pipeline::{check_pipeline_set, parse_pipeline, Diagnostic, Pipeline};

/// Pipeline files named by the user: files as given, directories expanded.
pub fn pipeline_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let defaults = [PathBuf::from(".")];
    let paths = if paths.is_empty() {
        &defaults[..]
    } else {
        paths
    };
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let nested = path.join(".deploylite").join("pipelines");
            let dir = if nested.is_dir() {
                nested
            } else {
                path.clone()
            };
            let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
                .with_context(|| format!("cannot read directory {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect();
            found.sort();
            files.extend(found);
        } else if path.exists() {
            files.push(path.clone());
        } else {
            anyhow::bail!("{}: no such file or directory", path.display());
        }
    }
    Ok(files)
}

/// Parses every file; returns the valid pipelines and every problem found.
pub fn load(files: &[PathBuf]) -> (Vec<(String, Pipeline)>, Vec<Diagnostic>) {
    let mut valid = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        let name = display_path(file);
        match std::fs::read(file) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => match parse_pipeline(&name, &text) {
                    Ok(p) => valid.push((name, p)),
                    Err(d) => problems.extend(d),
                },
                Err(_) => problems.push(Diagnostic {
                    file: name,
                    line: 1,
                    col: 1,
                    message: "the file is not valid UTF-8".into(),
                }),
            },
            Err(e) => problems.push(Diagnostic {
                file: name,
                line: 1,
                col: 1,
                message: format!("cannot read the file: {e}"),
            }),
        }
    }
    problems.extend(check_pipeline_set(&valid));
    (valid, problems)
}

fn display_path(p: &Path) -> String {
    p.strip_prefix("./").unwrap_or(p).display().to_string()
}

pub fn validate(paths: &[PathBuf]) -> Result<ExitCode> {
    let files = pipeline_files(paths)?;
    if files.is_empty() {
        eprintln!("no pipeline files found (looked for .deploylite/pipelines/*.yaml)");
        return Ok(ExitCode::from(1));
    }
    let (valid, problems) = load(&files);
    for problem in &problems {
        println!("{problem}");
    }
    if problems.is_empty() {
        eprintln!("{} pipeline file(s) valid", valid.len());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{} problem(s) in {} file(s)", problems.len(), files.len());
        Ok(ExitCode::from(1))
    }
}
