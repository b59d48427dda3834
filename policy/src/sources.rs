//! The policy files of one revision: Rego modules and `data.yaml` documents, read from
//! operator bundle directories or handed over from a repository's commit, with the sha256
//! that names the revision.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::PolicyError;
use crate::limits::{MAX_DIR_DEPTH, MAX_FILES, MAX_FILE_BYTES};

/// One file of a policy revision. `path` is how messages name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFile {
    pub path: String,
    pub text: String,
}

/// The files of one policy revision, in a stable order (by path).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySources {
    /// `*.rego` modules.
    pub modules: Vec<PolicyFile>,
    /// `data.yaml` documents, merged at the root of `data`.
    pub data: Vec<PolicyFile>,
}

/// Whether a Rego file holds unit tests (Conftest's and OPA's convention).
pub fn is_test_file(name: &str) -> bool {
    name.ends_with("_test.rego")
}

/// The data document of a bundle.
pub const DATA_FILE: &str = "data.yaml";

impl PolicySources {
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty() && self.data.is_empty()
    }

    /// Operator bundles: every `*.rego` (without the `*_test.rego` unit tests unless
    /// `with_tests`) and every `data.yaml` under each directory, recursively. Hidden entries
    /// are skipped. Paths in messages are `DIR/relative/path`.
    pub fn from_dirs(dirs: &[PathBuf], with_tests: bool) -> Result<PolicySources, PolicyError> {
        let mut sources = PolicySources::default();
        for dir in dirs {
            if !dir.is_dir() {
                return Err(PolicyError::NotADirectory { path: dir.clone() });
            }
            let mut found = Vec::new();
            walk(dir, 0, &mut found)?;
            for path in found {
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                let is_module = name.ends_with(".rego") && (with_tests || !is_test_file(name));
                if !is_module && name != DATA_FILE {
                    continue;
                }
                if sources.modules.len() + sources.data.len() >= MAX_FILES {
                    return Err(PolicyError::TooManyFiles { limit: MAX_FILES });
                }
                let file = read_file(&path)?;
                if is_module {
                    sources.modules.push(file);
                } else {
                    sources.data.push(file);
                }
            }
        }
        sources.sort();
        Ok(sources)
    }

    /// A repository's policies, as read from a commit: `(path, content)` pairs. Unit tests
    /// (`*_test.rego`) and anything but `*.rego` are left out; repositories bring no data.
    pub fn from_repository(
        files: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) -> Result<PolicySources, PolicyError> {
        let mut sources = PolicySources::default();
        for (path, content) in files {
            let name = path.rsplit('/').next().unwrap_or(&path);
            if !name.ends_with(".rego") || is_test_file(name) {
                continue;
            }
            if sources.modules.len() >= MAX_FILES {
                return Err(PolicyError::TooManyFiles { limit: MAX_FILES });
            }
            check_size(&path, content.len())?;
            let text = String::from_utf8(content)
                .map_err(|_| PolicyError::NotUtf8 { path: path.clone() })?;
            sources.modules.push(PolicyFile { path, text });
        }
        sources.sort();
        Ok(sources)
    }

    fn sort(&mut self) {
        self.modules.sort_by(|a, b| a.path.cmp(&b.path));
        self.data.sort_by(|a, b| a.path.cmp(&b.path));
    }

    /// The revision's identity: sha256 over each file's kind, path and content, in order,
    /// each length-prefixed so that no two different sets hash alike.
    pub fn revision_sha256(&self) -> String {
        let mut hash = Sha256::new();
        for (kind, files) in [("rego", &self.modules), ("data", &self.data)] {
            for file in files {
                for part in [kind.as_bytes(), file.path.as_bytes(), file.text.as_bytes()] {
                    hash.update((part.len() as u64).to_be_bytes());
                    hash.update(part);
                }
            }
        }
        hex::encode(hash.finalize())
    }
}

/// The sha256 naming a decision's revision: the operator's and the repository's together.
pub fn combined_revision(operator: &str, repository: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"operator:");
    hash.update(operator.as_bytes());
    hash.update(b"\nrepository:");
    hash.update(repository.as_bytes());
    hex::encode(hash.finalize())
}

