//! Inbound forge webhooks end to end: real HTTP on loopback, a real store and watcher over real
//! git repositories, the forges' own example payloads (tests/fixtures) adapted at run time:
//! commit ids are replaced by commits of the temp repositories, and every other change is
//! commented where it is made.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod inbound_support;

use std::time::{Duration, Instant};

use deploylite_forge::forges::WebhookLimits;
use deploylite_reconciler::status::{RunStatus, StageStatus};
use deploylite_reconciler::store::PullRequestInfo;
use inbound_support::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// GitHub

#[tokio::test]
async fn github_push_of_a_new_branch_runs_its_head() {
    let h = Harness::start(Options::default()).await;
    let sha = commit_on(&h.gh_repo, "master", "a.txt");
    let mut p = fixture("github/webhooks/push.branch-created");
    p["after"] = json!(sha);
    p["head_commit"]["id"] = json!(sha);
    p["commits"][0]["id"] = json!(sha);
    let (status, body) = h.github("push", "d-push-1", &bytes(&p)).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (202, Some("accepted")),
        "{body}"
    );
    let run = h
        .wait_for_run(GH_REPO, "the pushed branch's run", |r| {
            r.git_ref == "refs/heads/master"
        })
        .await;
    assert_eq!(
        (
            run.commit.as_str(),
            run.trigger.as_str(),
            run.pipeline.as_str()
        ),
        (sha.as_str(), "push", "ci")
    );
    assert_eq!(run.run_attempt, 1);
    assert!(run.pull_request.is_none());
}

#[tokio::test]
async fn github_tag_push_runs_the_tag_and_its_deletion_cancels_queued_runs() {
    let h = Harness::start(Options::default()).await;
    let main = head(&h.gh_repo, "main");
    git(&h.gh_repo, &["tag", "simple-tag", &main]);
    let mut created = fixture("github/webhooks/push.tag-created.ghes-3.5");
    created["after"] = json!(main);
    let (status, _) = h.github("push", "d-tag-1", &bytes(&created)).await;
    assert_eq!(status, 202);
    let run = h
        .wait_for_run(GH_REPO, "the tag's run", |r| {
            r.git_ref == "refs/tags/simple-tag"
        })
        .await;
    assert_eq!(
        (run.trigger.as_str(), run.commit.as_str()),
        ("tag", main.as_str())
    );
    assert!(!run.cancel_requested);

    git(&h.gh_repo, &["tag", "-d", "simple-tag"]);
    let mut deleted = fixture("github/webhooks/push.tag-deleted");
    deleted["before"] = json!(main);
    let (status, _) = h.github("push", "d-tag-2", &bytes(&deleted)).await;
    assert_eq!(status, 202);
    let cancelled = h
        .wait_for_run(GH_REPO, "the tag's run cancelled", |r| {
            r.id == run.id && r.cancel_requested
        })
        .await;
    assert_eq!(
        cancelled.pending_reason.as_deref(),
        Some("cancelled: the ref was deleted")
    );
    // Other refs' runs are untouched.
    assert!(h
        .runs(GH_REPO)
        .await
        .iter()
        .filter(|r| r.git_ref == "refs/heads/main")
        .all(|r| !r.cancel_requested));
}

#[tokio::test]
async fn github_branch_deletion_cancels_that_branchs_queued_runs() {
    let h = Harness::start(Options::default()).await;
    let sha = commit_on(&h.gh_repo, "feature", "f.txt");
    let mut push = fixture("github/webhooks/push.branch-created");
    push["ref"] = json!("refs/heads/feature");
    push["after"] = json!(sha);
    assert_eq!(h.github("push", "d-b-1", &bytes(&push)).await.0, 202);
    let run = h
        .wait_for_run(GH_REPO, "feature's run", |r| {
            r.git_ref == "refs/heads/feature"
        })
        .await;

    git(&h.gh_repo, &["branch", "-D", "feature"]);
    // GitHub publishes no example of a branch deletion, only of a tag deletion
    // (push.tag-deleted): the same payload with the branch's ref stands in for it.
    let mut deleted = fixture("github/webhooks/push.tag-deleted");
    deleted["ref"] = json!("refs/heads/feature");
    deleted["before"] = json!(sha);
    assert_eq!(h.github("push", "d-b-2", &bytes(&deleted)).await.0, 202);
    h.wait_for_run(GH_REPO, "feature's run cancelled", |r| {
        r.id == run.id && r.cancel_requested
    })
    .await;
    let main_runs: Vec<_> = h
        .runs(GH_REPO)
        .await
        .into_iter()
        .filter(|r| r.git_ref == "refs/heads/main")
        .collect();
    assert!(
        main_runs.iter().all(|r| !r.cancel_requested),
        "only the deleted ref's runs are cancelled"
    );
}

/// `pull_request` payloads with the head and base replaced by commits of the temp repository.
fn pull_request(action_fixture: &str, head_sha: &str, base_sha: &str) -> Value {
    let mut p = fixture(&format!("github/webhooks/pull_request.{action_fixture}"));
    p["pull_request"]["head"]["sha"] = json!(head_sha);
    p["pull_request"]["base"]["sha"] = json!(base_sha);
    if p.get("after").is_some() {
        p["after"] = json!(head_sha);
    }
    p
}

#[tokio::test]
async fn github_pull_request_lifecycle() {
    let h = Harness::start(Options::default()).await;
    let base = head(&h.gh_repo, "main");
    let head1 = commit_on(&h.gh_repo, "changes", "pr.txt");
    let pr_ref = "refs/pull/2/head";

    // opened → a pull_request run of the head commit, on the PR's ref.
    let (status, body) = h
        .github(
            "pull_request",
            "d-pr-1",
            &bytes(&pull_request("opened", &head1, &base)),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let run1 = h
        .wait_for_run(GH_REPO, "the opened PR's run", |r| r.commit == head1)
        .await;
    assert_eq!(
        (run1.trigger.as_str(), run1.git_ref.as_str()),
        ("pull_request", pr_ref)
    );
    assert_eq!(
        run1.pull_request,
        Some(PullRequestInfo {
            number: 2,
            head_repo: GITHUB_SLUG.into(),
            untrusted: false
        })
    );

    // synchronize → the new head runs.
    let head2 = commit_on(&h.gh_repo, "changes", "pr2.txt");
    assert_eq!(
        h.github(
            "pull_request",
            "d-pr-2",
            &bytes(&pull_request("synchronize", &head2, &base))
        )
        .await
        .0,
        202
    );
    let run2 = h
        .wait_for_run(GH_REPO, "the synchronized head's run", |r| {
            r.commit == head2
        })
        .await;
    assert_eq!(
        (run2.trigger.as_str(), run2.git_ref.as_str()),
        ("pull_request", pr_ref)
    );

    // closed → the PR's queued runs are cancelled.
    assert_eq!(
        h.github(
            "pull_request",
            "d-pr-3",
            &bytes(&pull_request("closed", &head2, &base))
        )
        .await
        .0,
        202
    );
    for id in [run1.id, run2.id] {
        let r = h
            .wait_for_run(GH_REPO, "the PR's runs cancelled", |r| {
                r.id == id && r.cancel_requested
            })
            .await;
        assert_eq!(
            r.pending_reason.as_deref(),
            Some("cancelled: the pull request was closed")
        );
    }

    // reopened → the head as GitHub reports it on reopening (the branch gained a commit while
    // the PR was closed) runs.
    let head3 = commit_on(&h.gh_repo, "changes", "pr3.txt");
    assert_eq!(
        h.github(
            "pull_request",
            "d-pr-4",
            &bytes(&pull_request("reopened", &head3, &base))
        )
        .await
        .0,
        202
    );
    let run3 = h
        .wait_for_run(GH_REPO, "the reopened PR's run", |r| r.commit == head3)
        .await;
    assert_eq!(
        (
            run3.trigger.as_str(),
            run3.git_ref.as_str(),
            run3.cancel_requested
        ),
        ("pull_request", pr_ref, false)
    );

    // Actions DeployLite does not act on are acknowledged and ignored.
    let mut labeled = pull_request("opened", &head3, &base);
    labeled["action"] = json!("labeled");
    let (status, body) = h.github("pull_request", "d-pr-5", &bytes(&labeled)).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (202, Some("ignored")),
        "{body}"
    );
}

