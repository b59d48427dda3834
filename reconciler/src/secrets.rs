//! Secret values at rest: AES-256-GCM with a fresh random nonce per value, under a key that
//! lives in a file of its own (`secrets.key_file`), never in the database. A sealed value is
//! bound to its scope (repository, environment, name) as associated data, so a value copied to
//! another row of the database no longer opens.
//!
//! The key file is created at first start with mode 0600. Rotation keeps two keys: every row
//! names the key that sealed it (`key_id`, the first 8 bytes of the key's SHA-256), so a
//! rotation interrupted half way leaves rows under either key, and both still open.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::digest;

/// The first line of a key file: says what the file is and lets the format change later.
const KEY_FILE_HEADER: &str = "deploylite-secrets-key v1";
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SecretKeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a DeployLite secrets key file ({why})")]
    Format { path: PathBuf, why: &'static str },
    #[error(
        "{path}: readable by other users (mode {mode:o}); run `chmod 600 {path}` — the key decrypts every secret"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("the system's random number generator failed")]
    Random,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("sealed with key {0}, which is not loaded (was the key file replaced?)")]
    UnknownKey(String),
    #[error("a sealed value does not open: it was altered, or belongs to another secret")]
    Corrupt,
    #[error("the system's random number generator failed")]
    Random,
}

/// A value as stored: which key sealed it, the nonce, the ciphertext with its tag.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .field("bytes", &self.ciphertext.len())
            .finish()
    }
}

/// Where a secret applies: a repository, or one environment of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretScope {
    pub repo: String,
    /// None: every pipeline of the repository; Some: only that environment's deployments.
    pub environment: Option<String>,
}

impl SecretScope {
    /// The associated data binding a sealed value to where it belongs.
    fn aad(&self, name: &str) -> Vec<u8> {
        let mut aad = Vec::with_capacity(self.repo.len() + name.len() + 16);
        for part in [
            self.repo.as_str(),
            self.environment.as_deref().unwrap_or(""),
            name,
        ] {
            aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

impl fmt::Display for SecretScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.environment {
            Some(environment) => write!(f, "{}/{environment}", self.repo),
            None => f.write_str(&self.repo),
        }
    }
}

/// One AES-256 key and its id.
pub struct SecretKey {
    id: String,
    key: LessSafeKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey").field("id", &self.id).finish()
    }
}

impl SecretKey {
    fn from_bytes(bytes: &[u8; KEY_LEN]) -> Result<SecretKey, SecretKeyError> {
        let id = hex::encode(&digest::digest(&digest::SHA256, bytes).as_ref()[..8]);
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| SecretKeyError::Random)?;
        Ok(SecretKey {
            id,
            key: LessSafeKey::new(key),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Reads the key at `path`, or creates it (mode 0600, never overwriting a file that
    /// appeared meanwhile) when there is none.
    pub fn load_or_create(path: &Path) -> Result<SecretKey, SecretKeyError> {
        match SecretKey::load(path) {
            Err(SecretKeyError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                SecretKey::create(path)
            }
            other => other,
        }
    }

    /// Creates a new key file at `path`; fails if one exists.
    pub fn create(path: &Path) -> Result<SecretKey, SecretKeyError> {
        let io = |source| SecretKeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut bytes = [0u8; KEY_LEN];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| SecretKeyError::Random)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut file = create_private(path).map_err(io)?;
        let text = format!("{KEY_FILE_HEADER}\n{}\n", hex::encode(bytes));
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        SecretKey::from_bytes(&bytes)
    }

    /// Reads the key file at `path`, refusing one other users can read.
    pub fn load(path: &Path) -> Result<SecretKey, SecretKeyError> {
        let io = |source| SecretKeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let metadata = std::fs::metadata(path).map_err(io)?;
        check_private(path, &metadata)?;
        let text = std::fs::read_to_string(path).map_err(io)?;
        let format = |why| SecretKeyError::Format {
            path: path.to_path_buf(),
            why,
        };
        let mut lines = text.lines();
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(format("its first line is not the header"));
        }
        let encoded = lines.next().ok_or_else(|| format("no key line"))?;
        let decoded = hex::decode(encoded.trim()).map_err(|_| format("the key is not hex"))?;
        let bytes: [u8; KEY_LEN] = decoded
            .try_into()
            .map_err(|_| format("the key is not 32 bytes"))?;
        SecretKey::from_bytes(&bytes)
    }

    fn seal(&self, scope: &SecretScope, name: &str, value: &[u8]) -> Result<Sealed, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut in_out = value.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(scope.aad(name)),
                &mut in_out,
            )
            .map_err(|_| SealError::Random)?;
        Ok(Sealed {
            key_id: self.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext: in_out,
        })
    }

    fn open(
        &self,
        scope: &SecretScope,
        name: &str,
        sealed: &Sealed,
    ) -> Result<SecretValue, SealError> {
        let nonce =
            Nonce::try_assume_unique_for_key(&sealed.nonce).map_err(|_| SealError::Corrupt)?;
        let mut in_out = sealed.ciphertext.clone();
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(scope.aad(name)), &mut in_out)
            .map_err(|_| SealError::Corrupt)?
            .len();
        in_out.truncate(plain_len);
        Ok(SecretValue(in_out))
    }
}

