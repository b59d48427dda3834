//! What a gate decided, as recorded with a run (and later a deployment).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The outcome of one gate evaluation. Recorded as is; `deny` non-empty blocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Messages of every `deny` rule that held, operator bundles first, each list sorted.
    pub deny: Vec<String>,
    /// Messages of every `warn` rule that held: they only annotate.
    pub warn: Vec<String>,
    /// The sha256 of the policy revision that decided: the operator bundles' files and the
    /// repository's policy files (see `PolicySources::revision_sha256`).
    pub revision_sha256: String,
    /// Wall time of the evaluation (cloning the compiled engines and running them).
    #[serde(rename = "eval_time_us", with = "micros")]
    pub eval_time: Duration,
}

impl Decision {
    pub fn denied(&self) -> bool {
        !self.deny.is_empty()
    }

    /// Nothing to say: no policy denied or warned.
    pub fn is_quiet(&self) -> bool {
        self.deny.is_empty() && self.warn.is_empty()
    }
}

mod micros {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_micros(u64::deserialize(d)?))
    }
}