#[tokio::test]
async fn github_pull_request_reopened_at_the_same_head_runs_its_cancelled_run_again() {
    let h = Harness::start(Options::default()).await;
    let base = head(&h.gh_repo, "main");
    let head_sha = commit_on(&h.gh_repo, "changes", "pr.txt");
    let pr_ref = "refs/pull/2/head";

    assert_eq!(
        h.github(
            "pull_request",
            "d-ro-1",
            &bytes(&pull_request("opened", &head_sha, &base))
        )
        .await
        .0,
        202
    );
    let run1 = h
        .wait_for_run(GH_REPO, "the opened PR's run", |r| r.commit == head_sha)
        .await;

    // closed → the queued run is cancelled. (No scheduler runs here, so the cancellation stays
    // requested: a reopen soon after a close finds it so too.)
    assert_eq!(
        h.github(
            "pull_request",
            "d-ro-2",
            &bytes(&pull_request("closed", &head_sha, &base))
        )
        .await
        .0,
        202
    );
    h.wait_for_run(GH_REPO, "the PR's run cancelled", |r| {
        r.id == run1.id && r.cancel_requested
    })
    .await;

    // reopened without new commits: GitHub's example names the same head as on opening. The
    // cancelled run runs again as a new attempt of the same run identity.
    let reopened = bytes(&pull_request("reopened", &head_sha, &base));
    let (status, body) = h.github("pull_request", "d-ro-3", &reopened).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (202, Some("accepted")),
        "{body}"
    );
    let rerun = h
        .wait_for_run(GH_REPO, "the reopened PR's new attempt", |r| {
            r.commit == head_sha && r.run_attempt == 2
        })
        .await;
    assert_eq!(
        (
            rerun.pipeline.as_str(),
            rerun.trigger.as_str(),
            rerun.git_ref.as_str(),
            rerun.status,
            rerun.cancel_requested
        ),
        ("ci", "pull_request", pr_ref, RunStatus::Queued, false)
    );
    assert_eq!(rerun.pull_request, run1.pull_request);
    let (_, stages) = h.store.get_run(rerun.id).await.unwrap().unwrap();
    assert_eq!(
        stages
            .iter()
            .map(|s| (s.name.as_str(), s.status, s.attempt.get()))
            .collect::<Vec<_>>(),
        vec![("build", StageStatus::Queued, 0)]
    );

    // The same delivery again is a replay; the new attempt stays the only one.
    let (status, body) = h.github("pull_request", "d-ro-3", &reopened).await;
    assert_eq!((status, body), (200, json!({"status": "duplicate"})));
    assert_eq!(
        h.attempts(GH_REPO, &head_sha).await,
        vec![("ci".to_string(), 1), ("ci".to_string(), 2)]
    );
}

#[tokio::test]
async fn github_pull_request_reopened_leaves_succeeded_and_running_runs_alone() {
    let h = Harness::start(Options::default()).await;
    let base = head(&h.gh_repo, "main");
    // The head runs three pipelines: `ci` (the repository's), and two the branch adds.
    let pr_pipeline = |name: &str| {
        format!("name: {name}\non:\n  pull_request:\nstages:\n  build:\n    steps: [{{ run: \"true\" }}]\n")
    };
    let (lint, deploy) = (pr_pipeline("lint"), pr_pipeline("deploy"));
    let head_sha = commit_files_on(
        &h.gh_repo,
        "changes",
        &[
            (".deploylite/pipelines/lint.yaml", &lint),
            (".deploylite/pipelines/deploy.yaml", &deploy),
        ],
    );
    assert_eq!(
        h.github(
            "pull_request",
            "d-rs-1",
            &bytes(&pull_request("opened", &head_sha, &base))
        )
        .await
        .0,
        202
    );
    let runs = eventually("the head's three runs", || async {
        let runs: Vec<_> = h
            .runs(GH_REPO)
            .await
            .into_iter()
            .filter(|r| r.commit == head_sha)
            .collect();
        (runs.len() == 3).then_some(runs)
    })
    .await;
    let id_of = |pipeline: &str| {
        runs.iter()
            .find(|r| r.pipeline == pipeline)
            .map(|r| r.id)
            .unwrap()
    };
    let (ci, lint, deploy) = (id_of("ci"), id_of("lint"), id_of("deploy"));
    // ci succeeded and deploy's stage is running before the PR is closed; lint is still queued.
    h.start_build(ci).await;
    h.succeed_build(ci).await;
    h.start_build(deploy).await;

    assert_eq!(
        h.github(
            "pull_request",
            "d-rs-2",
            &bytes(&pull_request("closed", &head_sha, &base))
        )
        .await
        .0,
        202
    );
    h.wait_for_run(GH_REPO, "lint cancelled", |r| {
        r.id == lint && r.cancel_requested
    })
    .await;
    // Closing cancels only what has not started.
    let after_close = h.runs(GH_REPO).await;
    for (id, status) in [(ci, RunStatus::Success), (deploy, RunStatus::Running)] {
        let run = after_close.iter().find(|r| r.id == id).unwrap();
        assert_eq!(
            (run.status, run.cancel_requested),
            (status, false),
            "{run:?}"
        );
    }

    assert_eq!(
        h.github(
            "pull_request",
            "d-rs-3",
            &bytes(&pull_request("reopened", &head_sha, &base))
        )
        .await
        .0,
        202
    );
    // lint's new attempt is written in the same transaction that passed over ci and deploy, so
    // once it is there the reopen has done all it will.
    h.wait_for_run(GH_REPO, "lint's new attempt", |r| {
        r.commit == head_sha && r.pipeline == "lint" && r.run_attempt == 2
    })
    .await;
    assert_eq!(
        h.attempts(GH_REPO, &head_sha).await,
        vec![
            ("ci".to_string(), 1),
            ("deploy".to_string(), 1),
            ("lint".to_string(), 1),
            ("lint".to_string(), 2)
        ],
        "a succeeded or running run is not run again"
    );
}

