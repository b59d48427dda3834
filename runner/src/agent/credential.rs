//! The runner's credential: kept in `<state dir>/<name>.credential` (0600) from its
//! registration, which trades a registration token for it.

use std::path::{Path, PathBuf};

use deploylite_protocol::{RegisterRequest, RegisterResponse};
use tokio::io::AsyncWriteExt;

use super::error::AgentError;
use super::{error_text, AgentConfig};

/// Where runner `name` keeps its credential.
pub fn credential_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(format!("{name}.credential"))
}

/// The credential kept from an earlier registration, or a new one from registering now (always
/// with `reregister`).
pub(super) async fn obtain(
    http: &reqwest::Client,
    base: &str,
    config: &AgentConfig,
) -> Result<String, AgentError> {
    let path = credential_path(&config.state_dir, &config.name);
    let stored = tokio::fs::read_to_string(&path)
        .await
        .map(|text| text.trim().to_string())
        .ok()
        .filter(|text| !text.is_empty());
    if let (Some(stored), false) = (&stored, config.reregister) {
        return Ok(stored.clone());
    }
    let Some(token) = &config.registration_token else {
        if config.reregister {
            return Err(AgentError::ReregisterWithoutToken);
        }
        return Err(AgentError::NotRegistered {
            name: config.name.clone(),
            path,
        });
    };
    let mut request = http.post(format!("{base}/api/v1/runners/register"));
    // A server that still knows this runner lets it replace its own credential; one whose data
    // was reset ignores a credential it does not know.
    if let Some(stored) = &stored {
        request = request.bearer_auth(stored);
    }
    let response = request
        .json(&RegisterRequest {
            token: token.clone(),
            name: config.name.clone(),
            labels: config.labels.clone(),
            capacity: i64::try_from(config.capacity).unwrap_or(i64::MAX),
            executor: config.executor_name.clone(),
        })
        .send()
        .await
        .map_err(|source| AgentError::Unreachable {
            base: base.to_string(),
            source,
        })?;
    let status = response.status();
    if !status.is_success() {
        let reason = error_text(response).await;
        return Err(AgentError::RegistrationRefused { status, reason });
    }
    let registered: RegisterResponse = response
        .json()
        .await
        .map_err(AgentError::RegistrationAnswer)?;
    write_private(&path, &registered.credential).await?;
    tracing::info!(runner = %config.name, credential_file = %path.display(),
        replaced = stored.is_some(), "registered with the server");
    Ok(registered.credential)
}

/// Writes a secret readable by this user only.
async fn write_private(path: &Path, content: &str) -> Result<(), AgentError> {
    let failed = |what| {
        move |source| AgentError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|source| AgentError::Io {
                what: "create",
                path: parent.to_path_buf(),
                source,
            })?;
    }
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(0o600);
    let mut file = options.open(path).await.map_err(failed("write"))?;
    // An existing file keeps its mode through `mode(0o600)` above.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .await
        .map_err(failed("make private"))?;
    file.write_all(content.as_bytes())
        .await
        .map_err(failed("write"))?;
    file.flush().await.map_err(failed("write"))?;
    Ok(())
}
