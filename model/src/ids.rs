//! The typed ids. Numbers and strings on the wire and in the database; distinct types in code,
//! so that a run's id cannot be passed where an attempt number goes, nor a stage's name where a
//! repository's does.

use std::borrow::Borrow;
use std::fmt;
use std::num::ParseIntError;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A number read from outside (a database column, most often) that the domain type cannot
/// hold: a negative or oversized attempt number, say. The store reports it as a corrupt value
/// instead of clamping it into something that looks valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value} is out of range")]
pub struct OutOfRange {
    pub what: &'static str,
    pub value: i64,
}

/// A run's id: the store's row id, as the API, the log paths and the runner protocol name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(i64);

impl RunId {
    pub const fn new(id: i64) -> RunId {
        RunId(id)
    }

    pub const fn get(self) -> i64 {
        self.0
    }
}

impl From<i64> for RunId {
    fn from(id: i64) -> RunId {
        RunId(id)
    }
}

impl From<RunId> for i64 {
    fn from(id: RunId) -> i64 {
        id.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// From a URL's path (`/api/v1/runs/{id}`) or a command line.
impl FromStr for RunId {
    type Err = ParseIntError;
    fn from_str(s: &str) -> Result<RunId, ParseIntError> {
        s.parse().map(RunId)
    }
}

/// A stage's attempt number: 1 for its first attempt, one more for each retry or hand-back.
/// A stage that has not started yet is at attempt 0.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Attempt(u32);

impl Attempt {
    /// A stage that has not started.
    pub const NONE: Attempt = Attempt(0);
    pub const FIRST: Attempt = Attempt(1);

    pub const fn new(n: u32) -> Attempt {
        Attempt(n)
    }

    pub const fn get(self) -> u32 {
        self.0
    }

    /// The attempt after this one. Attempts are bounded by `retry.max` and by hand-backs, far
    /// below `u32::MAX`; should that ever be reached, the number stays there rather than wrap
    /// to an attempt that already exists.
    #[must_use]
    pub const fn next(self) -> Attempt {
        Attempt(self.0.saturating_add(1))
    }
}

impl From<u32> for Attempt {
    fn from(n: u32) -> Attempt {
        Attempt(n)
    }
}

impl From<Attempt> for u32 {
    fn from(a: Attempt) -> u32 {
        a.0
    }
}

/// What the store binds: its columns are BIGINT.
impl From<Attempt> for i64 {
    fn from(a: Attempt) -> i64 {
        i64::from(a.0)
    }
}

/// What the store reads back; a column outside `0..=u32::MAX` is an error, not a clamp.
impl TryFrom<i64> for Attempt {
    type Error = OutOfRange;
    fn try_from(value: i64) -> Result<Attempt, OutOfRange> {
        u32::try_from(value).map(Attempt).map_err(|_| OutOfRange {
            what: "attempt",
            value,
        })
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// From a URL's path (`…/leases/{run}/{stage}/{attempt}/…`) or a query string.
impl FromStr for Attempt {
    type Err = ParseIntError;
    fn from_str(s: &str) -> Result<Attempt, ParseIntError> {
        s.parse().map(Attempt)
    }
}

/// A string id: transparent in serde, shown as itself, compared with plain strings.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> $name {
                $name(s.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> $name {
                $name(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> $name {
                $name(s.to_string())
            }
        }

        impl From<&String> for $name {
            fn from(s: &String) -> $name {
                $name(s.clone())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        /// Read as the text it is: `&name` goes wherever a `&str` does.
        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        /// So that a map keyed by it can be looked up with a `&str`.
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
    };
}

string_id!(
    /// A stage's name within its pipeline (`build`, `deploy`): unique within a run.
    StageName
);

string_id!(
    /// A commit's id as git prints it (40 hex digits for SHA-1).
    CommitSha
);

string_id!(
    /// A watched repository's name, as the daemon's config gives it (`repos[].name`).
    RepoName
);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Typed or not, the wire carries the bare number or string.
    #[test]
    fn the_json_is_the_bare_value() {
        let value = |v: serde_json::Result<serde_json::Value>| v.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(value(serde_json::to_value(RunId::new(42))), json!(42));
        assert_eq!(value(serde_json::to_value(Attempt::FIRST)), json!(1));
        assert_eq!(
            value(serde_json::to_value(StageName::from("build"))),
            json!("build")
        );
        let back: serde_json::Result<(RunId, Attempt, CommitSha)> =
            serde_json::from_value(json!([7, 3, "abc"]));
        assert_eq!(
            back.ok(),
            Some((RunId::new(7), Attempt::new(3), CommitSha::from("abc")))
        );
    }

    /// A lease or a report whose attempt is not a `u32` is refused, not clamped.
    #[test]
    fn an_attempt_out_of_range_is_an_error() {
        assert!(serde_json::from_value::<Attempt>(json!(-1)).is_err());
        assert!(serde_json::from_value::<Attempt>(json!(1_u64 << 40)).is_err());
        assert_eq!(
            Attempt::try_from(-1_i64),
            Err(OutOfRange {
                what: "attempt",
                value: -1
            })
        );
        assert_eq!(Attempt::try_from(1_i64 << 40).ok(), None);
        assert_eq!(Attempt::try_from(2_i64).ok(), Some(Attempt::new(2)));
        assert_eq!(i64::from(Attempt::new(u32::MAX)), i64::from(u32::MAX));
    }

    #[test]
    fn text_round_trips() {
        assert_eq!("12".parse::<RunId>().ok(), Some(RunId::new(12)));
        assert!("x".parse::<RunId>().is_err());
        assert_eq!("2".parse::<Attempt>().ok(), Some(Attempt::new(2)));
        assert!("-2".parse::<Attempt>().is_err());
        assert_eq!(RunId::new(12).to_string(), "12");
        assert_eq!(Attempt::NONE.next(), Attempt::FIRST);
        assert_eq!(Attempt::new(u32::MAX).next(), Attempt::new(u32::MAX));
        assert_eq!(StageName::from("deploy").to_string(), "deploy");
        assert!(RepoName::new("app") == "app" && "app" == RepoName::new("app"));
    }
}