/// A pull request whose head lives in a fork, opened by someone who is not a member. No
/// published example comes from a fork: the head repository is made another one, and the
/// author's association (OWNER in the example) that of an outside contributor.
fn fork_pull_request(action: &str, head_sha: &str, base_sha: &str, number: i64) -> Value {
    let mut p = pull_request(action, head_sha, base_sha);
    p["pull_request"]["head"]["repo"]["full_name"] = json!("forker/Hello-World");
    p["pull_request"]["author_association"] = json!("CONTRIBUTOR");
    p["pull_request"]["user"]["login"] = json!("forker");
    p["number"] = json!(number);
    p
}

/// A comment on pull request `number`. The published example is a comment on an issue: GitHub
/// adds `issue.pull_request` for a pull request's comments.
fn pr_comment(
    number: i64,
    body: &str,
    association: &str,
    written_at: chrono::DateTime<chrono::Utc>,
) -> Value {
    let mut p = fixture("github/webhooks/issue_comment.created");
    p["issue"]["number"] = json!(number);
    p["issue"]["pull_request"] = json!({
        "url": format!("https://api.github.com/repos/Codertocat/Hello-World/pulls/{number}")
    });
    p["comment"]["body"] = json!(body);
    p["comment"]["author_association"] = json!(association);
    p["comment"]["created_at"] =
        json!(written_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    p
}

#[tokio::test]
async fn a_fork_pull_request_by_a_non_member_waits_for_approval_and_runs_the_base_pipelines() {
    let h = Harness::start(Options::default()).await;
    let base = head(&h.gh_repo, "main");
    // The fork rewrites the pipeline: were its YAML read, `exfiltrate` would run.
    let head_sha = commit_files_on(
        &h.gh_repo,
        "from-fork",
        &[(
            ".deploylite/pipelines/ci.yaml",
            "name: ci\non: { pull_request: }\nstages:\n  exfiltrate:\n    steps: [{ run: env }]\n",
        )],
    );
    let p = fork_pull_request("opened", &head_sha, &base, 7);
    assert_eq!(
        h.github("pull_request", "d-fork-1", &bytes(&p)).await.0,
        202
    );
    let run = h
        .wait_for_run(GH_REPO, "the fork PR's run", |r| r.commit == head_sha)
        .await;
    assert_eq!(run.git_ref, "refs/pull/7/head");
    assert_eq!(
        run.pull_request,
        Some(PullRequestInfo {
            number: 7,
            head_repo: "forker/Hello-World".into(),
            untrusted: true
        })
    );
    assert_eq!(run.status, RunStatus::Queued);
    assert!(run.awaiting_approval);
    let reason = run.pending_reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with(
            "approval required: pull request #7 from fork forker/Hello-World by forker"
        ),
        "{reason}"
    );
    let (_, stages) = h.store.get_run(run.id).await.unwrap().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["build"],
        "the stages come from the base branch's pipeline"
    );
}

#[tokio::test]
async fn a_fork_pull_request_by_a_member_is_trusted() {
    let h = Harness::start(Options::default()).await;
    let base = head(&h.gh_repo, "main");
    let head_sha = commit_on(&h.gh_repo, "member-fork", "fork.txt");
    let mut p = fork_pull_request("opened", &head_sha, &base, 8);
    p["pull_request"]["author_association"] = json!("MEMBER");
    assert_eq!(
        h.github("pull_request", "d-fork-m", &bytes(&p)).await.0,
        202
    );
    let run = h
        .wait_for_run(GH_REPO, "the member's fork PR run", |r| {
            r.commit == head_sha
        })
        .await;
    assert!(!run.awaiting_approval);
    assert_eq!(run.pull_request.map(|p| p.untrusted), Some(false));
}

#[tokio::test]
async fn an_approve_comment_by_a_member_approves_only_the_head_it_saw() {
    let h = Harness::start(Options::default()).await;
    let base = head(&h.gh_repo, "main");
    let head1 = commit_on(&h.gh_repo, "from-fork", "one.txt");
    let p = fork_pull_request("opened", &head1, &base, 9);
    assert_eq!(h.github("pull_request", "d-a-1", &bytes(&p)).await.0, 202);
    let first = h
        .wait_for_run(GH_REPO, "head 1 waiting", |r| {
            r.commit == head1 && r.awaiting_approval
        })
        .await;

    // Someone without write access cannot approve.
    let now = chrono::Utc::now();
    let (status, body) = h
        .github(
            "issue_comment",
            "d-a-2",
            &bytes(&pr_comment(9, "/deploylite approve", "NONE", now)),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "ignored", "{body}");
    // A comment that is no command changes nothing either.
    let (_, body) = h
        .github(
            "issue_comment",
            "d-a-3",
            &bytes(&pr_comment(9, "looks good to me", "OWNER", now)),
        )
        .await;
    assert_eq!(body["status"], "ignored", "{body}");

    // A member's approval starts head 1.
    let (status, body) = h
        .github(
            "issue_comment",
            "d-a-4",
            &bytes(&pr_comment(
                9,
                "Thanks!\n/deploylite approve\n",
                "OWNER",
                chrono::Utc::now(),
            )),
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (202, Some("accepted")),
        "{body}"
    );
    let approved = h
        .wait_for_run(GH_REPO, "head 1 approved", |r| {
            r.id == first.id && !r.awaiting_approval
        })
        .await;
    assert_eq!(approved.approved_by.as_deref(), Some("github:Codertocat"));
    assert_eq!(approved.pending_reason, None);

    // A new push to the fork needs a new approval; a comment written before it was pushed
    // (delivered late) does not cover it.
    let before_push = chrono::Utc::now() - chrono::Duration::seconds(2);
    let head2 = commit_on(&h.gh_repo, "from-fork", "two.txt");
    let p = fork_pull_request("synchronize", &head2, &base, 9);
    assert_eq!(h.github("pull_request", "d-a-5", &bytes(&p)).await.0, 202);
    let second = h
        .wait_for_run(GH_REPO, "head 2 waiting", |r| r.commit == head2)
        .await;
    assert!(second.awaiting_approval);
    let late = h
        .store
        .approve_pull_request(
            GH_REPO,
            "refs/pull/9/head",
            before_push.timestamp_millis(),
            "github:late",
        )
        .await
        .unwrap();
    assert_eq!(
        late,
        Vec::<deploylite_model::RunId>::new(),
        "a comment older than the push approves nothing"
    );
    assert!(
        h.store
            .get_run(second.id)
            .await
            .unwrap()
            .unwrap()
            .0
            .awaiting_approval
    );
    let (status, _) = h
        .github(
            "issue_comment",
            "d-a-7",
            &bytes(&pr_comment(
                9,
                "/deploylite approve",
                "COLLABORATOR",
                chrono::Utc::now(),
            )),
        )
        .await;
    assert_eq!(status, 202);
    let second = h
        .wait_for_run(GH_REPO, "head 2 approved", |r| {
            r.id == second.id && !r.awaiting_approval
        })
        .await;
    assert_eq!(second.approved_by.as_deref(), Some("github:Codertocat"));
}

