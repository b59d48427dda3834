//! Stage logs under load, end to end: a stage that prints without end stays within
//! `limits.log_bytes`, the daemon's memory stays bounded while it prints and while large logs
//! are read, and log reads by `?offset` and `Range` return exactly the bytes asked for.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

/// What the daemon may use. It idles at ~15 MB; before logs were bounded, 300 MB printed
/// without a newline took it to 434 MB, and three parallel reads of a large log to 922 MB.
/// Generous on purpose: it must hold on a loaded machine and with a debug build.
const RSS_BOUND_KB: u64 = 200 * 1024;

/// The peak of the daemon's resident memory since it started, in KiB (VmHWM of
/// /proc/PID/status): the kernel keeps it, so no spike between two samples goes unseen.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status:\n{status}"))
}

/// Waits (up to `limit`) for run `id` to be final.
async fn wait_final_within(daemon: &Daemon, id: i64, limit: Duration) -> RunView {
    daemon
        .wait_for_within(
            limit,
            format_args!("run #{id} to be final"),
            || async move { Some(daemon.run_view(id).await).filter(RunView::is_final) },
        )
        .await
}

fn log_file(daemon: &Daemon, run: i64, stage: &str, attempt: i64) -> std::path::PathBuf {
    daemon
        .data_dir
        .join("logs")
        .join(run.to_string())
        .join(format!("{stage}@{attempt}.log"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_printing_100_mb_without_a_newline_leaves_head_marker_and_tail_within_the_limit() {
    const LIMIT: u64 = 1024 * 1024;
    let repo = TestRepo::new();
    repo.pipeline(
        "flood.yaml",
        r#"name: flood
stages:
  flood:
    steps:
      - run: |
          echo flood-start
          head -c 100000000 /dev/zero | tr '\0' x
          echo
          echo flood-done
"#,
    );
    let commit = repo.commit("flood");
    let daemon = Daemon::start(&[&repo], &format!("limits:\n  log_bytes: {LIMIT}\n")).await;
    let pid = daemon.pid().expect("daemon pid");

    let run = daemon.wait_for_commit_run("flood", &commit).await;
    let run = wait_final_within(&daemon, id(&run), Duration::from_secs(180)).await;
    let peak = peak_rss_kb(pid);
    eprintln!("peak daemon RSS while a stage printed 100 MB: {peak} kB");
    assert_eq!(run.status, RunStatus::Success, "{run:#}");
    assert!(
        peak < RSS_BOUND_KB,
        "the daemon's RSS peaked at {peak} kB while the stage printed 100 MB"
    );

    let path = log_file(&daemon, run.id, "flood", 1);
    let text = std::fs::read_to_string(&path).expect("the log file");
    // The limit, plus the one marker line.
    assert!(
        (text.len() as u64) <= LIMIT + 512,
        "the log holds {} bytes",
        text.len()
    );
    assert_eq!(daemon.log(run.id, "flood", None).await, text);
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines {
        assert!(
            line.len() <= 16 * 1024 + 64,
            "a line of {} bytes",
            line.len()
        );
    }
    let marker = lines
        .iter()
        .position(|l| l.contains(" --- log limit reached: "))
        .unwrap_or_else(|| panic!("no marker line in the log"));
    let head = &lines[..marker];
    let tail = &lines[marker + 1..];
    assert!(head.iter().any(|l| l.ends_with(" out flood-start")), "head");
    assert!(
        head.iter().filter(|l| l.contains(" out xxxxxxxx")).count() > 10,
        "the head keeps the first of the output"
    );
    assert!(
        tail.iter().filter(|l| l.contains(" out xxxxxxxx")).count() > 10,
        "the tail keeps the last of the output"
    );
    assert!(
        tail.iter().any(|l| l.ends_with(" out flood-done")),
        "the tail keeps the very end: {:?}",
        &tail[tail.len().saturating_sub(3)..]
    );
    let dropped: u64 = lines[marker]
        .split("log limit reached: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the marker says how many bytes were dropped");
    assert!(
        dropped > 98_000_000,
        "the marker says {dropped} bytes were dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_parallel_reads_of_a_large_log_are_streamed() {
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        "name: ci\nstages:\n  build:\n    steps:\n      - run: echo built\n",
    );
    let commit = repo.commit("ci");
    let daemon = Daemon::start(&[&repo], "").await;
    let run = daemon.wait_for_commit_run("ci", &commit).await;
    let run = daemon.wait_run_done(id(&run)).await;
    assert_eq!(run.status, RunStatus::Success, "{run:#}");

    // A log as large as a busy stage's could be, written where the daemon reads it.
    const SIZE: usize = 120 * 1024 * 1024;
    let path = log_file(&daemon, run.id, "build", 1);
    let line = format!("2026-01-01T00:00:00.000Z out {}\n", "y".repeat(995));
    let block = line.repeat(1024);
    {
        use std::io::Write;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).expect("log"));
        for _ in 0..SIZE / block.len() {
            file.write_all(block.as_bytes()).expect("write");
        }
    }
    let size = std::fs::metadata(&path).expect("size").len();

    let pid = daemon.pid().expect("daemon pid");
    let url = format!("{}/api/v1/runs/{}/stages/build/log", daemon.url, run.id);
    let reads = (0..3).map(|_| {
        let (http, url) = (daemon.http().clone(), url.clone());
        tokio::spawn(async move {
            let mut response = http
                .get(&url)
                .timeout(Duration::from_secs(120))
                .send()
                .await
                .expect("GET log");
            assert_eq!(response.status(), 200);
            let mut received = 0u64;
            // Consumed as it comes, so the test itself holds one chunk at a time.
            while let Some(chunk) = response.chunk().await.expect("body chunk") {
                received += chunk.len() as u64;
            }
            received
        })
    });
    let mut sizes = Vec::new();
    for read in reads.collect::<Vec<_>>() {
        sizes.push(read.await.expect("read task"));
    }
    let peak = peak_rss_kb(pid);
    eprintln!("peak daemon RSS serving three reads of a {size}-byte log: {peak} kB");
    assert_eq!(sizes, vec![size; 3]);
    assert!(
        peak < RSS_BOUND_KB,
        "the daemon's RSS peaked at {peak} kB serving three reads of a {size}-byte log"
    );
}

/// A log request and its expected answer: (Range header, query, status, Content-Range, body).
type Case<'a> = (Option<&'a str>, &'a str, u16, Option<String>, &'a [u8]);

