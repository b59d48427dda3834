//! Which tags a repository watches, and the warnings for pipelines whose tag triggers the
//! repository's config keeps from ever firing.
//!
//! As in GitHub Actions, a tag push runs the pipelines whose `on.push.tags` match it, read at
//! the tagged commit. Without `tags:` in the repository's config every tag is looked at and
//! the pipelines decide; with `tags:` only those tags are (an empty list: none).

use deploylite_pipeline::{GlobList, Pipeline};
use serde::Deserialize;

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "GlobList")]
pub enum TagFilter {
    /// No `tags:` in the config: the pipelines' `on.push.tags` decide.
    #[default]
    FromPipelines,
    /// `tags:` in the config: only tags these match (none when empty).
    Globs(GlobList),
}

impl From<GlobList> for TagFilter {
    fn from(globs: GlobList) -> TagFilter {
        TagFilter::Globs(globs)
    }
}

impl TagFilter {
    /// Whether tags need listing at all.
    pub fn watches_any(&self) -> bool {
        match self {
            TagFilter::FromPipelines => true,
            TagFilter::Globs(globs) => globs.has_positive(),
        }
    }

    /// Whether a new head of tag `tag` (without `refs/tags/`) is reconciled.
    pub fn matches(&self, tag: &str) -> bool {
        match self {
            TagFilter::FromPipelines => true,
            TagFilter::Globs(globs) => globs.matches(tag),
        }
    }
}

/// One warning per pipeline with tag patterns that `config` excludes: those can never fire.
/// A pattern is reachable when a config glob matches it taken literally (`*` covers `v*`) or
/// it matches a config glob taken literally (`v*` overlaps `v1.*`): a cheap overlap test that
/// errs towards silence.
pub fn tag_warnings(config: &TagFilter, pipelines: &[(&str, &Pipeline)]) -> Vec<String> {
    let TagFilter::Globs(globs) = config else {
        return Vec::new();
    };
    let configured: Vec<&str> = globs
        .patterns()
        .into_iter()
        .filter(|p| !p.starts_with('!'))
        .collect();
    let mut warnings = Vec::new();
    for (file, pipeline) in pipelines {
        let Some(push) = &pipeline.on.push else {
            continue;
        };
        let excluded: Vec<&str> = push
            .tags
            .patterns()
            .into_iter()
            .filter(|p| !p.starts_with('!'))
            .filter(|pattern| {
                let reaches = GlobList::new([*pattern])
                    .is_ok_and(|own| configured.iter().any(|c| own.matches(c)));
                !globs.matches(pattern) && !reaches
            })
            .collect();
        if excluded.is_empty() {
            continue;
        }
        let listed = |patterns: &[&str]| {
            patterns
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        warnings.push(format!(
            "pipeline `{}` ({file}) triggers on tags {} that the repository's `tags:` [{}] excludes: \
             that tag trigger can never fire (remove `tags:` from the repository's config to let \
             the pipelines decide)",
            pipeline.name,
            listed(&excluded),
            listed(&configured),
        ));
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(tags: &str) -> Pipeline {
        let yaml = format!(
            "name: release\non:\n  push:\n    tags: {tags}\nstages:\n  s:\n    steps: [{{ run: 'true' }}]\n"
        );
        deploylite_pipeline::parse_pipeline("release.yaml", &yaml).expect("valid pipeline")
    }

    fn globs(patterns: &[&str]) -> TagFilter {
        TagFilter::Globs(GlobList::new(patterns).expect("globs"))
    }

    #[test]
    fn without_tags_in_the_config_the_pipelines_decide() {
        let p = pipeline("[\"v*\"]");
        assert!(TagFilter::FromPipelines.watches_any());
        assert!(TagFilter::FromPipelines.matches("anything"));
        assert!(tag_warnings(&TagFilter::FromPipelines, &[("f.yaml", &p)]).is_empty());
    }

    #[test]
    fn overlapping_patterns_are_not_warned_about() {
        let p = pipeline("[\"v*\"]");
        for config in [&["v*"][..], &["*"], &["v1.*"], &["release-*", "v*"]] {
            assert_eq!(
                tag_warnings(&globs(config), &[("f.yaml", &p)]),
                Vec::<String>::new(),
                "{config:?}"
            );
        }
    }

    #[test]
    fn excluded_patterns_are_named_with_their_pipeline() {
        let p = pipeline("[\"v*\", \"release-*\"]");
        assert_eq!(
            tag_warnings(
                &globs(&["release-*"]),
                &[(".deploylite/pipelines/release.yaml", &p)]
            ),
            vec![
                "pipeline `release` (.deploylite/pipelines/release.yaml) triggers on tags `v*` \
                 that the repository's `tags:` [`release-*`] excludes: that tag trigger can never \
                 fire (remove `tags:` from the repository's config to let the pipelines decide)"
                    .to_string()
            ]
        );
        let none = globs(&[]);
        assert!(!none.watches_any());
        assert_eq!(tag_warnings(&none, &[("f.yaml", &p)]).len(), 1);
    }
}
