//! What `deploylite serve` says about its configuration and addresses, with the real binary:
//! every problem at once at its `file:line:col`, variables named, unknown variables warned
//! about, host names to listen on, server URLs without a scheme.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{cli, free_port, run_cmd, wait, DEADLINE};
use std::path::Path;
use std::process::{Child, Stdio};

/// `deploylite <args>` in `dir` with `env`: (exit code, stdout, stderr).
fn deploylite_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = cli();
    cmd.args(args).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_cmd(cmd)
}

const TYPO: &str = "listen: 127.0.0.1:8094
data_dir: data
max_paralel_stages: 4
retention:
  logz: 7d
local_runner:
  enabled: yes
repos:
  - name: app
    url: ./app
    poll_interval: 5 seconds
";

#[test]
fn serve_reports_every_problem_of_the_config_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("typo.yaml"), TYPO).unwrap();
    let (code, out, err) = deploylite_in(dir.path(), &["serve", "--config", "typo.yaml"], &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(
        err,
        "error: 4 problems in the configuration:
typo.yaml:3:1: unknown key `max_paralel_stages`; did you mean `max_parallel_stages`?
typo.yaml:5:3: unknown key `logz`; did you mean `logs`?
typo.yaml:7:12: local_runner.enabled: invalid value \"yes\": expected true or false
typo.yaml:11:20: repos[0].poll_interval: invalid value \"5 seconds\": expected a duration such as 500ms, 30s, 15m, 1h30m or 7d
"
    );
    assert!(!dir.path().join("data").exists(), "it started anyway");
}

#[test]
fn serve_names_the_variable_whose_value_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = deploylite_in(
        dir.path(),
        &["serve"],
        &[("DEPLOYLITE_MAX_PARALLEL_STAGES", "abc")],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(
        err,
        "error: DEPLOYLITE_MAX_PARALLEL_STAGES: invalid value \"abc\": expected a whole number\n"
    );

    let (code, out, err) = deploylite_in(
        dir.path(),
        &["serve", "--listen", "nope"],
        &[(
            "DEPLOYLITE_REPOS",
            "[{name: app, url: /srv/app, branch: [main]}]",
        )],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(
        err,
        "error: 2 problems in the configuration:
DEPLOYLITE_REPOS:1:29: unknown key `branch`; did you mean `branches`?
listen: `nope` is not an address to listen on: write HOST:PORT, e.g. 127.0.0.1:8080, [::1]:8080, localhost:8080 or 0.0.0.0:8080 (every interface)
"
    );
}

#[test]
fn serve_rejects_an_address_it_cannot_listen_on_saying_how_to_write_one() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = deploylite_in(dir.path(), &["serve", "--listen", "localhost"], &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(
        err,
        "error: listen: `localhost` is not an address to listen on: write HOST:PORT, e.g. \
         127.0.0.1:8080, [::1]:8080, localhost:8080 or 0.0.0.0:8080 (every interface)\n"
    );
}

/// A daemon started by hand (the kit's `Daemon` listens on 127.0.0.1), killed when dropped.
struct Serve {
    child: Child,
    dir: tempfile::TempDir,
}

impl Serve {
    fn start(listen: &str, env: &[(&str, &str)]) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = cli();
        cmd.args(["serve", "--listen", listen, "--data-dir", "data"])
            .current_dir(dir.path())
            .env("DEPLOYLITE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn deploylite serve");
        let mut serve = Serve { child, dir };
        serve.wait_for_log("deploylite is running");
        serve
    }

    /// The daemon's log so far, without colours.
    fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default())
    }

    fn wait_for_log(&mut self, needle: &str) {
        let log = self.dir.path().join("stderr");
        let read = || strip_ansi(&std::fs::read_to_string(&log).unwrap_or_default());
        if let Err(unprinted) = wait::printed(&mut self.child, needle, DEADLINE, read) {
            panic!("no `{needle}` in the daemon's log: {unprinted}");
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn serve_warns_about_unknown_deploylite_variables_with_the_closest_name() {
    let serve = Serve::start(
        "127.0.0.1:0",
        &[
            ("DEPLOYLITE_LISTN", "127.0.0.1:9999"),
            // Read by other commands and by stages: not warned about.
            ("DEPLOYLITE_TOKEN", "dlt_x"),
            ("DEPLOYLITE_DOCKER_HOST", "unix:///nowhere"),
            ("DEPLOYLITE_RUN_ID", "1"),
        ],
    );
    let log = serve.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("DEPLOYLITE_"))
        .map(|l| l.split_once(": ").map_or(l, |(_, message)| message))
        .collect();
    assert_eq!(
        warnings,
        vec!["DEPLOYLITE_LISTN is not a DeployLite variable (ignored); did you mean `DEPLOYLITE_LISTEN`?"],
        "{log}"
    );
}

#[test]
fn serve_listens_on_a_host_name_and_clients_take_an_address_without_a_scheme() {
    let port = free_port();
    let serve = Serve::start(&format!("localhost:{port}"), &[]);
    let log = serve.log();
    let running = log
        .lines()
        .find(|l| l.contains("deploylite is running"))
        .unwrap();
    // Every address the name resolves to (127.0.0.1, and ::1 where the machine has IPv6).
    let bound = running
        .split_once(&format!("listen=localhost:{port} bound="))
        .and_then(|(_, rest)| rest.split_once(" data_dir="))
        .map(|(bound, _)| bound)
        .unwrap_or_else(|| panic!("{running}"));
    let bound: Vec<std::net::SocketAddr> = bound.split(", ").map(|a| a.parse().unwrap()).collect();
    assert!(
        bound.contains(&format!("127.0.0.1:{port}").parse().unwrap()),
        "{running}"
    );
    assert!(
        bound
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == port),
        "{running}"
    );
    // localhost is a loopback address: reads need no token.
    assert!(running.contains("anonymous_read=true"), "{running}");

    let dir = serve.dir.path();
    let server = format!("localhost:{port}");
    let (code, out, err) = deploylite_in(dir, &["status", "--server", &server], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = deploylite_in(dir, &["status"], &[("DEPLOYLITE_SERVER", &server)]);
    assert_eq!(code, 0, "{out}{err}");

    let (code, out, err) = deploylite_in(dir, &["status", "--server", "localhost:99999"], &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(
        err.lines().next(),
        Some(
            "error: invalid value 'localhost:99999' for '--server <URL>': invalid port number \
             (e.g. http://127.0.0.1:8080 or localhost:8080)"
        ),
        "{err}"
    );
}
