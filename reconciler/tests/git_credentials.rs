//! Repository URLs with credentials (`http://user:token@host/x.git`): the credential reaches
//! git only through the environment, never a stored URL, an error message or a command line.
//! The server is real: `git http-backend` behind HTTP Basic auth on loopback, recording every
//! request it sees.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use deploylite_reconciler::git::GitRepo;
use deploylite_runner::kubernetes::spec::{clone_env, CLONE_SCRIPT};

const USER: &str = "deploy";
const SECRET: &str = "s3cret-t0ken";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@deploylite.invalid"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
        out.push_str(&"=".repeat(3 - chunk.len()));
    }
    out
}

#[derive(Clone)]
struct Server {
    root: PathBuf,
    /// Every request as `METHOD uri`, with whether it carried the right credential.
    seen: Arc<Mutex<Vec<(String, bool)>>>,
}

/// Answers like a git host that wants `USER:SECRET`: 401 without it, else `git http-backend`.
async fn handle(
    State(server): State<Server>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let expected = format!("Basic {}", base64(format!("{USER}:{SECRET}").as_bytes()));
    let authorized = headers
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    server
        .seen
        .lock()
        .unwrap()
        .push((format!("{method} {uri}"), authorized));
    if !authorized {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("WWW-Authenticate", "Basic realm=\"git\"")
            .body(Body::empty())
            .unwrap();
    }
    let header = move |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let root = server.root.clone();
    let (path, query) = (
        uri.path().to_string(),
        uri.query().unwrap_or("").to_string(),
    );
    let output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("git")
            .arg("http-backend")
            .env("GIT_PROJECT_ROOT", &root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("PATH_INFO", path)
            .env("QUERY_STRING", query)
            .env("REQUEST_METHOD", method.as_str())
            .env("CONTENT_TYPE", header("content-type"))
            .env("CONTENT_LENGTH", body.len().to_string())
            .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
            .env("GIT_PROTOCOL", header("git-protocol"))
            .env("REMOTE_USER", USER)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&body).unwrap();
        child.wait_with_output().unwrap().stdout
    })
    .await
    .unwrap();
    // CGI: headers, a blank line, the body.
    let split = output
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| (at, at + 4))
        .or_else(|| {
            output
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|at| (at, at + 2))
        })
        .expect("CGI headers");
    let head = String::from_utf8_lossy(&output[..split.0]).into_owned();
    let mut response = Response::builder();
    let mut status = 200;
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("status") {
            status = value.trim()[..3].parse().unwrap();
        } else {
            response = response.header(name.trim(), value.trim());
        }
    }
    response
        .status(status)
        .body(Body::from(output[split.1..].to_vec()))
        .unwrap()
}

/// A bare repository `x.git` with one commit on `main`, served at `http://127.0.0.1:PORT/x.git`.
async fn serve_repo() -> (tempfile::TempDir, Server, u16, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("file"), "served\n").unwrap();
    git(&work, &["add", "file"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    let commit = git(&work, &["rev-parse", "HEAD"]);
    let root = dir.path().join("srv");
    std::fs::create_dir(&root).unwrap();
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            root.join("x.git").to_str().unwrap(),
        ],
    );
    let server = Server {
        root,
        seen: Arc::default(),
    };
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (dir, server, port, commit)
}

