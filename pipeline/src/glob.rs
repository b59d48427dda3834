//! Branch, tag and path globs with GitHub Actions semantics.
//!
//! - `*` matches within one path segment (it does not cross `/`), `**` crosses segments,
//!   `?` one character, `[abc]` classes, `{a,b}` alternatives, `\` escapes.
//! - A pattern starting with `!` is a negation. In a list, the *last* matching pattern wins,
//!   as in GitHub Actions: `["src/**", "!src/gen/**"]` matches `src/a.rs` but not
//!   `src/gen/x.rs`. A list of only negations matches nothing (the parser rejects it).
//!
//! Compiling a glob into a regex costs tens of microseconds and even parsing one costs about a
//! microsecond, while the daemon re-parses the same pipeline files on every commit. So parsed
//! globs are shared through a small process-wide cache keyed by pattern, and each matcher is
//! compiled lazily, once, on first use (a pipeline that is only validated never pays for it).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One glob pattern, as written (including a leading `!` for negations).
#[derive(Clone)]
pub struct Glob {
    pattern: String,
    compiled: Arc<Compiled>,
}

struct Compiled {
    glob: globset::Glob,
    matcher: OnceLock<GlobMatcher>,
}

/// Beyond this many distinct patterns the cache is cleared rather than grown: it only
/// exists to make re-parsing cheap, and real repositories use a few dozen patterns.
const CACHE_LIMIT: usize = 4096;

fn cache() -> &'static Mutex<HashMap<String, Arc<Compiled>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Compiled>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

impl Glob {
    /// Parse a pattern. The error is the globset error text, e.g.
    /// `unclosed character class; missing ']'`.
    pub fn new(pattern: &str) -> Result<Glob, String> {
        let body = pattern.strip_prefix('!').unwrap_or(pattern);
        if body.is_empty() {
            return Err("empty pattern".to_string());
        }
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        let cached = cache()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(body)
            .cloned();
        if let Some(compiled) = cached {
            return Ok(Glob {
                pattern: pattern.to_string(),
                compiled,
            });
        }
        let glob = GlobBuilder::new(body)
            .literal_separator(true)
            // Explicit so that behaviour does not depend on the host platform.
            .backslash_escape(true)
            .build()
            .map_err(|e| e.kind().to_string())?;
        let compiled = Arc::new(Compiled {
            glob,
            matcher: OnceLock::new(),
        });
        let mut map = cache().lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CACHE_LIMIT {
            map.clear();
        }
        map.insert(body.to_string(), Arc::clone(&compiled));
        Ok(Glob {
            pattern: pattern.to_string(),
            compiled,
        })
    }

    /// The pattern as written, including a leading `!`.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Whether this is a `!negation`.
    pub fn is_negated(&self) -> bool {
        self.pattern.starts_with('!')
    }

    /// The compiled matcher of the pattern body (without the `!`), compiled on first use.
    pub fn matcher(&self) -> &GlobMatcher {
        let c = &*self.compiled;
        c.matcher.get_or_init(|| c.glob.compile_matcher())
    }

    /// Whether the pattern body matches `s`, ignoring negation.
    pub fn is_match(&self, s: &str) -> bool {
        self.matcher().is_match(s)
    }

    /// [`Glob::is_match`] on a candidate prepared once for several globs.
    fn is_match_candidate(&self, c: &globset::Candidate<'_>) -> bool {
        self.matcher().is_match_candidate(c)
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.pattern)
    }
}

impl PartialEq for Glob {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}
impl Eq for Glob {}

impl Serialize for Glob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.pattern)
    }
}

impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Glob::new(&s).map_err(|e| serde::de::Error::custom(format!("invalid glob `{s}`: {e}")))
    }
}

/// An ordered list of globs; serialised as a list of pattern strings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GlobList(pub Vec<Glob>);

impl GlobList {
    /// Parse every pattern; the first error is returned as `invalid glob `p`: reason`.
    pub fn new<I, S>(patterns: I) -> Result<GlobList, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        patterns
            .into_iter()
            .map(|p| {
                let p = p.as_ref();
                Glob::new(p).map_err(|e| format!("invalid glob `{p}`: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(GlobList)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `s` is matched: the last pattern that matches decides (a `!` pattern un-matches).
    pub fn matches(&self, s: &str) -> bool {
        self.matches_candidate(&globset::Candidate::new(s))
    }

    /// [`GlobList::matches`] on a candidate prepared once (finding a path's file name and
    /// extension costs about as much as matching it): trigger matching tries every changed
    /// path against several lists.
    pub(crate) fn matches_candidate(&self, c: &globset::Candidate<'_>) -> bool {
        self.0
            .iter()
            .rev()
            .find(|g| g.is_match_candidate(c))
            .is_some_and(|g| !g.is_negated())
    }

    /// The patterns as written.
    pub fn patterns(&self) -> Vec<&str> {
        self.0.iter().map(Glob::pattern).collect()
    }

    /// Whether the list has at least one non-negated pattern.
    pub fn has_positive(&self) -> bool {
        self.0.iter().any(|g| !g.is_negated())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(p: &[&str]) -> GlobList {
        GlobList::new(p).unwrap()
    }

    #[test]
    fn github_semantics() {
        let l = list(&["release/**", "main", "feat-*"]);
        assert!(l.matches("main"));
        assert!(l.matches("release/1.0"));
        assert!(l.matches("release/1/2"));
        assert!(!l.matches("release"));
        assert!(l.matches("feat-x"));
        assert!(!l.matches("feat-x/y"), "* must not cross /");
        assert!(!l.matches("mainline"));

        let l = list(&["src/**", "!src/gen/**", "src/gen/keep.rs"]);
        assert!(l.matches("src/a.rs"));
        assert!(!l.matches("src/gen/x.rs"));
        assert!(l.matches("src/gen/keep.rs"));
        assert!(!list(&["!docs/**"]).matches("src/a"));
        assert!(!GlobList::default().matches("x"));
    }

    #[test]
    fn errors_and_serde() {
        assert_eq!(
            GlobList::new(["[a"]).unwrap_err(),
            "invalid glob `[a`: unclosed character class; missing ']'"
        );
        assert_eq!(Glob::new("!").unwrap_err(), "empty pattern");
        let l = list(&["a/*", "!b"]);
        let j = serde_json::to_string(&l).unwrap();
        assert_eq!(j, r#"["a/*","!b"]"#);
        let back: GlobList = serde_json::from_str(&j).unwrap();
        assert_eq!(back, l);
        assert!(back.matches("a/x"));
        assert!(serde_json::from_str::<GlobList>(r#"["{a"]"#).is_err());
        assert_eq!(l.patterns(), ["a/*", "!b"]);
    }
}