fn walk(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) -> Result<(), PolicyError> {
    if depth > MAX_DIR_DEPTH {
        return Ok(());
    }
    let read_err = |source| PolicyError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .collect::<Result<_, _>>()
        .map_err(read_err)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().map_err(|source| PolicyError::Read {
            path: path.clone(),
            source,
        })?;
        if kind.is_dir() {
            walk(&path, depth + 1, found)?;
        } else if kind.is_file() {
            if found.len() >= MAX_FILES * 4 {
                return Err(PolicyError::TooManyFiles { limit: MAX_FILES });
            }
            found.push(path);
        }
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<PolicyFile, PolicyError> {
    let shown = path.display().to_string();
    let size = std::fs::metadata(path)
        .map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    check_size(&shown, usize::try_from(size).unwrap_or(usize::MAX))?;
    let bytes = std::fs::read(path).map_err(|source| PolicyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    check_size(&shown, bytes.len())?;
    let text = String::from_utf8(bytes).map_err(|_| PolicyError::NotUtf8 {
        path: shown.clone(),
    })?;
    Ok(PolicyFile { path: shown, text })
}

fn check_size(path: &str, size: usize) -> Result<(), PolicyError> {
    if size > MAX_FILE_BYTES {
        return Err(PolicyError::FileTooLarge {
            path: path.to_string(),
            size,
            limit: MAX_FILE_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(files: &[(&str, &str)]) -> PolicySources {
        PolicySources::from_repository(
            files
                .iter()
                .map(|(p, t)| (p.to_string(), t.as_bytes().to_vec())),
        )
        .expect("valid files")
    }

    #[test]
    fn repository_sources_keep_rego_modules_only_in_path_order() {
        let sources = repo(&[
            (".deploylite/policy/b.rego", "package b"),
            (".deploylite/policy/a_test.rego", "package a"),
            (".deploylite/policy/README.md", "hi"),
            (".deploylite/policy/a.rego", "package a"),
        ]);
        let paths: Vec<_> = sources.modules.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [".deploylite/policy/a.rego", ".deploylite/policy/b.rego"]
        );
    }

    #[test]
    fn the_revision_changes_with_any_path_or_content_and_not_with_order() {
        let base = repo(&[("a.rego", "package a"), ("b.rego", "package b")]);
        let reordered = repo(&[("b.rego", "package b"), ("a.rego", "package a")]);
        let edited = repo(&[("a.rego", "package a "), ("b.rego", "package b")]);
        let renamed = repo(&[("c.rego", "package a"), ("b.rego", "package b")]);
        assert_eq!(base.revision_sha256(), reordered.revision_sha256());
        assert_ne!(base.revision_sha256(), edited.revision_sha256());
        assert_ne!(base.revision_sha256(), renamed.revision_sha256());
        assert_eq!(base.revision_sha256().len(), 64);
    }

    #[test]
    fn oversized_and_non_utf8_files_are_refused_by_name() {
        let big = vec![b' '; MAX_FILE_BYTES + 1];
        let err = PolicySources::from_repository([("p/big.rego".to_string(), big)])
            .expect_err("too large");
        assert!(err.to_string().contains("p/big.rego"), "{err}");
        let err = PolicySources::from_repository([("p/bin.rego".to_string(), vec![0xff, 0xfe])])
            .expect_err("not UTF-8");
        assert!(matches!(err, PolicyError::NotUtf8 { .. }), "{err}");
    }

    #[test]
    fn bundle_dirs_are_read_recursively_with_data_and_tests_on_request() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bundle = dir.path().join("registries");
        std::fs::create_dir_all(bundle.join("lib")).expect("mkdir");
        std::fs::create_dir_all(bundle.join(".git")).expect("mkdir");
        std::fs::write(bundle.join("policy.rego"), "package p").expect("write");
        std::fs::write(bundle.join("lib/helpers.rego"), "package h").expect("write");
        std::fs::write(bundle.join("policy_test.rego"), "package p").expect("write");
        std::fs::write(bundle.join("data.yaml"), "a: 1").expect("write");
        std::fs::write(bundle.join(".git/x.rego"), "package x").expect("write");
        let gate = PolicySources::from_dirs(&[dir.path().to_path_buf()], false).expect("read");
        assert_eq!(gate.modules.len(), 2, "{:?}", gate.modules);
        assert_eq!(gate.data.len(), 1);
        let tests = PolicySources::from_dirs(&[dir.path().to_path_buf()], true).expect("read");
        assert_eq!(tests.modules.len(), 3);
        let missing = PolicySources::from_dirs(&[dir.path().join("nope")], false);
        assert!(matches!(missing, Err(PolicyError::NotADirectory { .. })));
    }
}