/// A plaintext secret value: not printed by `Debug`, wiped when dropped.
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue({} bytes)", self.0.len())
    }
}

impl Drop for SecretValue {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// The keys a daemon holds: the one new values are sealed with, and during a rotation the
/// one being replaced.
#[derive(Debug)]
pub struct SecretKeys {
    current: SecretKey,
    previous: Option<SecretKey>,
}

impl SecretKeys {
    pub fn new(current: SecretKey) -> SecretKeys {
        SecretKeys {
            current,
            previous: None,
        }
    }

    /// Keys during a rotation: `next` seals, `current` still opens what it sealed.
    pub fn rotating(current: SecretKey, next: SecretKey) -> SecretKeys {
        SecretKeys {
            current: next,
            previous: Some(current),
        }
    }

    pub fn current_id(&self) -> &str {
        self.current.id()
    }

    pub fn seal(&self, scope: &SecretScope, name: &str, value: &[u8]) -> Result<Sealed, SealError> {
        self.current.seal(scope, name, value)
    }

    pub fn open(
        &self,
        scope: &SecretScope,
        name: &str,
        sealed: &Sealed,
    ) -> Result<SecretValue, SealError> {
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| SealError::UnknownKey(sealed.key_id.clone()))?;
        key.open(scope, name, sealed)
    }
}

/// Where the next key waits during a rotation: beside the key file, `<key file>.next`.
pub fn next_key_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".next");
    path.with_file_name(name)
}

impl SecretKeys {
    /// The daemon's keys: the key file (created at first start), and the next key as well
    /// when a rotation did not finish (so values under either key open, and it can resume).
    pub fn load(path: &Path) -> Result<SecretKeys, SecretKeyError> {
        let current = SecretKey::load_or_create(path)?;
        let next = next_key_path(path);
        if next.exists() {
            return Ok(SecretKeys::rotating(current, SecretKey::load(&next)?));
        }
        Ok(SecretKeys::new(current))
    }

    /// Starts (or resumes) a rotation: the next key file is created unless a rotation left
    /// one, and the returned keys seal with it.
    pub fn begin_rotation(path: &Path) -> Result<SecretKeys, SecretKeyError> {
        let current = SecretKey::load_or_create(path)?;
        let next_path = next_key_path(path);
        let next = match SecretKey::load(&next_path) {
            Err(SecretKeyError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                SecretKey::create(&next_path)?
            }
            other => other?,
        };
        Ok(SecretKeys::rotating(current, next))
    }

    /// Ends a rotation once no value is sealed by the old key: the next key replaces the
    /// key file (one rename, so a crash leaves one or the other, never neither).
    pub fn finish_rotation(path: &Path) -> Result<SecretKeys, SecretKeyError> {
        let next_path = next_key_path(path);
        std::fs::rename(&next_path, path).map_err(|source| SecretKeyError::Io {
            path: next_path.clone(),
            source,
        })?;
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            // The rename is durable once the directory is.
            if let Ok(dir) = std::fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(SecretKeys::new(SecretKey::load(path)?))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("secret {name} of {scope}: {source}")]
    Seal {
        scope: SecretScope,
        name: String,
        #[source]
        source: SealError,
    },
}

/// Reseals every value not sealed by `keys`' current key, in batches; returns how many were
/// resealed. Safe to stop anywhere and run again: each row says which key sealed it, and a
/// row set meanwhile (already under the current key) is left alone.
pub async fn reseal_all(
    store: &crate::store::Store,
    keys: &SecretKeys,
) -> Result<u64, RotationError> {
    const BATCH: i64 = 100;
    let mut resealed = 0;
    loop {
        let batch = store
            .secrets_not_sealed_with(keys.current_id(), BATCH)
            .await?;
        if batch.is_empty() {
            return Ok(resealed);
        }
        for row in batch {
            let seal_error = |source| RotationError::Seal {
                scope: row.scope.clone(),
                name: row.name.clone(),
                source,
            };
            let value = keys
                .open(&row.scope, &row.name, &row.sealed)
                .map_err(seal_error)?;
            let sealed = keys
                .seal(&row.scope, &row.name, value.expose())
                .map_err(seal_error)?;
            if store
                .reseal_secret(row.id, &row.sealed.key_id, &sealed)
                .await?
            {
                resealed += 1;
            }
        }
    }
}

