//! Deciding whether a pipeline's `on:` matches a git event.
//!
//! Semantics follow GitHub Actions where it has an answer:
//! - absent `on:` = every branch push; tag pushes and pull requests do not match;
//! - `push.branches` empty = every branch, **unless** `push.tags` is set: a push trigger that
//!   lists only tags is a release trigger and does not fire on branch pushes (as in GitHub
//!   Actions);
//! - `push.tags` empty = no tag pushes;
//! - path filters apply to branch pushes and pull requests, never to tag pushes;
//! - `paths_ignore`: changes whose paths *all* match it do not trigger; with `paths` too, at
//!   least one changed path must match `paths` and not `paths_ignore`;
//! - unknown changed paths (`None`, e.g. the first commit seen on a ref) pass every path filter.

use serde::{Deserialize, Serialize};

use crate::glob::GlobList;
use crate::model::Triggers;

/// A git event that may start pipelines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Event {
    /// A push to a branch (name without `refs/heads/`).
    Push { branch: String },
    /// A tag push (name without `refs/tags/`).
    Tag { tag: String },
    /// A pull request (or its update) targeting `target_branch`.
    PullRequest { target_branch: String },
}

/// Outcome of [`Triggers::matches`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerMatch {
    /// The pipeline should run.
    Yes,
    /// The event kind, branch or tag does not match.
    NoEvent,
    /// The event matches but path filters exclude this change.
    PathsFiltered,
}

impl Triggers {
    /// Whether this `on:` block fires for `event`. `changed_paths: None` means "unknown":
    /// path filters then match everything.
    pub fn matches(&self, event: &Event, changed_paths: Option<&[String]>) -> TriggerMatch {
        if self.push.is_none() && self.pull_request.is_none() {
            return match event {
                Event::Push { .. } => TriggerMatch::Yes,
                _ => TriggerMatch::NoEvent,
            };
        }
        match event {
            Event::Push { branch } => match &self.push {
                Some(p) if p.branches.is_empty() && !p.tags.is_empty() => TriggerMatch::NoEvent,
                Some(p) if p.branches.is_empty() || p.branches.matches(branch) => {
                    paths_match(&p.paths, &p.paths_ignore, changed_paths)
                }
                _ => TriggerMatch::NoEvent,
            },
            Event::Tag { tag } => match &self.push {
                Some(p) if p.tags.matches(tag) => TriggerMatch::Yes,
                _ => TriggerMatch::NoEvent,
            },
            Event::PullRequest { target_branch } => match &self.pull_request {
                Some(pr) if pr.branches.is_empty() || pr.branches.matches(target_branch) => {
                    paths_match(&pr.paths, &pr.paths_ignore, changed_paths)
                }
                _ => TriggerMatch::NoEvent,
            },
        }
    }
}

fn paths_match(paths: &GlobList, ignore: &GlobList, changed: Option<&[String]>) -> TriggerMatch {
    let Some(changed) = changed else {
        return TriggerMatch::Yes;
    };
    if paths.is_empty() && ignore.is_empty() {
        return TriggerMatch::Yes;
    }
    let hit = changed.iter().any(|p| {
        let p = globset::Candidate::new(p);
        (ignore.is_empty() || !ignore.matches_candidate(&p))
            && (paths.is_empty() || paths.matches_candidate(&p))
    });
    if hit {
        TriggerMatch::Yes
    } else {
        TriggerMatch::PathsFiltered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PullRequestTrigger, PushTrigger};
    use TriggerMatch::*;

    fn gl(p: &[&str]) -> GlobList {
        GlobList::new(p).unwrap()
    }
    fn push(b: &str) -> Event {
        Event::Push { branch: b.into() }
    }
    fn tag(t: &str) -> Event {
        Event::Tag { tag: t.into() }
    }
    fn pr(b: &str) -> Event {
        Event::PullRequest {
            target_branch: b.into(),
        }
    }

    #[test]
    fn table() {
        let absent = Triggers::default();
        let full = Triggers {
            push: Some(PushTrigger {
                branches: gl(&["main", "release/**"]),
                tags: gl(&["v*"]),
                paths: gl(&["src/**", "Cargo.*"]),
                paths_ignore: gl(&["src/**/*.md"]),
            }),
            pull_request: Some(PullRequestTrigger {
                branches: gl(&["main"]),
                paths: GlobList::default(),
                paths_ignore: gl(&["docs/**"]),
            }),
        };
        let tags_only = Triggers {
            push: Some(PushTrigger {
                tags: gl(&["v*"]),
                ..PushTrigger::default()
            }),
            pull_request: None,
        };
        let any_push = Triggers {
            push: Some(PushTrigger::default()),
            pull_request: None,
        };
        let neg = Triggers {
            push: Some(PushTrigger {
                branches: gl(&["**", "!wip/**"]),
                paths: gl(&["**", "!**/*.md"]),
                ..PushTrigger::default()
            }),
            pull_request: None,
        };

        let p = |v: &[&str]| -> Vec<String> { v.iter().map(|s| s.to_string()).collect() };
        let src = p(&["src/main.rs"]);
        let docs = p(&["docs/a.md"]);
        let md_in_src = p(&["src/x/README.md"]);
        let mixed = p(&["docs/a.md", "Cargo.toml"]);
        let none: Vec<String> = vec![];

        let cases: Vec<(&Triggers, Event, Option<&[String]>, TriggerMatch)> = vec![
            (&absent, push("anything"), Some(&docs), Yes),
            (&absent, tag("v1"), None, NoEvent),
            (&absent, pr("main"), None, NoEvent),
            (&full, push("main"), Some(&src), Yes),
            (&full, push("main"), None, Yes),
            (&full, push("release/1.2"), Some(&src), Yes),
            (&full, push("release"), Some(&src), NoEvent),
            (&full, push("dev"), Some(&src), NoEvent),
            (&full, push("main"), Some(&docs), PathsFiltered),
            (&full, push("main"), Some(&md_in_src), PathsFiltered),
            (&full, push("main"), Some(&mixed), Yes),
            (&full, push("main"), Some(&none), PathsFiltered),
            (&full, tag("v1.0"), Some(&docs), Yes),
            (&full, tag("1.0"), None, NoEvent),
            (&full, pr("main"), Some(&src), Yes),
            (&full, pr("main"), Some(&docs), PathsFiltered),
            (&full, pr("main"), Some(&mixed), Yes),
            (&full, pr("main"), None, Yes),
            (&full, pr("dev"), Some(&src), NoEvent),
            (&tags_only, push("main"), None, NoEvent),
            (&tags_only, tag("v2"), None, Yes),
            (&tags_only, pr("main"), None, NoEvent),
            (&any_push, push("x/y"), Some(&none), Yes),
            (&any_push, tag("v1"), None, NoEvent),
            (&neg, push("main"), Some(&src), Yes),
            (&neg, push("wip/x"), Some(&src), NoEvent),
            (&neg, push("main"), Some(&docs), PathsFiltered),
        ];
        for (i, (t, ev, paths, want)) in cases.into_iter().enumerate() {
            assert_eq!(t.matches(&ev, paths), want, "case {i}: {ev:?} {paths:?}");
        }
    }
}
