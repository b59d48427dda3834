//! Deciding whether a pipeline's `on:` matches a git event, and saying why not.
//!
//! Semantics follow GitHub Actions where it has an answer:
//! - absent `on:` = every branch push; tag pushes and pull requests do not match;
//! - a push trigger without branch and tag filters = every branch push, no tags;
//! - a push trigger with only tag filters (`tags`/`tags_ignore`) is a release trigger and does
//!   not fire on branch pushes; one with only branch filters does not fire on tag pushes;
//! - `branches`/`tags`: the name must match (the last matching pattern decides, `!` excludes);
//!   `branches_ignore`/`tags_ignore`: the name must not match;
//! - path filters apply to branch pushes and pull requests, never to tag pushes;
//! - `paths_ignore`: changes whose paths *all* match it do not trigger; with `paths` too, at
//!   least one changed path must match `paths` and not `paths_ignore`;
//! - unknown changed paths (`None`, e.g. the first commit seen on a ref) pass every path filter.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::glob::{Glob, GlobList};
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

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Push { branch } => write!(f, "push to branch {branch}"),
            Event::Tag { tag } => write!(f, "push to tag {tag}"),
            Event::PullRequest { target_branch } => write!(f, "pull request to {target_branch}"),
        }
    }
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

/// Why an `on:` block does not fire for an event; displayed as
/// `push to tag 2.4.0 matches none of on.push.tags [v*]`.
#[derive(Debug, Clone, PartialEq)]
pub struct NotTriggered<'a> {
    pub event: &'a Event,
    pub reason: Reason<'a>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Reason<'a> {
    /// No `on:`: branch pushes only.
    NoOn,
    /// The pipeline has no trigger for this kind of event (`on.push`, `on.pull_request`).
    NoTrigger(&'static str),
    /// `on.push` filters only tags: a release trigger.
    TagsOnly,
    /// `on.push` has no tag filter: tag pushes do not trigger it.
    NoTags,
    /// The name matches no pattern of the list `key`.
    Unmatched {
        key: &'static str,
        list: &'a GlobList,
    },
    /// The last pattern of `key` that matches the name is a `!` negation.
    Excluded {
        key: &'static str,
        list: &'a GlobList,
        by: &'a Glob,
    },
    /// The name matches the `*_ignore` list `key`.
    Ignored {
        key: &'static str,
        list: &'a GlobList,
        by: &'a Glob,
    },
}

impl fmt::Display for NotTriggered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ev = self.event;
        match &self.reason {
            Reason::NoOn => write!(
                f,
                "{ev}: a pipeline without `on:` runs on branch pushes only"
            ),
            Reason::NoTrigger(key) => write!(f, "{ev}: the pipeline has no {key}"),
            Reason::TagsOnly => write!(
                f,
                "{ev}: on.push filters only tags, so branch pushes do not trigger it"
            ),
            Reason::NoTags => write!(
                f,
                "{ev}: on.push has no `tags`, so tag pushes do not trigger it"
            ),
            Reason::Unmatched { key, list } => write!(f, "{ev} matches none of {key} {list}"),
            Reason::Excluded { key, list, by } => write!(
                f,
                "{ev} is excluded by `{}`, the last matching pattern of {key} {list}",
                by.pattern()
            ),
            Reason::Ignored { key, list, by } => {
                write!(f, "{ev} matches `{}` of {key} {list}", by.pattern())
            }
        }
    }
}

/// Whether `name` passes a `branches`/`tags` list and its `*_ignore` list (empty = no filter).
fn name_filter<'a>(
    name: &str,
    (key, list): (&'static str, &'a GlobList),
    (ignore_key, ignore): (&'static str, &'a GlobList),
) -> Result<(), Reason<'a>> {
    if !list.is_empty() {
        match list.decisive(name) {
            None => return Err(Reason::Unmatched { key, list }),
            Some(by) if by.is_negated() => return Err(Reason::Excluded { key, list, by }),
            Some(_) => {}
        }
    }
    match ignore.decisive(name) {
        Some(by) if !by.is_negated() => Err(Reason::Ignored {
            key: ignore_key,
            list: ignore,
            by,
        }),
        _ => Ok(()),
    }
}

/// One commit's changed paths, with the path filters already decided against them: the
/// pipelines of a commit often share their `paths`/`paths_ignore` lists (copies of one
/// template, services of a monorepo), and a commit can change thousands of files, each tried
/// against each pattern. Pipelines with the same two lists get the first one's answer.
pub struct ChangedPaths<'p, 't> {
    paths: Option<&'p [String]>,
    decided: HashMap<(&'t GlobList, &'t GlobList), TriggerMatch>,
}