/// GET with an optional Range header: (status, Content-Range, body).
async fn get_range(
    daemon: &Daemon,
    path: &str,
    range: Option<&str>,
) -> (u16, Option<String>, Vec<u8>) {
    let mut request = daemon.http().get(format!("{}{path}", daemon.url));
    if let Some(range) = range {
        request = request.header("Range", range);
    }
    let response = request.send().await.expect("GET");
    let code = response.status().as_u16();
    let content_range = response
        .headers()
        .get("content-range")
        .map(|v| v.to_str().expect("ascii").to_string());
    let body = response.bytes().await.expect("body").to_vec();
    (code, content_range, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_and_ranges_return_exactly_the_bytes_asked_for() {
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        r#"name: ci
stages:
  build:
    retry: { max: 1, backoff: 10ms }
    steps:
      - run: |
          for i in $(seq 1 50); do echo "line $i of attempt $DEPLOYLITE_ATTEMPT"; done
          test "$DEPLOYLITE_ATTEMPT" = 2
"#,
    );
    let commit = repo.commit("ci");
    let daemon = Daemon::start(&[&repo], "").await;
    let run = daemon.wait_for_commit_run("ci", &commit).await;
    let run = daemon.wait_run_done(id(&run)).await;
    assert_eq!(run.status, RunStatus::Success, "{run:#}");
    assert_eq!(run.stage("build").attempt, 2, "{run:#}");

    let latest = std::fs::read(log_file(&daemon, run.id, "build", 2)).expect("log 2");
    let first = std::fs::read(log_file(&daemon, run.id, "build", 1)).expect("log 1");
    let len = latest.len();
    assert!(len > 100, "{len}");
    let base = format!("/api/v1/runs/{}/stages/build/log", run.id);
    let range = |start: usize, end: usize| format!("bytes {start}-{}/{len}", end - 1);

    // (Range header, query, status, Content-Range, body)
    let cases: Vec<Case> = vec![
        (None, "", 200, None, &latest[..]),
        (
            Some("bytes=0-9"),
            "",
            206,
            Some(range(0, 10)),
            &latest[..10],
        ),
        (
            Some("bytes=10-"),
            "",
            206,
            Some(range(10, len)),
            &latest[10..],
        ),
        (
            Some("bytes=7-99999999"),
            "",
            206,
            Some(range(7, len)),
            &latest[7..],
        ),
        (
            Some("bytes=-5"),
            "",
            206,
            Some(range(len - 5, len)),
            &latest[len - 5..],
        ),
        (None, "?offset=33", 200, None, &latest[33..]),
        (None, "?offset=0", 200, None, &latest[..]),
    ];
    for (header, query, code, content_range, expected) in cases {
        let (got_code, got_range, body) =
            get_range(&daemon, &format!("{base}{query}"), header).await;
        assert_eq!(got_code, code, "{header:?} {query}");
        assert_eq!(got_range, content_range, "{header:?} {query}");
        assert!(body == expected, "{header:?} {query}: wrong bytes");
    }
    let (code, _, body) = get_range(&daemon, &format!("{base}?offset={len}"), None).await;
    assert_eq!(
        (code, body.len()),
        (200, 0),
        "an up-to-date follower gets nothing new"
    );

    let unsatisfiable = format!("bytes */{len}");
    for (header, query) in [
        (Some(format!("bytes={len}-")), String::new()),
        (Some("bytes=20-10".to_string()), String::new()),
        (None, format!("?offset={}", len + 1)),
    ] {
        let (code, content_range, _) =
            get_range(&daemon, &format!("{base}{query}"), header.as_deref()).await;
        assert_eq!(code, 416, "{header:?} {query}");
        assert_eq!(content_range.as_deref(), Some(unsatisfiable.as_str()));
    }

    // ?attempt= still picks the attempt, and ranges apply to it.
    let (code, content_range, body) =
        get_range(&daemon, &format!("{base}?attempt=1"), Some("bytes=0-4")).await;
    assert_eq!(code, 206);
    assert_eq!(content_range, Some(format!("bytes 0-4/{}", first.len())));
    assert_eq!(body, &first[..5]);
    let (code, _, body) = get_range(&daemon, &format!("{base}?attempt=1&offset=3"), None).await;
    assert_eq!(code, 200);
    assert_eq!(body, &first[3..]);

    let (code, _, _) = get_range(&daemon, &format!("{base}?offset=1"), Some("bytes=0-1")).await;
    assert_eq!(code, 400, "offset and Range together are refused");
}
