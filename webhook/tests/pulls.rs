//! Pull/merge requests as watched state, end to end: a real store and watcher over real git
//! repositories whose pull request heads live where the forges keep them (`refs/pull/N/head`,
//! `refs/merge-requests/N/head`), and fake GitHub and GitLab APIs on loopback serving the open
//! pull/merge requests in the forges' own formats (GitHub's `pull-request` example of its
//! OpenAPI description, every served item validated against its schema; GitLab's documented
//! listing example), with ETags and 304s, pages and request counts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod inbound_support;

use std::time::Duration;

use deploylite_reconciler::store::PullRequestInfo;
use inbound_support::{
    bytes, commit_on, fixture, git, head, Harness, Options, GH_REPO, GITHUB_SLUG, GITLAB_SLUG,
    GL_REPO,
};
// The fake forges and the OpenAPI validator the forge crate's tests use too (the listing client
// is `deploylite_forge::pulls`; its pokes come through this crate's webhooks).
use deploylite_testkit::forge::fake::{self, FakeForge};
use deploylite_testkit::forge::openapi::{self, OpenApi};
use serde_json::{json, Value};

/// GitHub's pull request example (`pulls/get` in the OpenAPI subset; the listing's items carry
/// the same fields), made pull request `number` of the watched repository at `head_sha`, from
/// `head_repo`, by an author with `association`, targeting `main` at `base_sha`.
fn github_pull(
    number: i64,
    head_sha: &str,
    base_sha: &str,
    head_repo: &str,
    association: &str,
) -> Value {
    let spec = OpenApi::github();
    let mut pr = spec.example("pull-request").cloned().expect("the example");
    pr["number"] = json!(number);
    pr["state"] = json!("open");
    pr["head"]["sha"] = json!(head_sha);
    pr["head"]["ref"] = json!("changes");
    pr["head"]["repo"]["full_name"] = json!(head_repo);
    pr["base"]["ref"] = json!("main");
    pr["base"]["sha"] = json!(base_sha);
    pr["base"]["repo"]["full_name"] = json!(GITHUB_SLUG);
    pr["author_association"] = json!(association);
    // The published example predates the schema's required `type` of a team (its own schema
    // refuses it): given here so that the object served is a valid `pull-request`.
    pr["requested_teams"][0]["type"] = json!("organization");
    pr
}

/// A listing item in GitLab's documented shape (a merged MR from project 2 into project 3), made the open
/// merge request `iid` at `sha` from project `source_project` into project 3, targeting `main`.
fn gitlab_mr(iid: i64, sha: &str, source_project: i64) -> Value {
    let listing =
        openapi::fixtures_dir().join("gitlab/api.project-merge-requests.list.response.json");
    let listing: Value = serde_json::from_str(&std::fs::read_to_string(&listing).unwrap()).unwrap();
    let mut mr = listing[0].clone();
    mr["iid"] = json!(iid);
    mr["sha"] = json!(sha);
    mr["state"] = json!("opened");
    mr["merged_by"] = Value::Null;
    mr["merged_at"] = Value::Null;
    mr["target_branch"] = json!("main");
    mr["source_project_id"] = json!(source_project);
    mr["target_project_id"] = json!(3);
    mr
}

/// A `pull_request` webhook payload (number 2) with its head and base made commits of the
/// temp repository.
fn pull_request_hook(action: &str, head_sha: &str, base_sha: &str) -> Value {
    let mut p = fixture(&format!("github/webhooks/pull_request.{action}"));
    p["pull_request"]["head"]["sha"] = json!(head_sha);
    p["pull_request"]["base"]["sha"] = json!(base_sha);
    if p.get("after").is_some() {
        p["after"] = json!(head_sha);
    }
    p
}

fn with_github(forge: &FakeForge, close_grace: Duration) -> Options {
    Options {
        github_api: Some((forge.url.clone(), fake::PAT.into())),
        pull_requests: Some(close_grace),
        ..Options::default()
    }
}