#[tokio::test]
async fn github_check_run_rerequested_reruns_that_pipeline() {
    let h = Harness::start(Options::default()).await;
    let main = head(&h.gh_repo, "main");
    let first = h
        .wait_for_run(GH_REPO, "main's run", |r| r.commit == main)
        .await;
    let mut p = fixture("github/webhooks/check_run.rerequested");
    // The example is another app's check in another repository: make it DeployLite's check of
    // `ci` on this repository's main.
    p["repository"]["full_name"] = json!(GITHUB_SLUG);
    p["check_run"]["name"] = json!("deploylite/ci");
    p["check_run"]["head_sha"] = json!(main);
    assert_eq!(h.github("check_run", "d-cr-1", &bytes(&p)).await.0, 202);
    let rerun = h
        .wait_for_run(GH_REPO, "the re-run", |r| {
            r.commit == main && r.run_attempt == 2
        })
        .await;
    assert_eq!(
        (
            rerun.pipeline.as_str(),
            rerun.trigger.as_str(),
            rerun.git_ref.as_str()
        ),
        ("ci", "push", "refs/heads/main")
    );
    assert_ne!(rerun.id, first.id);

    // Other apps' check runs are not ours to re-run.
    p["check_run"]["name"] = json!("randscape");
    let (status, body) = h.github("check_run", "d-cr-2", &bytes(&p)).await;
    assert_eq!((status, body["status"].as_str()), (202, Some("ignored")));
}

#[tokio::test]
async fn github_check_suite_rerequested_reruns_the_commit_and_replays_are_duplicates() {
    let h = Harness::start(Options::default()).await;
    let main = head(&h.gh_repo, "main");
    let mut p = fixture("github/webhooks/check_suite.rerequested");
    p["check_suite"]["head_sha"] = json!(main);
    let body = bytes(&p);
    let (status, answer) = h.github("check_suite", "d-cs-1", &body).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (202, Some("accepted")),
        "{answer}"
    );
    h.wait_for_run(GH_REPO, "the re-run", |r| {
        r.commit == main && r.run_attempt == 2
    })
    .await;

    // The same delivery again (GitHub's "Redeliver" keeps the id): recognised, nothing enqueued.
    // A replayed re-run is the one event run identity cannot absorb (it would be attempt 3), so
    // the delivery record is what keeps it at one.
    let (status, answer) = h.github("check_suite", "d-cs-1", &body).await;
    assert_eq!((status, answer), (200, json!({"status": "duplicate"})));
    let attempts: Vec<i64> = h
        .runs(GH_REPO)
        .await
        .iter()
        .filter(|r| r.commit == main)
        .map(|r| r.run_attempt)
        .collect();
    assert_eq!(attempts, vec![2, 1], "exactly one re-run");
}

/// The attack: a captured, signed `rerequested` body sent again with fresh `X-GitHub-Delivery`
/// ids (the signature covers the body only). Each replay must be recognised by the request's
/// identity (check id and times), not by the delivery id.
#[tokio::test]
async fn github_rerequests_replayed_under_fresh_delivery_ids_rerun_once() {
    let h = Harness::start(Options::default()).await;
    let main = head(&h.gh_repo, "main");
    let mut suite = fixture("github/webhooks/check_suite.rerequested");
    suite["check_suite"]["head_sha"] = json!(main);
    let captured = bytes(&suite);
    let (status, answer) = h.github("check_suite", "cs-original", &captured).await;
    assert_eq!((status, answer["status"].as_str()), (202, Some("accepted")));
    h.wait_for_run(GH_REPO, "the re-run", |r| {
        r.commit == main && r.run_attempt == 2
    })
    .await;
    for replay in ["cs-replay-1", "cs-replay-2", "cs-replay-3"] {
        let (status, answer) = h.github("check_suite", replay, &captured).await;
        assert_eq!(
            (status, answer.clone()),
            (200, json!({"status": "duplicate"})),
            "{replay}: {answer}"
        );
    }
    assert_eq!(
        h.attempts(GH_REPO, &main).await,
        vec![("ci".to_string(), 1), ("ci".to_string(), 2)],
        "exactly one new attempt"
    );

    // The same for one check run.
    let mut run = fixture("github/webhooks/check_run.rerequested");
    run["repository"]["full_name"] = json!(GITHUB_SLUG);
    run["check_run"]["name"] = json!("deploylite/ci");
    run["check_run"]["head_sha"] = json!(main);
    let captured = bytes(&run);
    assert_eq!(h.github("check_run", "cr-original", &captured).await.0, 202);
    h.wait_for_run(GH_REPO, "the check run's re-run", |r| {
        r.commit == main && r.run_attempt == 3
    })
    .await;
    for replay in ["cr-replay-1", "cr-replay-2", "cr-replay-3"] {
        let (status, answer) = h.github("check_run", replay, &captured).await;
        assert_eq!(
            (status, answer["status"].as_str()),
            (200, Some("duplicate"))
        );
    }

    // A new click changes the check (GitHub moves `updated_at`): that is a new re-run.
    suite["check_suite"]["updated_at"] = json!("2019-05-15T16:00:00Z");
    let (status, _) = h
        .github("check_suite", "cs-new-click", &bytes(&suite))
        .await;
    assert_eq!(status, 202);
    h.wait_for_run(GH_REPO, "the second click's re-run", |r| {
        r.commit == main && r.run_attempt == 4
    })
    .await;
    assert_eq!(h.attempts(GH_REPO, &main).await.len(), 4);
}

#[tokio::test]
async fn github_ping_and_unused_events() {
    let h = Harness::start(Options::default()).await;
    for file in ["ping.repository-hook", "ping.app-hook"] {
        let (status, body) = h
            .github(
                "ping",
                &format!("d-{file}"),
                &bytes(&fixture(&format!("github/webhooks/{file}"))),
            )
            .await;
        assert_eq!((status, body), (200, json!({"status": "pong"})), "{file}");
    }
    for (event, file) in [
        ("create", "create.tag"),
        ("delete", "delete.tag"),
        ("check_suite", "check_suite.requested"),
    ] {
        let (status, body) = h
            .github(
                event,
                &format!("d-{file}"),
                &bytes(&fixture(&format!("github/webhooks/{file}"))),
            )
            .await;
        assert_eq!(
            (status, body["status"].as_str()),
            (202, Some("ignored")),
            "{file}: {body}"
        );
    }
    let (status, body) = h
        .github("issues", "d-issues", br#"{"action":"opened"}"#)
        .await;
    assert_eq!(status, 202);
    assert!(
        body["reason"].as_str().unwrap().contains("issues"),
        "{body}"
    );
    assert_eq!(
        h.runs(GH_REPO).await.len(),
        1,
        "nothing but main's first run"
    );
}

// ---------------------------------------------------------------------------------------------
// GitHub refusals

#[tokio::test]
async fn github_signatures_are_required() {
    let h = Harness::start(Options::default()).await;
    let sha = commit_on(&h.gh_repo, "master", "a.txt");
    let mut p = fixture("github/webhooks/push.branch-created");
    p["after"] = json!(sha);
    let body = bytes(&p);
    let h = &h;
    let post = |signature: Option<String>| {
        let mut headers = vec![
            ("X-GitHub-Event", "push".to_string()),
            ("X-GitHub-Delivery", "d-sig-1".to_string()),
        ];
        if let Some(s) = signature {
            headers.push(("X-Hub-Signature-256", s));
        }
        let body = body.clone();
        async move { h.post("/webhooks/github", &headers, &body).await }
    };
    let (status, answer) = post(None).await;
    assert_eq!(status, 401);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("X-Hub-Signature-256"),
        "{answer}"
    );
    let (status, answer) = post(Some(sign("not the secret", &body))).await;
    assert_eq!(status, 401, "{answer}");
    // Signed over another body (a tampered payload).
    let (status, _) = post(Some(sign(GITHUB_SECRET, b"{}"))).await;
    assert_eq!(status, 401);
    let (status, _) = post(Some("sha256=nothex".into())).await;
    assert_eq!(status, 401);

    // None of the refused deliveries was recorded: the same id, now signed, is accepted.
    let (status, answer) = post(Some(sign(GITHUB_SECRET, &body))).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (202, Some("accepted")),
        "{answer}"
    );
    h.wait_for_run(GH_REPO, "the signed push's run", |r| r.commit == sha)
        .await;
}