impl<'p> ChangedPaths<'p, '_> {
    /// `None`: the changes are unknown, and path filters match everything.
    pub fn new(paths: Option<&'p [String]>) -> Self {
        ChangedPaths {
            paths,
            decided: HashMap::new(),
        }
    }
}

impl Triggers {
    /// Whether this `on:` block fires for `event`. `changed_paths: None` means "unknown":
    /// path filters then match everything.
    pub fn matches(&self, event: &Event, changed_paths: Option<&[String]>) -> TriggerMatch {
        match self.event_filter(event) {
            Err(_) => TriggerMatch::NoEvent,
            Ok(None) => TriggerMatch::Yes,
            Ok(Some((paths, ignore))) => paths_match(paths, ignore, changed_paths),
        }
    }

    /// [`Triggers::matches`] for one of several pipelines tried against the same changes.
    pub fn matches_changes<'t>(
        &'t self,
        event: &Event,
        changes: &mut ChangedPaths<'_, 't>,
    ) -> TriggerMatch {
        match self.event_filter(event) {
            Err(_) => TriggerMatch::NoEvent,
            Ok(None) => TriggerMatch::Yes,
            Ok(Some((paths, ignore))) => {
                if changes.paths.is_none() || (paths.is_empty() && ignore.is_empty()) {
                    return TriggerMatch::Yes;
                }
                let changed = changes.paths;
                *changes
                    .decided
                    .entry((paths, ignore))
                    .or_insert_with(|| paths_match(paths, ignore, changed))
            }
        }
    }

    /// Why this `on:` block does not fire for `event` whatever the changed paths, or `None`
    /// when it does (path filters aside).
    pub fn why_not<'a>(&'a self, event: &'a Event) -> Option<NotTriggered<'a>> {
        self.event_filter(event)
            .err()
            .map(|reason| NotTriggered { event, reason })
    }

    /// The event test: on success, the path filters that still apply (none for tags).
    fn event_filter(&self, event: &Event) -> Result<Option<(&GlobList, &GlobList)>, Reason<'_>> {
        if self.push.is_none() && self.pull_request.is_none() {
            return match event {
                Event::Push { .. } => Ok(None),
                _ => Err(Reason::NoOn),
            };
        }
        match event {
            Event::Push { branch } => {
                let p = self.push.as_ref().ok_or(Reason::NoTrigger("on.push"))?;
                let tags_only = p.branches.is_empty()
                    && p.branches_ignore.is_empty()
                    && !(p.tags.is_empty() && p.tags_ignore.is_empty());
                if tags_only {
                    return Err(Reason::TagsOnly);
                }
                name_filter(
                    branch,
                    ("on.push.branches", &p.branches),
                    ("on.push.branches_ignore", &p.branches_ignore),
                )?;
                Ok(Some((&p.paths, &p.paths_ignore)))
            }
            Event::Tag { tag } => {
                let p = self.push.as_ref().ok_or(Reason::NoTrigger("on.push"))?;
                if p.tags.is_empty() && p.tags_ignore.is_empty() {
                    return Err(Reason::NoTags);
                }
                name_filter(
                    tag,
                    ("on.push.tags", &p.tags),
                    ("on.push.tags_ignore", &p.tags_ignore),
                )?;
                Ok(None)
            }
            Event::PullRequest { target_branch } => {
                let pr = self
                    .pull_request
                    .as_ref()
                    .ok_or(Reason::NoTrigger("on.pull_request"))?;
                name_filter(
                    target_branch,
                    ("on.pull_request.branches", &pr.branches),
                    ("on.pull_request.branches_ignore", &pr.branches_ignore),
                )?;
                Ok(Some((&pr.paths, &pr.paths_ignore)))
            }
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
        (ignore.is_empty() || !ignore.matches(p)) && (paths.is_empty() || paths.matches(p))
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
                ..PushTrigger::default()
            }),
            pull_request: Some(PullRequestTrigger {
                branches: gl(&["main"]),
                paths_ignore: gl(&["docs/**"]),
                ..PullRequestTrigger::default()
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
            let mut changes = ChangedPaths::new(paths);
            for _ in 0..2 {
                assert_eq!(t.matches_changes(&ev, &mut changes), want, "case {i}");
            }
        }
    }

    /// Pipelines with the same path filters share one decision per commit; others get their own.
    #[test]
    fn shared_path_decisions() {
        let on = |branches: &[&str], paths: &[&str], ignore: &[&str]| Triggers {
            push: Some(PushTrigger {
                branches: gl(branches),
                paths: gl(paths),
                paths_ignore: gl(ignore),
                ..PushTrigger::default()
            }),
            pull_request: None,
        };
        let pipelines = [
            on(&[], &["src/**"], &["docs/**"]),
            on(&["main"], &["src/**"], &["docs/**"]),
            on(&["release/**"], &["src/**"], &["docs/**"]),
            on(&[], &["docs/**"], &[]),
            on(&[], &["src/**"], &["src/**"]),
            on(&[], &[], &[]),
        ];
        let changed: Vec<String> = ["docs/a.md", "src/main.rs"].map(String::from).into();
        let mut changes = ChangedPaths::new(Some(&changed));
        let event = push("main");
        let got: Vec<TriggerMatch> = pipelines
            .iter()
            .map(|t| t.matches_changes(&event, &mut changes))
            .collect();
        assert_eq!(got, [Yes, Yes, NoEvent, Yes, PathsFiltered, Yes]);
        assert_eq!(changes.decided.len(), 3, "three distinct pairs of lists");
        for t in &pipelines {
            assert_eq!(
                t.matches(&event, Some(&changed)),
                t.matches_changes(&event, &mut changes)
            );
        }
    }

    #[test]
    fn ignore_lists() {
        let t = Triggers {
            push: Some(PushTrigger {
                branches_ignore: gl(&["wip/**", "!wip/keep"]),
                tags_ignore: gl(&["*-rc*"]),
                ..PushTrigger::default()
            }),
            pull_request: Some(PullRequestTrigger {
                branches_ignore: gl(&["legacy"]),
                ..PullRequestTrigger::default()
            }),
        };
        assert_eq!(t.matches(&push("main"), None), Yes);
        assert_eq!(t.matches(&push("wip/x"), None), NoEvent);
        assert_eq!(t.matches(&push("wip/keep"), None), Yes);
        assert_eq!(t.matches(&tag("v1"), None), Yes);
        assert_eq!(t.matches(&tag("v1-rc1"), None), NoEvent);
        assert_eq!(t.matches(&pr("legacy"), None), NoEvent);
        assert_eq!(t.matches(&pr("main"), None), Yes);
        let tags_ignore_only = Triggers {
            push: Some(PushTrigger {
                tags_ignore: gl(&["nightly"]),
                ..PushTrigger::default()
            }),
            pull_request: None,
        };
        assert_eq!(tags_ignore_only.matches(&push("main"), None), NoEvent);
        assert_eq!(tags_ignore_only.matches(&tag("v2"), None), Yes);
    }

    /// Each reason, exactly as `plan` prints it.
    #[test]
    fn why_not() {
        let release = Triggers {
            push: Some(PushTrigger {
                tags: gl(&["v*", "!v*-rc"]),
                tags_ignore: gl(&["v0*"]),
                ..PushTrigger::default()
            }),
            pull_request: None,
        };
        let branches = Triggers {
            push: Some(PushTrigger {
                branches: gl(&["main"]),
                ..PushTrigger::default()
            }),
            pull_request: Some(PullRequestTrigger {
                branches_ignore: gl(&["old/**"]),
                ..PullRequestTrigger::default()
            }),
        };
        let pr_only = Triggers {
            push: None,
            pull_request: Some(PullRequestTrigger::default()),
        };
        let why = |t: &Triggers, e: Event| t.why_not(&e).map(|w| w.to_string());
        let cases = [
            (why(&release, tag("2.4.0")), "push to tag 2.4.0 matches none of on.push.tags [v*, !v*-rc]"),
            (why(&release, tag("v1-rc")), "push to tag v1-rc is excluded by `!v*-rc`, the last matching pattern of on.push.tags [v*, !v*-rc]"),
            (why(&release, tag("v0.1")), "push to tag v0.1 matches `v0*` of on.push.tags_ignore [v0*]"),
            (why(&release, push("main")), "push to branch main: on.push filters only tags, so branch pushes do not trigger it"),
            (why(&release, pr("main")), "pull request to main: the pipeline has no on.pull_request"),
            (why(&branches, tag("v1")), "push to tag v1: on.push has no `tags`, so tag pushes do not trigger it"),
            (why(&branches, push("dev")), "push to branch dev matches none of on.push.branches [main]"),
            (why(&branches, pr("old/x")), "pull request to old/x matches `old/**` of on.pull_request.branches_ignore [old/**]"),
            (why(&pr_only, push("main")), "push to branch main: the pipeline has no on.push"),
            (why(&Triggers::default(), tag("v1")), "push to tag v1: a pipeline without `on:` runs on branch pushes only"),
        ];
        for (got, want) in cases {
            assert_eq!(got.as_deref(), Some(want));
        }
        assert_eq!(why(&release, tag("v1.0")), None);
        assert_eq!(why(&branches, push("main")), None);
    }
}