#[cfg(unix)]
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(unix)]
fn check_private(path: &Path, metadata: &std::fs::Metadata) -> Result<(), SecretKeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretKeyError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path, _: &std::fs::Metadata) -> Result<(), SecretKeyError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(repo: &str, environment: Option<&str>) -> SecretScope {
        SecretScope {
            repo: repo.into(),
            environment: environment.map(str::to_string),
        }
    }

    #[test]
    fn a_key_file_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested/secrets.key");
        let created = SecretKey::load_or_create(&path).expect("creates");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("exists")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let loaded = SecretKey::load_or_create(&path).expect("loads");
        assert_eq!(created.id(), loaded.id());
        let sealed = SecretKeys::new(created)
            .seal(&scope("web", None), "TOKEN", b"v")
            .expect("seals");
        let value = SecretKeys::new(loaded)
            .open(&scope("web", None), "TOKEN", &sealed)
            .expect("opens");
        assert_eq!(value.expose(), b"v");
        assert!(matches!(
            SecretKey::create(&path),
            Err(SecretKeyError::Io { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secrets.key");
        SecretKey::create(&path).expect("creates");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let error = SecretKey::load(&path).expect_err("refused");
        assert!(error.to_string().contains("chmod 600"), "{error}");
    }

    #[test]
    fn a_damaged_key_file_says_what_is_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secrets.key");
        for (text, why) in [
            ("hello\n", "header"),
            ("deploylite-secrets-key v1\n", "no key line"),
            ("deploylite-secrets-key v1\nzz\n", "not hex"),
            ("deploylite-secrets-key v1\nabcd\n", "32 bytes"),
        ] {
            let _ = std::fs::remove_file(&path);
            create_private(&path)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .expect("writes");
            let error = SecretKey::load(&path).expect_err("refused").to_string();
            assert!(error.contains(why), "{text:?}: {error}");
        }
    }

    #[test]
    fn each_value_gets_a_fresh_nonce() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = SecretKeys::new(SecretKey::create(&dir.path().join("k")).expect("key"));
        let a = keys.seal(&scope("web", None), "A", b"same").expect("seals");
        let b = keys.seal(&scope("web", None), "A", b"same").expect("seals");
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert!(!a.ciphertext.windows(4).any(|w| w == b"same"));
    }

    #[test]
    fn a_value_moved_to_another_scope_or_name_or_altered_does_not_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = SecretKeys::new(SecretKey::create(&dir.path().join("k")).expect("key"));
        let sealed = keys
            .seal(&scope("web", Some("production")), "DB", b"pw")
            .expect("seals");
        for (s, name) in [
            (scope("web", Some("staging")), "DB"),
            (scope("web", None), "DB"),
            (scope("other", Some("production")), "DB"),
            (scope("web", Some("production")), "DB2"),
        ] {
            assert_eq!(
                keys.open(&s, name, &sealed).map(|_| ()),
                Err(SealError::Corrupt)
            );
        }
        let mut altered = sealed.clone();
        altered.ciphertext[0] ^= 1;
        assert_eq!(
            keys.open(&scope("web", Some("production")), "DB", &altered)
                .map(|_| ()),
            Err(SealError::Corrupt)
        );
    }

    #[test]
    fn during_a_rotation_both_keys_open_and_the_new_one_seals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = SecretKey::create(&dir.path().join("old")).expect("key");
        let old_id = old.id().to_string();
        let s = scope("web", None);
        let before = SecretKeys::new(old).seal(&s, "A", b"1").expect("seals");
        let keys = SecretKeys::rotating(
            SecretKey::load(&dir.path().join("old")).expect("loads"),
            SecretKey::create(&dir.path().join("new")).expect("key"),
        );
        assert_ne!(keys.current_id(), old_id);
        assert_eq!(keys.open(&s, "A", &before).expect("opens").expose(), b"1");
        let after = keys.seal(&s, "A", b"2").expect("seals");
        assert_eq!(after.key_id, keys.current_id());
        let unknown = Sealed {
            key_id: "0000000000000000".into(),
            ..after
        };
        assert!(matches!(
            keys.open(&s, "A", &unknown),
            Err(SealError::UnknownKey(_))
        ));
    }

    #[test]
    fn debug_output_never_shows_a_value() {
        let value = SecretValue(b"hunter2".to_vec());
        assert!(!format!("{value:?}").contains("hunter2"));
    }
}