#[tokio::test]
async fn github_without_a_configured_secret_accepts_nothing() {
    let h = Harness::start(Options {
        github_secret: None,
        ..Options::default()
    })
    .await;
    let (status, body) = h
        .github(
            "ping",
            "d-nocfg",
            &bytes(&fixture("github/webhooks/ping.repository-hook")),
        )
        .await;
    assert_eq!(status, 401);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("forges.github.webhook_secret"),
        "{body}"
    );
}

#[tokio::test]
async fn github_bad_requests() {
    let h = Harness::start(Options::default()).await;
    // Malformed JSON.
    let (status, body) = h.github("push", "d-bad-1", b"{\"ref\": ").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("JSON"), "{body}");
    // A missing field is named.
    let mut p = fixture("github/webhooks/push.branch-created");
    p.as_object_mut().unwrap().remove("ref");
    let (status, body) = h.github("push", "d-bad-2", &bytes(&p)).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("`ref`"), "{body}");
    let mut p = pull_request(
        "opened",
        &head(&h.gh_repo, "main"),
        &head(&h.gh_repo, "main"),
    );
    p["pull_request"]["head"]
        .as_object_mut()
        .unwrap()
        .remove("sha");
    let (status, body) = h.github("pull_request", "d-bad-3", &bytes(&p)).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("`pull_request.head.sha`"),
        "{body}"
    );
    // Missing delivery and event headers.
    let ping = bytes(&fixture("github/webhooks/ping.repository-hook"));
    let signature = sign(GITHUB_SECRET, &ping);
    let headers = [
        ("X-GitHub-Event", "ping".to_string()),
        ("X-Hub-Signature-256", signature.clone()),
    ];
    let (status, body) = h.post("/webhooks/github", &headers, &ping).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("X-GitHub-Delivery"),
        "{body}"
    );
    let headers = [
        ("X-GitHub-Delivery", "d-bad-4".to_string()),
        ("X-Hub-Signature-256", signature),
    ];
    let (status, body) = h.post("/webhooks/github", &headers, &ping).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("X-GitHub-Event"),
        "{body}"
    );
}

#[tokio::test]
async fn github_unknown_repository_is_404_and_not_recorded() {
    let h = Harness::start(Options::default()).await;
    let mut p = fixture("github/webhooks/push.branch-created");
    p["repository"]["full_name"] = json!("someone/else");
    let (status, body) = h.github("push", "d-404", &bytes(&p)).await;
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap().contains("someone/else"),
        "{body}"
    );
    // The delivery id was not recorded by the refusal.
    let sha = commit_on(&h.gh_repo, "master", "x.txt");
    let mut p = fixture("github/webhooks/push.branch-created");
    p["after"] = json!(sha);
    assert_eq!(h.github("push", "d-404", &bytes(&p)).await.0, 202);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let h = Harness::start(Options {
        max_body_bytes: 1024,
        ..Options::default()
    })
    .await;
    // The push example is about 9 kB: refused by its Content-Length, before the signature.
    let body = bytes(&fixture("github/webhooks/push.branch-created"));
    assert!(body.len() > 1024);
    let (status, answer) = h.github("push", "d-big-1", &body).await;
    assert_eq!(status, 413);
    assert!(
        answer["error"].as_str().unwrap().contains("1024"),
        "{answer}"
    );
    // Chunked, without a Content-Length: counted while it streams.
    for path in ["/webhooks/github", "/webhooks/gitlab"] {
        let (status, answer) = raw_chunked_post(h.addr(), path, &body).await;
        assert_eq!(status, 413, "{path}: {answer}");
    }
    // A chunked body under the limit is read whole, authenticated and parsed: this one is a
    // push without a ref, so the answer is about the ref, not the size.
    let small = br#"{"zen":"Half measures are as bad as nothing at all.","hook_id":1}"#;
    let (status, answer) = raw_chunked_post(h.addr(), "/webhooks/github", small).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("`ref`"),
        "{answer}"
    );
    // A small body still passes.
    let small = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
    assert_eq!(h.github("ping", "d-big-2", small).await.0, 200);
}

/// POSTs `body` with `Transfer-Encoding: chunked` (no Content-Length) over a plain socket;
/// the status and body of the answer.
async fn raw_chunked_post(addr: &str, path: &str, body: &[u8]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: d-chunked\r\n\
         X-Hub-Signature-256: {}\r\nX-Gitlab-Event: Push Hook\r\nX-Gitlab-Token: {GITLAB_SECRET}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        sign(GITHUB_SECRET, body)
    );
    let mut wire = head.into_bytes();
    for chunk in body.chunks(512) {
        wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        wire.extend_from_slice(chunk);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    // The server may answer and close as soon as the limit is crossed: write errors are fine.
    let _ = s.write_all(&wire).await;
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = tokio::time::timeout(std::time::Duration::from_secs(15), s.read(&mut buf))
        .await
        .expect("an answer in time")
    {
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
    }
    parse_response(&response)
}

// ---------------------------------------------------------------------------------------------
// GitLab

/// A GitLab example with its project made the watched one (the doc's examples name three
/// different projects) and its commit ids replaced.
fn gitlab_push(file: &str, git_ref: Option<&str>, after: &str) -> Value {
    let mut p = fixture(&format!("gitlab/webhooks/{file}"));
    p["project"]["path_with_namespace"] = json!(GITLAB_SLUG);
    p["after"] = json!(after);
    p["checkout_sha"] = json!(after);
    if let Some(r) = git_ref {
        p["ref"] = json!(r);
    }
    p
}

