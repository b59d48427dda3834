//! A lease's log, uploaded as it is written: lines batched into chunks of at most
//! `LOG_CHUNK_BYTES`, sent at least every `LOG_FLUSH`, each retried a few times. A 409 means the
//! lease is lost: the stage is stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Log lines are uploaded at least this often while a stage runs.
const LOG_FLUSH: Duration = Duration::from_millis(200);
const LOG_CHUNK_BYTES: usize = 256 * 1024;

/// Batches log lines into chunks, uploaded every LOG_FLUSH or LOG_CHUNK_BYTES.
pub(super) async fn upload(
    http: reqwest::Client,
    url: String,
    credential: String,
    mut rx: mpsc::Receiver<String>,
    cancel: CancellationToken,
    lost: Arc<AtomicBool>,
) {
    let mut buffer = String::new();
    let mut open = true;
    while open {
        let deadline = tokio::time::sleep(LOG_FLUSH);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                line = rx.recv() => match line {
                    Some(line) => {
                        buffer.push_str(&line);
                        if buffer.len() >= LOG_CHUNK_BYTES { break; }
                    }
                    None => { open = false; break; }
                },
                _ = &mut deadline => break,
            }
        }
        if buffer.is_empty() {
            continue;
        }
        let chunk = std::mem::take(&mut buffer);
        for delay in [0u64, 200, 1000, 3000] {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            match http
                .post(&url)
                .bearer_auth(&credential)
                .timeout(Duration::from_secs(30))
                .body(chunk.clone())
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => break,
                Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => {
                    lost.store(true, Ordering::SeqCst);
                    cancel.cancel();
                    return;
                }
                Ok(r) => tracing::warn!(status = %r.status(), "log upload refused; retrying"),
                Err(e) => tracing::warn!(error = %e, "log upload failed; retrying"),
            }
        }
    }
}
