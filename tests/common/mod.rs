//! The root package's end-to-end tests: the shared vocabulary is in `deploylite-testkit`
//! (real git repositories, the `deploylite` binary as a daemon, waits that end on a condition
//! or a signal); what is here is only for these tests (a forge that fails, a signed push).

#![allow(dead_code, unused_imports)] // each test binary uses a different part of the kit

use std::time::Duration;

/// Headless Chromium over the DevTools protocol (the status page's tests).
pub mod browser;

pub use deploylite_testkit::daemon::*;
pub use deploylite_testkit::wait::{self, DEADLINE};
pub use deploylite_testkit::{RunStatus, RunView, StageStatus, StageView, TestRepo};

pub const BIN: &str = env!("CARGO_BIN_EXE_deploylite");

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// A fresh database on the server of `DEPLOYLITE_TEST_POSTGRES_URL` (`./scripts/test` starts
/// one): None, said loudly (a failure under CI), without it.
pub async fn postgres_database() -> Option<String> {
    deploylite_testkit::postgres_database("the end-to-end PostgreSQL tests").await
}

// ---------------------------------------------------------------------------------------------
// Forges

/// A forge that answers every request with 500: reports fail and are retried.
pub fn failing_forge() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = [0u8; 16384];
            let _ = std::io::Read::read(&mut stream, &mut buf);
            let _ = std::io::Write::write_all(
                &mut stream,
                b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
            );
        }
    });
    (url, requests)
}

/// Sends a GitHub `push` of `head` to `refs/heads/main` of Codertocat/Hello-World, signed
/// with `secret`; the answer's status.
pub async fn send_github_push(daemon: &Daemon, secret: &str, delivery: &str, head: &str) -> u16 {
    use hmac::Mac;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/webhook/tests/fixtures/github/webhooks/push.branch-created.json"
    );
    let mut payload: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    payload["ref"] = serde_json::json!("refs/heads/main");
    payload["after"] = serde_json::json!(head);
    let body = serde_json::to_vec(&payload).unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&body);
    daemon
        .http()
        .post(format!("{}/webhooks/github", daemon.url))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", delivery)
        .header(
            "X-Hub-Signature-256",
            format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
        )
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