#[tokio::test]
async fn gitlab_push_and_tag_push() {
    let h = Harness::start(Options::default()).await;
    let sha = commit_on(&h.gl_repo, "master", "g.txt");
    let (status, body) = h
        .gitlab(
            "Push Hook",
            Some("ev-push-1"),
            &bytes(&gitlab_push("push", None, &sha)),
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (202, Some("accepted")),
        "{body}"
    );
    let run = h
        .wait_for_run(GL_REPO, "the pushed branch's run", |r| {
            r.git_ref == "refs/heads/master"
        })
        .await;
    assert_eq!(
        (run.commit.as_str(), run.trigger.as_str()),
        (sha.as_str(), "push")
    );

    git(&h.gl_repo, &["tag", "v1.0.0", &sha]);
    let (status, _) = h
        .gitlab(
            "Tag Push Hook",
            Some("ev-tag-1"),
            &bytes(&gitlab_push("tag_push", None, &sha)),
        )
        .await;
    assert_eq!(status, 202);
    let tag_run = h
        .wait_for_run(GL_REPO, "the tag's run", |r| {
            r.git_ref == "refs/tags/v1.0.0"
        })
        .await;
    assert_eq!(
        (tag_run.commit.as_str(), tag_run.trigger.as_str()),
        (sha.as_str(), "tag")
    );

    // Deleting the branch: GitLab sends `after` all zeros (no published example of it).
    git(&h.gl_repo, &["branch", "-D", "master"]);
    let deleted = gitlab_push("push", None, "0000000000000000000000000000000000000000");
    assert_eq!(
        h.gitlab("Push Hook", Some("ev-push-2"), &bytes(&deleted))
            .await
            .0,
        202
    );
    h.wait_for_run(GL_REPO, "the branch's run cancelled", |r| {
        r.id == run.id && r.cancel_requested
    })
    .await;
    assert!(!h
        .runs(GL_REPO)
        .await
        .iter()
        .any(|r| r.id == tag_run.id && r.cancel_requested));

    // A replayed delivery (same X-Gitlab-Event-UUID) is recognised.
    let (status, body) = h
        .gitlab(
            "Push Hook",
            Some("ev-push-1"),
            &bytes(&gitlab_push("push", None, &sha)),
        )
        .await;
    assert_eq!((status, body), (200, json!({"status": "duplicate"})));
    // Without the header there is no de-duplication, and run identity keeps the runs at one.
    let (status, _) = h
        .gitlab(
            "Tag Push Hook",
            None,
            &bytes(&gitlab_push("tag_push", None, &sha)),
        )
        .await;
    assert_eq!(status, 202);
}

/// GitLab's merge request example, made MR `iid` from a fork (source project 99) at `head`,
/// targeting `main`: a fork's pipelines are read from the target branch, which must exist here.
fn gitlab_fork_mr(iid: i64, head: &str) -> Value {
    let mut fork = fixture("gitlab/webhooks/merge_request.open");
    fork["object_attributes"]["iid"] = json!(iid);
    fork["object_attributes"]["source_project_id"] = json!(99);
    fork["object_attributes"]["source"]["path_with_namespace"] = json!("forker/gitlab-test");
    fork["object_attributes"]["last_commit"]["id"] = json!(head);
    fork["object_attributes"]["target_branch"] = json!("main");
    fork
}

#[tokio::test]
async fn gitlab_merge_request_open_and_close() {
    let h = Harness::start(Options::default()).await;
    let head_sha = commit_on(&h.gl_repo, "ms-viewport", "mr.txt");
    let mut open = fixture("gitlab/webhooks/merge_request.open");
    open["object_attributes"]["last_commit"]["id"] = json!(head_sha);
    let (status, body) = h
        .gitlab("Merge Request Hook", Some("ev-mr-1"), &bytes(&open))
        .await;
    assert_eq!(status, 202, "{body}");
    let run = h
        .wait_for_run(GL_REPO, "the MR's run", |r| r.commit == head_sha)
        .await;
    assert_eq!(
        (run.trigger.as_str(), run.git_ref.as_str()),
        ("pull_request", "refs/merge-requests/1/head")
    );
    assert_eq!(
        run.pull_request,
        Some(PullRequestInfo {
            number: 1,
            head_repo: "awesome_space/awesome_project".into(),
            untrusted: false
        })
    );

    let mut close = open.clone();
    // The doc publishes only the `open` example; GitLab sends the same object with action close.
    close["object_attributes"]["action"] = json!("close");
    close["object_attributes"]["state"] = json!("closed");
    assert_eq!(
        h.gitlab("Merge Request Hook", Some("ev-mr-2"), &bytes(&close))
            .await
            .0,
        202
    );
    let r = h
        .wait_for_run(GL_REPO, "the MR's run cancelled", |r| {
            r.id == run.id && r.cancel_requested
        })
        .await;
    assert_eq!(
        r.pending_reason.as_deref(),
        Some("cancelled: the pull request was closed")
    );

    // A fork MR (source project differs) is untrusted.
    let fork_head = commit_on(&h.gl_repo, "fork-mr", "fork.txt");
    let fork = gitlab_fork_mr(5, &fork_head);
    assert_eq!(
        h.gitlab("Merge Request Hook", Some("ev-mr-3"), &bytes(&fork))
            .await
            .0,
        202
    );
    let run = h
        .wait_for_run(GL_REPO, "the fork MR's run", |r| r.commit == fork_head)
        .await;
    assert_eq!(
        run.pull_request,
        Some(PullRequestInfo {
            number: 5,
            head_repo: "forker/gitlab-test".into(),
            untrusted: true
        })
    );
    assert!(
        run.awaiting_approval,
        "GitLab cannot say the author is a member"
    );

    // Other events and actions are ignored.
    let (status, body) = h
        .gitlab(
            "Pipeline Hook",
            Some("ev-pl"),
            &bytes(&fixture("gitlab/webhooks/pipeline")),
        )
        .await;
    assert_eq!((status, body["status"].as_str()), (202, Some("ignored")));
    let mut approved = open.clone();
    approved["object_attributes"]["action"] = json!("approved");
    assert_eq!(
        h.gitlab("Merge Request Hook", Some("ev-mr-4"), &bytes(&approved))
            .await
            .1["status"],
        "ignored"
    );
}

#[tokio::test]
async fn gitlab_merge_request_reopened_at_the_same_head_runs_its_cancelled_run_again() {
    let h = Harness::start(Options::default()).await;
    let head_sha = commit_on(&h.gl_repo, "ms-viewport", "mr.txt");
    let mut open = fixture("gitlab/webhooks/merge_request.open");
    open["object_attributes"]["last_commit"]["id"] = json!(head_sha);
    assert_eq!(
        h.gitlab("Merge Request Hook", Some("ev-ro-1"), &bytes(&open))
            .await
            .0,
        202
    );
    let run = h
        .wait_for_run(GL_REPO, "the MR's run", |r| r.commit == head_sha)
        .await;

    // The doc publishes only the `open` example; GitLab sends the same object with the action
    // (and state) of what happened.
    let mut close = open.clone();
    close["object_attributes"]["action"] = json!("close");
    close["object_attributes"]["state"] = json!("closed");
    assert_eq!(
        h.gitlab("Merge Request Hook", Some("ev-ro-2"), &bytes(&close))
            .await
            .0,
        202
    );
    h.wait_for_run(GL_REPO, "the MR's run cancelled", |r| {
        r.id == run.id && r.cancel_requested
    })
    .await;
    // The scheduler has acted on the cancellation by the time the MR is reopened.
    h.end_run(run.id, RunStatus::Cancelled).await;

    let mut reopen = open.clone();
    reopen["object_attributes"]["action"] = json!("reopen");
    assert_eq!(
        h.gitlab("Merge Request Hook", Some("ev-ro-3"), &bytes(&reopen))
            .await
            .0,
        202
    );
    let rerun = h
        .wait_for_run(GL_REPO, "the reopened MR's new attempt", |r| {
            r.commit == head_sha && r.run_attempt == 2
        })
        .await;
    assert_eq!(
        (
            rerun.trigger.as_str(),
            rerun.git_ref.as_str(),
            rerun.status,
            rerun.cancel_requested
        ),
        (
            "pull_request",
            "refs/merge-requests/1/head",
            RunStatus::Queued,
            false
        )
    );
    assert_eq!(rerun.pull_request, run.pull_request);
    assert_eq!(
        h.attempts(GL_REPO, &head_sha).await,
        vec![("ci".to_string(), 1), ("ci".to_string(), 2)]
    );
}

