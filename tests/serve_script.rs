//! `examples/serve.sh` says what it is doing before the daemon's own log starts: building
//! (with cargo's own progress and lock notices, not hidden by `--quiet`), starting, and where
//! to look. A stand-in `cargo` and daemon keep this cheap: no build, no daemon.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::output_within;

fn executable(path: &Path, script: &str) {
    std::fs::write(path, script).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A copy of `examples/` (the script works next to it) and a `bin/` with a fake daemon that
/// prints its arguments, and a fake `cargo` that builds it the way cargo reports a build.
fn sandbox() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let status = Command::new("cp")
        .arg("-R")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"))
        .arg(dir.path())
        .status()
        .expect("cp");
    assert!(status.success());
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    executable(&bin.join("daemon"), "#!/bin/sh\necho \"daemon: $*\"\n");
    executable(
        &bin.join("cargo"),
        &format!(
            "#!/bin/sh\n\
             echo \"cargo: $*\" >&2\n\
             echo '    Blocking waiting for file lock on build directory' >&2\n\
             echo '   Compiling deploylite v0.1.0' >&2\n\
             echo '{{\"reason\":\"compiler-artifact\",\"executable\":\"{}\"}}'\n\
             echo '{{\"reason\":\"build-finished\",\"success\":true}}'\n",
            bin.join("daemon").display()
        ),
    );
    dir
}

/// Runs the copied script with `env`; stdout and stderr together, in the order written.
fn serve_sh(dir: &Path, args: &str, env: &[(&str, String)]) -> (i32, String) {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("./examples/serve.sh {args} 2>&1"))
        .current_dir(dir)
        .env_remove("DEPLOYLITE_BIN")
        .env_remove("DEPLOYLITE_LISTEN")
        .env("HOME", dir)
        .env(
            "PATH",
            format!(
                "{}:{}",
                dir.join("bin").display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        );
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = output_within(cmd, common::DEADLINE);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn serve_sh_says_building_then_starting_then_where_to_look_before_the_daemon_logs() {
    let dir = sandbox();
    let d = dir.path().display();
    let daemon = format!("{d}/bin/daemon");
    let (code, out) = serve_sh(dir.path(), "", &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        format!(
            "serve.sh: created example repository {d}/examples/../.deploylite-data/example-repos/docs-site\n\
             serve.sh: created example repository {d}/examples/../.deploylite-data/example-repos/shop\n\
             serve.sh: created example repository {d}/examples/../.deploylite-data/example-repos/webapp\n\
             serve.sh: building deploylite (cargo build --bin deploylite; the first build takes a few minutes)\n\
             cargo: build --bin deploylite --message-format=json-render-diagnostics\n    \
             Blocking waiting for file lock on build directory\n   \
             Compiling deploylite v0.1.0\n\
             serve.sh: starting deploylite serve --config examples/deploylite.yaml ({daemon})\n\
             serve.sh: API: http://127.0.0.1:8080/api/v1/runs (the daemon's log follows)\n\
             serve.sh: in another terminal: {daemon} status | {daemon} status RUN | {daemon} logs RUN -f\n\
             daemon: serve --config examples/deploylite.yaml\n"
        )
    );

    // The example repositories exist now; DEPLOYLITE_BIN skips the build; --listen is where
    // the API is.
    let (code, out) = serve_sh(
        dir.path(),
        "--listen 127.0.0.1:9090",
        &[("DEPLOYLITE_BIN", daemon.clone())],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        format!(
            "serve.sh: starting deploylite serve --config examples/deploylite.yaml --listen 127.0.0.1:9090 ({daemon})\n\
             serve.sh: API: http://127.0.0.1:9090/api/v1/runs (the daemon's log follows)\n\
             serve.sh: in another terminal: {daemon} status | {daemon} status RUN | {daemon} logs RUN -f\n\
             daemon: serve --config examples/deploylite.yaml --listen 127.0.0.1:9090\n"
        )
    );
}

#[test]
fn serve_sh_stops_when_the_build_fails() {
    let dir = sandbox();
    executable(
        &dir.path().join("bin/cargo"),
        "#!/bin/sh\necho 'error: could not compile `deploylite`' >&2\nexit 101\n",
    );
    let (code, out) = serve_sh(dir.path(), "", &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.ends_with(
            "error: could not compile `deploylite`\n\
             serve.sh: the build failed (see cargo's messages above)\n"
        ),
        "{out}"
    );
}
