//! Which runner labels a server knows, for the warnings of `validate` and `plan`. Best effort:
//! any failure (no daemon, refused token, old daemon) means "unknown", and the offline case is
//! slowed by at most the connect timeout.

use std::path::Path;
use std::time::Duration;

use deploylite_server::runners::RunnerView;

/// A daemon that is not running refuses at once; one on an unreachable host gets this long.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// The label sets of the runners `server` knows: its remote runners that are not revoked,
/// and its local runner with the default labels (`local` and the OS name), which the API does
/// not list. None when the server cannot be asked.
pub async fn label_sets(server: &str, token_file: Option<&Path>) -> Option<Vec<Vec<String>>> {
    let token = crate::client::find_token(server, token_file).ok().flatten();
    let http = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(ANSWER_TIMEOUT)
        .build()
        .ok()?;
    let mut request = http.get(format!("{}/api/v1/runners", server.trim_end_matches('/')));
    if let Some(token) = token {
        request = request.bearer_auth(token.value);
    }
    let response = request.send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let runners: Vec<RunnerView> = response.json().await.ok()?;
    let mut sets: Vec<Vec<String>> = runners
        .into_iter()
        .filter(|r| r.status != "revoked")
        .map(|r| r.labels)
        .collect();
    sets.push(vec!["local".into(), std::env::consts::OS.into()]);
    Some(sets)
}