/// A commit on `branch`, published as the pull request ref `git_ref` of the base repository.
/// The branch is then deleted: like a fork's, it is not a branch of the base repository (and
/// so not a push to run).
fn pull_request_head(repo: &std::path::Path, branch: &str, git_ref: &str) -> String {
    let sha = commit_on(repo, branch, &format!("{branch}.txt"));
    git(repo, &["update-ref", git_ref, &sha]);
    git(repo, &["branch", "-q", "-D", branch]);
    sha
}

#[tokio::test]
async fn a_pull_request_opened_while_the_daemon_was_stopped_runs_once_after_the_next_poll() {
    let forge = FakeForge::github().await;
    let stopped = Harness::prepare(with_github(&forge, Duration::ZERO));
    let base = head(&stopped.gh_repo, "main");
    let head_sha = pull_request_head(&stopped.gh_repo, "changes", "refs/pull/5/head");
    forge.set_pull_requests(vec![github_pull(
        5,
        &head_sha,
        &base,
        GITHUB_SLUG,
        "CONTRIBUTOR",
    )]);

    // The daemon starts: its first poll lists the pull request no webhook announced.
    let h = stopped.start().await;
    let run = h
        .wait_for_run(GH_REPO, "the pull request's run", |r| r.commit == head_sha)
        .await;
    assert_eq!(
        (
            run.trigger.as_str(),
            run.git_ref.as_str(),
            run.awaiting_approval
        ),
        ("pull_request", "refs/pull/5/head", false)
    );
    assert_eq!(
        run.pull_request,
        Some(PullRequestInfo {
            number: 5,
            head_repo: GITHUB_SLUG.into(),
            untrusted: false
        })
    );
    // Later polls find it recorded: once.
    h.poll(GH_REPO).await;
    h.poll(GH_REPO).await;
    assert_eq!(
        h.attempts(GH_REPO, &head_sha).await,
        vec![("ci".to_string(), 1)]
    );
    assert_eq!(forge.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn a_merge_request_whose_webhook_was_never_delivered_runs_after_the_next_poll() {
    let forge = FakeForge::gitlab().await;
    let h = Harness::start(Options {
        gitlab_api: Some((forge.url.clone(), fake::PAT.into())),
        pull_requests: Some(Duration::ZERO),
        ..Options::default()
    })
    .await;
    // Two merge requests are opened; neither hook arrives. !4 comes from a branch of the
    // project, !5 from a fork (project 99): its code is untrusted, as for the hook.
    let own = pull_request_head(&h.gl_repo, "feature", "refs/merge-requests/4/head");
    let fork = pull_request_head(&h.gl_repo, "forked", "refs/merge-requests/5/head");
    forge.set_pull_requests(vec![gitlab_mr(4, &own, 3), gitlab_mr(5, &fork, 99)]);
    h.poll(GL_REPO).await;

    let run = h
        .wait_for_run(GL_REPO, "!4's run", |r| r.commit == own)
        .await;
    assert_eq!(
        (
            run.trigger.as_str(),
            run.git_ref.as_str(),
            run.awaiting_approval,
            run.pull_request
        ),
        (
            "pull_request",
            "refs/merge-requests/4/head",
            false,
            Some(PullRequestInfo {
                number: 4,
                head_repo: GITLAB_SLUG.into(),
                untrusted: false
            })
        )
    );
    let forked = h
        .wait_for_run(GL_REPO, "!5's run", |r| r.commit == fork)
        .await;
    assert_eq!(
        (
            forked.git_ref.as_str(),
            forked.awaiting_approval,
            forked.pull_request
        ),
        (
            "refs/merge-requests/5/head",
            true,
            Some(PullRequestInfo {
                number: 5,
                head_repo: "project 99".into(),
                untrusted: true
            })
        )
    );
    assert_eq!(forge.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn poll_and_webhook_for_the_same_head_give_one_run() {
    let forge = FakeForge::github().await;
    let h = Harness::start(with_github(&forge, Duration::ZERO)).await;
    let base = head(&h.gh_repo, "main");
    let head_sha = pull_request_head(&h.gh_repo, "changes", "refs/pull/2/head");
    forge.set_pull_requests(vec![github_pull(2, &head_sha, &base, GITHUB_SLUG, "OWNER")]);

    // The webhook (which also pokes) and a poll race for the same head.
    let (status, body) = h
        .github(
            "pull_request",
            "d-same-1",
            &bytes(&pull_request_hook("opened", &head_sha, &base)),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    h.poll(GH_REPO).await;
    h.wait_for_run(GH_REPO, "the head's run", |r| r.commit == head_sha)
        .await;
    h.poll(GH_REPO).await;
    assert_eq!(
        h.attempts(GH_REPO, &head_sha).await,
        vec![("ci".to_string(), 1)]
    );
    assert_eq!(forge.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn an_unchanged_pull_request_list_costs_one_conditional_request_per_poll() {
    let forge = FakeForge::github().await;
    let h = Harness::start(with_github(&forge, Duration::ZERO)).await;
    let base = head(&h.gh_repo, "main");
    let head_sha = pull_request_head(&h.gh_repo, "changes", "refs/pull/3/head");
    forge.set_pull_requests(vec![github_pull(
        3,
        &head_sha,
        &base,
        GITHUB_SLUG,
        "MEMBER",
    )]);
    h.poll(GH_REPO).await;
    h.wait_for_run(GH_REPO, "the head's run", |r| r.commit == head_sha)
        .await;

    let before = forge.listings().len();
    for _ in 0..3 {
        h.poll(GH_REPO).await;
    }
    let listings = forge.listings().split_off(before);
    assert_eq!(listings.len(), 3, "one request per poll: {listings:?}");
    for (query, if_none_match, status) in &listings {
        assert_eq!(query, "state=open&per_page=100");
        assert!(
            if_none_match
                .as_deref()
                .is_some_and(|e| e.starts_with("W/\"")),
            "{listings:?}"
        );
        assert_eq!(*status, 304, "{listings:?}");
    }

    // A change (a new head) is a 200 again, and is recorded.
    let newer = pull_request_head(&h.gh_repo, "changes-2", "refs/pull/3/head");
    forge.set_pull_requests(vec![github_pull(3, &newer, &base, GITHUB_SLUG, "MEMBER")]);
    h.poll(GH_REPO).await;
    h.wait_for_run(GH_REPO, "the new head's run", |r| r.commit == newer)
        .await;
    assert_eq!(forge.listings().last().map(|l| l.2), Some(200));
    assert_eq!(forge.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn a_listing_longer_than_a_page_is_read_page_by_page_each_conditionally() {
    let forge = FakeForge::github().await;
    let h = Harness::start(with_github(&forge, Duration::ZERO)).await;
    let base = head(&h.gh_repo, "main");
    let head_sha = pull_request_head(&h.gh_repo, "changes", "refs/pull/1/head");
    // 101 open pull requests (at one head, which is enough for paging): two pages of 100.
    let mut refs = String::new();
    let mut pulls = Vec::new();
    for n in 1..=101 {
        refs.push_str(&format!("update refs/pull/{n}/head {head_sha}\n"));
        pulls.push(github_pull(n, &head_sha, &base, GITHUB_SLUG, "MEMBER"));
    }
    let mut child = std::process::Command::new("git")
        .args(["update-ref", "--stdin"])
        .current_dir(&h.gh_repo)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), refs.as_bytes()).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    forge.set_pull_requests(pulls);

    let before = forge.listings().len();
    h.poll(GH_REPO).await;
    h.wait_for_run(GH_REPO, "the head's run", |r| r.commit == head_sha)
        .await;
    let first: Vec<_> = forge.listings().split_off(before);
    assert_eq!(
        first
            .iter()
            .map(|l| (l.0.as_str(), l.2))
            .collect::<Vec<_>>(),
        vec![
            ("state=open&per_page=100", 200),
            ("state=open&per_page=100&page=2", 200)
        ]
    );
    let before = forge.listings().len();
    h.poll(GH_REPO).await;
    let again: Vec<_> = forge.listings().split_off(before);
    assert_eq!(
        again
            .iter()
            .map(|l| (l.0.as_str(), l.2))
            .collect::<Vec<_>>(),
        vec![
            ("state=open&per_page=100", 304),
            ("state=open&per_page=100&page=2", 304)
        ]
    );
    assert_eq!(forge.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn a_closed_pull_requests_queued_runs_are_cancelled_by_the_poll() {
    let forge = FakeForge::github().await;
    let h = Harness::start(with_github(&forge, Duration::ZERO)).await;
    let base = head(&h.gh_repo, "main");
    let head_sha = pull_request_head(&h.gh_repo, "changes", "refs/pull/6/head");
    forge.set_pull_requests(vec![github_pull(6, &head_sha, &base, GITHUB_SLUG, "OWNER")]);
    h.poll(GH_REPO).await;
    let run = h
        .wait_for_run(GH_REPO, "the head's run", |r| r.commit == head_sha)
        .await;

    // Closed; the `closed` webhook is lost. The next poll no longer lists it.
    forge.set_pull_requests(Vec::new());
    h.poll(GH_REPO).await;
    let cancelled = h
        .wait_for_run(GH_REPO, "the run cancelled", |r| {
            r.id == run.id && r.cancel_requested
        })
        .await;
    assert_eq!(
        cancelled.pending_reason.as_deref(),
        Some("cancelled: the pull request was closed")
    );
}

#[tokio::test]
async fn a_late_webhook_for_a_closed_pull_request_has_its_runs_cancelled_by_the_poll_it_makes() {
    let forge = FakeForge::github().await;
    let h = Harness::start(with_github(&forge, Duration::ZERO)).await;
    // No pull request is open, and the listing says so (then 304s).
    h.poll(GH_REPO).await;
    h.poll(GH_REPO).await;
    assert_eq!(forge.listings().last().map(|l| l.2), Some(304));

    // An `opened` delivery comes late (redelivered after the pull request was closed): it
    // records the head, and its poke compares even an unchanged listing with the store.
    let base = head(&h.gh_repo, "main");
    let head_sha = pull_request_head(&h.gh_repo, "changes", "refs/pull/2/head");
    let (status, body) = h
        .github(
            "pull_request",
            "d-late-1",
            &bytes(&pull_request_hook("opened", &head_sha, &base)),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let run = h
        .wait_for_run(GH_REPO, "the late webhook's run", |r| r.commit == head_sha)
        .await;
    let cancelled = h
        .wait_for_run(GH_REPO, "the run cancelled", |r| {
            r.id == run.id && r.cancel_requested
        })
        .await;
    assert_eq!(
        cancelled.pending_reason.as_deref(),
        Some("cancelled: the pull request was closed")
    );
}

#[tokio::test]
async fn a_listing_that_lags_an_opened_webhook_does_not_cancel_its_runs() {
    let forge = FakeForge::github().await;
    // The daemon's default grace: the runs are far younger.
    let h = Harness::start(with_github(
        &forge,
        deploylite_reconciler::pulls::DEFAULT_CLOSE_GRACE,
    ))
    .await;
    let base = head(&h.gh_repo, "main");
    let head_sha = pull_request_head(&h.gh_repo, "changes", "refs/pull/2/head");
    // The webhook arrives; GitHub's listing does not show the pull request yet.
    let (status, body) = h
        .github(
            "pull_request",
            "d-lag-1",
            &bytes(&pull_request_hook("opened", &head_sha, &base)),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let run = h
        .wait_for_run(GH_REPO, "the webhook's run", |r| r.commit == head_sha)
        .await;
    h.poll(GH_REPO).await;
    let after = h.runs(GH_REPO).await;
    let run = after.iter().find(|r| r.id == run.id).unwrap();
    assert!(!run.cancel_requested, "{run:?}");
}

#[tokio::test]
async fn a_close_and_a_reopen_back_to_back_are_applied_in_that_order() {
    let h = Harness::start(Options::default()).await;
    let base = head(&h.gh_repo, "main");
    let head_sha = commit_on(&h.gh_repo, "changes", "pr.txt");
    let opened = bytes(&pull_request_hook("opened", &head_sha, &base));
    assert_eq!(h.github("pull_request", "d-order-1", &opened).await.0, 202);
    let run = h
        .wait_for_run(GH_REPO, "the opened PR's run", |r| r.commit == head_sha)
        .await;

    // Back to back, each answered before the next is sent, neither applied yet (probably).
    let closed = bytes(&pull_request_hook("closed", &head_sha, &base));
    let reopened = bytes(&pull_request_hook("reopened", &head_sha, &base));
    assert_eq!(h.github("pull_request", "d-order-2", &closed).await.0, 202);
    assert_eq!(
        h.github("pull_request", "d-order-3", &reopened).await.0,
        202
    );

    // Close first: the run is cancelled; then the reopen runs it again as attempt 2. (The other
    // order would leave attempt 1 cancelled and no attempt 2.)
    let rerun = h
        .wait_for_run(GH_REPO, "the reopened PR's new attempt", |r| {
            r.commit == head_sha && r.run_attempt == 2
        })
        .await;
    assert!(!rerun.cancel_requested, "{rerun:?}");
    let first = h
        .runs(GH_REPO)
        .await
        .into_iter()
        .find(|r| r.id == run.id)
        .unwrap();
    assert!(first.cancel_requested, "{first:?}");
}

#[tokio::test]
async fn an_open_and_a_close_back_to_back_leave_the_runs_cancelled() {
    let h = Harness::start(Options::default()).await;
    let base = head(&h.gh_repo, "main");
    let head_sha = commit_on(&h.gh_repo, "changes", "pr.txt");
    // Recording the head (git reads, parsing) takes longer than cancelling: applied out of
    // order, the close would find nothing to cancel and the runs of a closed pull request
    // would stay queued.
    let opened = bytes(&pull_request_hook("opened", &head_sha, &base));
    let closed = bytes(&pull_request_hook("closed", &head_sha, &base));
    assert_eq!(h.github("pull_request", "d-oc-1", &opened).await.0, 202);
    assert_eq!(h.github("pull_request", "d-oc-2", &closed).await.0, 202);
    let run = h
        .wait_for_run(GH_REPO, "the run, cancelled", |r| {
            r.commit == head_sha && r.cancel_requested
        })
        .await;
    assert_eq!(
        run.pending_reason.as_deref(),
        Some("cancelled: the pull request was closed")
    );
}

#[tokio::test]
async fn a_rate_limited_listing_waits_for_the_reset() {
    let forge = FakeForge::github().await;
    let h = Harness::start(with_github(&forge, Duration::ZERO)).await;
    let reset = chrono::Utc::now().timestamp() + 3600;
    forge.script(
        "GET",
        "/pulls",
        vec![fake::Reply::status(403)
            .header("x-ratelimit-remaining", 0)
            .header("x-ratelimit-reset", reset)],
    );
    h.poll(GH_REPO).await;
    let before = forge.listings();
    assert_eq!(before.last().map(|l| l.2), Some(403), "{before:?}");
    // Until the reset, polls ask nothing.
    h.poll(GH_REPO).await;
    h.poll(GH_REPO).await;
    assert_eq!(forge.listings().len(), before.len());
}