/// Every file under `dir` whose content holds `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
                .unwrap_or(false)
            {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_is_fetched_with_the_credential_and_stores_none_of_it() {
    let (_srv, server, port, commit) = serve_repo().await;
    let data = tempfile::tempdir().unwrap();
    let mirror = data.path().join("git").join("x.git");
    let url = format!("http://{USER}:{SECRET}@127.0.0.1:{port}/x.git");

    let (m, u) = (mirror.clone(), url.clone());
    let repo = tokio::task::spawn_blocking(move || {
        let mut repo = GitRepo::remote(&u, &m);
        repo.fetch().map(|()| repo)
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("clone with the credential failed: {e}"));
    assert_eq!(repo.resolve("main").unwrap(), commit);
    assert!(!format!("{repo:?}").contains(SECRET), "{repo:?}");

    // Fetched again (the `fetch origin` path), still with the credential.
    let repo = tokio::task::spawn_blocking(move || {
        let mut repo = repo;
        repo.fetch().map(|()| repo)
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("fetch with the credential failed: {e}"));
    drop(repo);

    let config = std::fs::read_to_string(mirror.join("config")).unwrap();
    assert!(
        config.contains(&format!("url = http://127.0.0.1:{port}/x.git")),
        "{config}"
    );
    assert_eq!(files_containing(&mirror, SECRET), Vec::<PathBuf>::new());
    assert_eq!(
        files_containing(&mirror, &format!("{USER}:")),
        Vec::<PathBuf>::new()
    );
    let seen = server.seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|(_, ok)| *ok),
        "no request carried the credential: {seen:?}"
    );
    assert!(
        seen.iter().all(|(request, _)| !request.contains(SECRET)),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_cloned_with_the_credential_in_its_url_loses_it_at_the_next_fetch() {
    let (_srv, _server, port, commit) = serve_repo().await;
    let data = tempfile::tempdir().unwrap();
    let mirror = data.path().join("x.git");
    let url = format!("http://{USER}:{SECRET}@127.0.0.1:{port}/x.git");
    // As the old code left it: cloned from the URL as configured.
    git(
        data.path(),
        &["clone", "-q", "--mirror", &url, mirror.to_str().unwrap()],
    );
    assert!(
        !files_containing(&mirror, SECRET).is_empty(),
        "the setup is not what old code did"
    );

    let m = mirror.clone();
    let repo = tokio::task::spawn_blocking(move || {
        let mut repo = GitRepo::remote(&url, &m);
        repo.fetch().map(|()| repo)
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("fetch failed: {e}"));
    assert_eq!(repo.resolve("main").unwrap(), commit);
    assert_eq!(files_containing(&mirror, SECRET), Vec::<PathBuf>::new());
}

#[test]
fn a_failing_fetch_does_not_name_the_credential() {
    let data = tempfile::tempdir().unwrap();
    for url in [
        format!("https://{USER}:{SECRET}@127.0.0.1:1/x.git"),
        format!("https://{SECRET}@127.0.0.1:1/x.git"),
    ] {
        let mut repo = GitRepo::remote(&url, &data.path().join("m.git"));
        let error = repo.fetch().expect_err("127.0.0.1:1 answered");
        let text = format!("{error} / {error:?} / {repo:?}");
        assert!(!text.contains(SECRET), "{text}");
        assert!(
            text.contains("127.0.0.1:1/x.git"),
            "the error still says where: {text}"
        );
    }
}

/// The Kubernetes init container's clone script with the environment the Pod spec gives it
/// (the Secret's keys resolved as the kubelet would): it clones with the credential, and the
/// workspace's `.git/config` holds none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_clone_script_uses_the_secret_and_leaves_no_credential_in_the_workspace() {
    let (_srv, server, port, commit) = serve_repo().await;
    let secret_values = HashMap::from([("username", USER), ("password", SECRET)]);
    let url = format!("http://127.0.0.1:{port}/x.git");
    let job = deploylite_runner::StageJob {
        run_id: 1.into(),
        stage: "s".into(),
        attempt: 1.into(),
        workspace: PathBuf::from("/nowhere"),
        env: Default::default(),
        steps: Vec::new(),
        timeout: None,
        image: None,
        resources: Default::default(),
        services: Vec::new(),
        source_url: Some(url.clone()),
        repo: "r".into(),
        pipeline: "p".into(),
        commit: commit.clone().into(),
    };
    let env = clone_env(&job, &url, Some("git-creds"));
    let spec_text = serde_json::to_string(&env).unwrap();
    assert!(!spec_text.contains(SECRET), "{spec_text}");
    assert!(spec_text.contains("git-creds"), "{spec_text}");

    let workspace = tempfile::tempdir().unwrap();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(CLONE_SCRIPT)
        .env("HOME", workspace.path());
    for var in &env {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => value.clone(),
            (None, Some(from)) => {
                let key = from
                    .secret_key_ref
                    .as_ref()
                    .expect("a secret ref")
                    .key
                    .as_str();
                secret_values[key].to_string()
            }
            (None, None) => String::new(),
        };
        command.env(&var.name, value);
    }
    // The workspace path of the Pod is /workspace; here it is a temp dir.
    command.env("DEPLOYLITE_WORKSPACE", workspace.path());
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(workspace.path().join("file")).unwrap(),
        "served\n"
    );
    assert_eq!(
        files_containing(&workspace.path().join(".git"), SECRET),
        Vec::<PathBuf>::new()
    );
    let seen = server.seen.lock().unwrap().clone();
    assert!(seen.iter().any(|(_, ok)| *ok), "{seen:?}");
}