#[tokio::test]
async fn gitlab_tokens_are_required() {
    let h = Harness::start(Options::default()).await;
    let body = bytes(&gitlab_push("push", None, &head(&h.gl_repo, "main")));
    for token in [
        None,
        Some("wrong"),
        Some("test-gitlab-toke"),
        Some("test-gitlab-tokenX"),
    ] {
        let mut headers = vec![("X-Gitlab-Event", "Push Hook".to_string())];
        if let Some(t) = token {
            headers.push(("X-Gitlab-Token", t.to_string()));
        }
        let (status, answer) = h.post("/webhooks/gitlab", &headers, &body).await;
        assert_eq!(status, 401, "{token:?}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("X-Gitlab-Token"),
            "{answer}"
        );
    }
    let h = Harness::start(Options {
        gitlab_secret: None,
        ..Options::default()
    })
    .await;
    let (status, answer) = h.gitlab("Push Hook", None, &body).await;
    assert_eq!(status, 401);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("forges.gitlab.webhook_secret"),
        "{answer}"
    );
}

#[tokio::test]
async fn gitlab_bad_requests_and_unknown_projects() {
    let h = Harness::start(Options::default()).await;
    let (status, _) = h.gitlab("Push Hook", None, b"not json").await;
    assert_eq!(status, 400);
    let mut p = gitlab_push("push", None, &head(&h.gl_repo, "main"));
    p["project"]
        .as_object_mut()
        .unwrap()
        .remove("path_with_namespace");
    let (status, body) = h.gitlab("Push Hook", None, &bytes(&p)).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("project.path_with_namespace"),
        "{body}"
    );
    // The push example's own project is not watched.
    let (status, _) = h
        .gitlab("Push Hook", None, &bytes(&fixture("gitlab/webhooks/push")))
        .await;
    assert_eq!(status, 404);
}

// ---------------------------------------------------------------------------------------------
// Robustness

