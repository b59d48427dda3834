//! Which commit an environment wants: the head of the branch it follows, or the highest
//! semantic-version tag matching its pattern.

use std::cmp::Ordering;

use deploylite_pipeline::{Follows, Glob};

/// The desired version (commit, ref) for `follows`, given the repository's branch and tag
/// heads (full ref names). `None`: the branch does not exist, or no tag matches.
pub fn desired_version(
    follows: &Follows,
    branches: &[(String, String)],
    tags: &[(String, String)],
) -> Option<(String, String)> {
    match follows {
        Follows::Branch(branch) => {
            let name = format!("refs/heads/{branch}");
            branches
                .iter()
                .find(|(r, _)| *r == name)
                .map(|(r, c)| (c.clone(), r.clone()))
        }
        Follows::Tag(pattern) => {
            let glob = Glob::new(pattern).ok()?;
            tags.iter()
                .filter_map(|(r, c)| {
                    let tag = r.strip_prefix("refs/tags/")?;
                    let version = SemVer::parse(tag)?;
                    glob.is_match(tag).then_some((version, c, r))
                })
                .max_by(|a, b| a.0.cmp(&b.0))
                .map(|(_, c, r)| (c.clone(), r.clone()))
        }
    }
}

/// `v1.2.3`, `1.2`, `v2.0.0-rc.1`: numeric core compared numerically, a pre-release below its
/// release (semver's rule), build metadata ignored. Anything else is not a version.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SemVer {
    core: [u64; 3],
    pre: Option<String>,
}

impl SemVer {
    fn parse(tag: &str) -> Option<SemVer> {
        let s = tag.strip_prefix('v').unwrap_or(tag);
        let s = s.split('+').next()?;
        let (core, pre) = match s.split_once('-') {
            Some((core, pre)) if !pre.is_empty() => (core, Some(pre.to_string())),
            Some(_) => return None,
            None => (s, None),
        };
        let mut numbers = [0u64; 3];
        let mut count = 0;
        for part in core.split('.') {
            if count == 3 || part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            numbers[count] = part.parse().ok()?;
            count += 1;
        }
        (count > 0).then_some(SemVer { core: numbers, pre })
    }
}

impl Ord for SemVer {
    fn cmp(&self, other: &Self) -> Ordering {
        self.core
            .cmp(&other.core)
            .then_with(|| match (&self.pre, &other.pre) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => compare_pre(a, b),
            })
    }
}

impl PartialOrd for SemVer {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Dot-separated identifiers: numeric ones numerically and below alphanumeric ones.
fn compare_pre(a: &str, b: &str) -> Ordering {
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(m), Ok(n)) => m.cmp(&n),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => x.cmp(y),
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(names: &[(&str, &str)]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|(r, c)| (r.to_string(), c.to_string()))
            .collect()
    }

    #[test]
    fn the_highest_matching_semver_tag_wins() {
        let tags = refs(&[
            ("refs/tags/v1.9.0", "a"),
            ("refs/tags/v1.10.0", "b"),
            ("refs/tags/v2.0.0-rc.1", "c"),
            ("refs/tags/release-9", "d"),
            ("refs/tags/v1.10.0-beta", "e"),
        ]);
        let follows = Follows::Tag("v1.*".into());
        assert_eq!(
            desired_version(&follows, &[], &tags),
            Some(("b".into(), "refs/tags/v1.10.0".into()))
        );
        let any = Follows::Tag("v*".into());
        assert_eq!(
            desired_version(&any, &[], &tags).map(|v| v.0),
            Some("c".into())
        );
        assert_eq!(
            desired_version(&Follows::Tag("x*".into()), &[], &tags),
            None
        );
    }

    #[test]
    fn pre_releases_order_below_their_release() {
        let v = |s| {
            SemVer::parse(s).unwrap_or(SemVer {
                core: [0; 3],
                pre: None,
            })
        };
        assert!(v("1.0.0-alpha") < v("1.0.0-alpha.1"));
        assert!(v("1.0.0-alpha.1") < v("1.0.0-beta"));
        assert!(v("1.0.0-beta.2") < v("1.0.0-beta.11"));
        assert!(v("1.0.0-rc.1") < v("1.0.0"));
        assert!(v("v1.2") < v("v1.2.1"));
        assert_eq!(SemVer::parse("1.2.3.4"), None);
        assert_eq!(SemVer::parse("v"), None);
        assert_eq!(SemVer::parse("1.x"), None);
    }

    #[test]
    fn a_branch_follows_its_head() {
        let branches = refs(&[("refs/heads/main", "m"), ("refs/heads/dev", "d")]);
        assert_eq!(
            desired_version(&Follows::Branch("main".into()), &branches, &[]),
            Some(("m".into(), "refs/heads/main".into()))
        );
        assert_eq!(
            desired_version(&Follows::Branch("gone".into()), &branches, &[]),
            None
        );
    }
}