#[tokio::test]
async fn the_server_keeps_serving_after_a_burst_of_bad_requests() {
    let h = Harness::start(Options {
        max_body_bytes: 4096,
        // Room for the whole burst: this test is about answers, not about the cap.
        webhook_limits: WebhookLimits {
            max_in_flight: 1024,
            ..WebhookLimits::default()
        },
        ..Options::default()
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let addr = h.addr().to_string();
        tasks.push(tokio::spawn(async move {
            let junk: Vec<u8> = (0..(i * 37 % 6000)).map(|b| (b * 31 + i) as u8).collect();
            let hdr = |pairs: &[(&'static str, &str)]| {
                pairs
                    .iter()
                    .map(|(k, v)| (*k, v.to_string()))
                    .collect::<Vec<_>>()
            };
            let signed_junk = sign(GITHUB_SECRET, &junk);
            let delivery = format!("burst-{i}");
            let (method, path, headers, body): (&str, &str, Vec<(&str, String)>, Vec<u8>) =
                match i % 8 {
                    0 => ("POST", "/webhooks/github", vec![], junk),
                    1 => (
                        "POST",
                        "/webhooks/github",
                        hdr(&[
                            ("X-Hub-Signature-256", &signed_junk),
                            ("X-GitHub-Event", "push"),
                            ("X-GitHub-Delivery", &delivery),
                        ]),
                        junk,
                    ),
                    2 => (
                        "POST",
                        "/webhooks/github",
                        hdr(&[("X-Hub-Signature-256", "sha256=")]),
                        b"{}".to_vec(),
                    ),
                    3 => (
                        "POST",
                        "/webhooks/gitlab",
                        hdr(&[("X-Gitlab-Token", "nope")]),
                        junk,
                    ),
                    4 => (
                        "POST",
                        "/webhooks/gitlab",
                        hdr(&[
                            ("X-Gitlab-Token", GITLAB_SECRET),
                            ("X-Gitlab-Event", "Push Hook"),
                        ]),
                        junk,
                    ),
                    5 => (
                        "POST",
                        "/webhooks/gitlab",
                        hdr(&[
                            ("X-Gitlab-Token", GITLAB_SECRET),
                            ("X-Gitlab-Event", "Merge Request Hook"),
                        ]),
                        br#"{"object_attributes":{"action":"open","iid":"x"}}"#.to_vec(),
                    ),
                    6 => ("GET", "/webhooks/github", vec![], vec![]),
                    _ => {
                        let sig = sign(GITHUB_SECRET, b"[1,2");
                        (
                            "POST",
                            "/webhooks/github",
                            hdr(&[
                                ("X-Hub-Signature-256", &sig),
                                ("X-GitHub-Event", "pull_request"),
                                ("X-GitHub-Delivery", &delivery),
                            ]),
                            b"[1,2".to_vec(),
                        )
                    }
                };
            http(&addr, method, path, &headers, &body).await.0
        }));
    }
    for t in tasks {
        let status = t.await.unwrap();
        assert!(
            (400..500).contains(&status),
            "every bad request gets a 4xx, got {status}"
        );
    }
    // The server still takes good deliveries.
    let ping = bytes(&json!({"zen": "Design for failure.", "hook_id": 1}));
    assert_eq!(h.github("ping", "after-burst", &ping).await.0, 200);
    assert_eq!(
        h.runs(GH_REPO).await.len() + h.runs(GL_REPO).await.len(),
        2,
        "nothing was enqueued"
    );
}

/// GitLab's members API as far as approvals use it: user 1 is a Maintainer of every project,
/// user 3 a Reporter, anyone else no member. Requests without the token are refused.
async fn fake_gitlab_members() -> String {
    use axum::extract::Path;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/api/v4/projects/{project}/members/all/{user}",
        get(
            |Path((_project, user)): Path<(i64, i64)>, headers: HeaderMap| async move {
                if headers.get("PRIVATE-TOKEN").and_then(|v| v.to_str().ok()) != Some("gl-token") {
                    return (StatusCode::UNAUTHORIZED, axum::Json(json!({"message": "401 Unauthorized"})));
                }
                match user {
                    1 => (StatusCode::OK, axum::Json(json!({"id": 1, "username": "root", "state": "active", "access_level": 40}))),
                    3 => (StatusCode::OK, axum::Json(json!({"id": 3, "username": "reporter", "state": "active", "access_level": 20}))),
                    _ => (StatusCode::NOT_FOUND, axum::Json(json!({"message": "404 Not found"}))),
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/v4", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn a_gitlab_approval_comment_counts_only_from_a_developer_or_above() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let api = fake_gitlab_members().await;
    let h = Harness::start(Options {
        gitlab_api: Some((api, "gl-token".into())),
        ..Options::default()
    })
    .await;
    let fork_head = commit_on(&h.gl_repo, "fork-mr", "fork.txt");
    let fork = gitlab_fork_mr(5, &fork_head);
    assert_eq!(
        h.gitlab("Merge Request Hook", Some("ev-n-1"), &bytes(&fork))
            .await
            .0,
        202
    );
    let run = h
        .wait_for_run(GL_REPO, "the fork MR waiting", |r| {
            r.commit == fork_head && r.awaiting_approval
        })
        .await;

    // The documented note example, made a `/deploylite approve` on this MR's head.
    let note = |user_id: i64, username: &str| {
        let mut n = fixture("gitlab/webhooks/note.merge_request");
        n["project"]["path_with_namespace"] = json!("gitlabhq/gitlab-test");
        n["object_attributes"]["note"] = json!("/deploylite approve");
        n["merge_request"]["iid"] = json!(5);
        n["merge_request"]["last_commit"]["id"] = json!(fork_head);
        n["user"]["id"] = json!(user_id);
        n["user"]["username"] = json!(username);
        bytes(&n)
    };
    for (i, (id, name)) in [(2, "stranger"), (3, "reporter")].into_iter().enumerate() {
        let (status, body) = h
            .gitlab("Note Hook", Some(&format!("ev-n-x{i}")), &note(id, name))
            .await;
        assert_eq!(
            (status, body["status"].as_str()),
            (202, Some("ignored")),
            "{body}"
        );
        assert!(
            body["reason"]
                .as_str()
                .unwrap()
                .contains("less than Developer access"),
            "{body}"
        );
    }
    let (status, body) = h
        .gitlab("Note Hook", Some("ev-n-2"), &note(1, "root"))
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (202, Some("accepted")),
        "{body}"
    );
    let approved = h
        .wait_for_run(GL_REPO, "the fork MR approved", |r| {
            r.id == run.id && !r.awaiting_approval
        })
        .await;
    assert_eq!(approved.approved_by.as_deref(), Some("gitlab:root"));
}

#[tokio::test]
async fn a_gitlab_approval_comment_is_ignored_when_membership_cannot_be_checked() {
    // No GitLab token configured: nobody can be shown to be a member.
    let h = Harness::start(Options::default()).await;
    let mut n = fixture("gitlab/webhooks/note.merge_request");
    n["project"]["path_with_namespace"] = json!("gitlabhq/gitlab-test");
    n["object_attributes"]["note"] = json!("/deploylite approve");
    let (status, body) = h.gitlab("Note Hook", Some("ev-n-3"), &bytes(&n)).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (202, Some("ignored")),
        "{body}"
    );
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("forges.gitlab.token"),
        "{body}"
    );
}

/// Sends `head` (request line and headers, blank line included), then `body` one byte every
/// `pace`, while reading the answer; the raw answer and when it was complete (EOF), from the
/// first byte sent. Gives up after `limit`.
async fn trickle(
    addr: &str,
    head: String,
    body: Vec<u8>,
    pace: Duration,
    limit: Duration,
) -> (String, Option<Duration>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let writing = tokio::spawn(async move {
        if writer.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval(pace);
        for byte in body {
            tick.tick().await;
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = reader.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    writing.abort();
    (
        String::from_utf8_lossy(&answer).into_owned(),
        read.is_ok().then(|| started.elapsed()),
    )
}

fn github_head(addr: &str, content_length: usize) -> String {
    format!(
        "POST /webhooks/github HTTP/1.1\r\nHost: {addr}\r\nX-GitHub-Event: ping\r\n\
         X-GitHub-Delivery: slow-1\r\nContent-Type: application/json\r\n\
         Content-Length: {content_length}\r\n\r\n"
    )
}

/// The attack: headers at once, then the body at 5 bytes/s, holding a connection and a buffer
/// for as long as the sender likes. The body timeout cuts it off with 408.
#[tokio::test]
async fn a_slow_sender_is_cut_off_with_408_within_the_body_timeout() {
    let timeout = Duration::from_secs(1);
    let h = Harness::start(Options {
        webhook_limits: WebhookLimits {
            body_timeout: timeout,
            ..WebhookLimits::default()
        },
        ..Options::default()
    })
    .await;
    let body = vec![b' '; 100]; // 20 s at this pace
    let (answer, elapsed) = trickle(
        h.addr(),
        github_head(h.addr(), body.len()),
        body,
        Duration::from_millis(200),
        Duration::from_secs(6),
    )
    .await;
    let elapsed = elapsed.unwrap_or_else(|| panic!("still connected after 6 s: {answer:?}"));
    let (status, json) = parse_response(answer.as_bytes());
    assert_eq!(status, 408, "{answer}");
    assert!(
        json["error"].as_str().unwrap_or_default().contains("1 s"),
        "{json}"
    );
    assert!(
        elapsed >= timeout && elapsed < timeout + Duration::from_secs(2),
        "cut off after {elapsed:?}"
    );
    // A sender at full speed is unaffected.
    let ping = bytes(&json!({"zen": "Keep it logically awesome.", "hook_id": 1}));
    assert_eq!(h.github("ping", "fast-1", &ping).await.0, 200);
}

/// The attack: more webhook requests at once than the cap (here 2, held open by senders that
/// never send their body). One more is answered 503 with Retry-After at once, not queued; once
/// the holders go, requests are served again.
#[tokio::test]
async fn webhook_requests_over_the_concurrency_cap_get_503_with_retry_after() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start(Options {
        webhook_limits: WebhookLimits {
            max_in_flight: 2,
            // Short, so that the request over the cap gives up waiting within the test's reads.
            queue_wait: Duration::from_millis(200),
            ..WebhookLimits::default()
        },
        ..Options::default()
    })
    .await;
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
        s.write_all(github_head(h.addr(), 10).as_bytes())
            .await
            .unwrap();
        holders.push(s);
    }
    let ping = bytes(&json!({"zen": "Half measures are as bad as nothing at all.", "hook_id": 1}));
    let request = |delivery: &str| {
        let mut r = format!(
            "POST /webhooks/github HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             X-GitHub-Event: ping\r\nX-GitHub-Delivery: {delivery}\r\n\
             X-Hub-Signature-256: {}\r\nContent-Length: {}\r\n\r\n",
            h.addr(),
            sign(GITHUB_SECRET, &ping),
            ping.len()
        )
        .into_bytes();
        r.extend_from_slice(&ping);
        r
    };
    let exchange = |raw: Vec<u8>| {
        let addr = h.addr().to_string();
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = s.write_all(&raw).await;
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
            String::from_utf8_lossy(&answer).into_owned()
        }
    };
    // The holders take their slots as soon as their headers are parsed.
    let refused = eventually("a request over the cap refused", || {
        let raw = request("over-cap");
        async move {
            let answer = exchange(raw).await;
            answer.starts_with("HTTP/1.1 503").then_some(answer)
        }
    })
    .await;
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 5"),
        "{refused}"
    );
    assert!(refused.contains("too many webhook requests"), "{refused}");
    drop(holders);
    eventually("served again once the holders are gone", || {
        let raw = request("after-holders");
        async move {
            let answer = exchange(raw).await;
            answer.starts_with("HTTP/1.1 200").then_some(())
        }
    })
    .await;
}
