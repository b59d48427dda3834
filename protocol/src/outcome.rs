//! How an attempt ended: what an executor returns, what a runner reports to `…/complete`, and
//! what the scheduler records. One type for all three, so that nothing converts between
//! mirrors of it.
//!
//! On the wire it is an object tagged by `outcome`: `{"outcome": "success"}`,
//! `{"outcome": "failed", "step": 0, "exit_code": 2}`, `{"outcome": "timed_out"}`,
//! `{"outcome": "cancelled"}`, `{"outcome": "error", "message": "…"}`,
//! `{"outcome": "handed_back"}`. That shape predates this type and runners of every version
//! speak it, so it is written out here rather than left to serde's derive (which cannot tag a
//! variant holding a bare string).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    Succeeded,
    /// A step exited non-zero (`exit_code` is None when it died from a signal).
    Failed {
        step: usize,
        exit_code: Option<i32>,
    },
    TimedOut,
    Cancelled,
    /// The executor itself could not run the stage (spawn failure, missing workspace...).
    Error(String),
    /// Not an end: a runner that is shutting down gives the attempt back, and the server runs
    /// the stage again as a new attempt (not counted against `retry.max`). Executors never
    /// return it; only the runner agent reports it.
    HandedBack,
}

impl AttemptOutcome {
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            AttemptOutcome::Succeeded => Some(0),
            AttemptOutcome::Failed { exit_code, .. } => *exit_code,
            _ => None,
        }
    }
}

/// The tagged object, field by field; absent fields are skipped, unknown ones ignored.
#[derive(Serialize, Deserialize)]
struct Wire {
    outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step: Option<usize>,
    // Present (possibly null) exactly when `outcome` is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exit_code: Option<Option<i32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl Serialize for AttemptOutcome {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let tag = |outcome: &str| Wire {
            outcome: outcome.to_string(),
            step: None,
            exit_code: None,
            message: None,
        };
        let wire = match self {
            AttemptOutcome::Succeeded => tag("success"),
            AttemptOutcome::Failed { step, exit_code } => Wire {
                step: Some(*step),
                exit_code: Some(*exit_code),
                ..tag("failed")
            },
            AttemptOutcome::TimedOut => tag("timed_out"),
            AttemptOutcome::Cancelled => tag("cancelled"),
            AttemptOutcome::Error(message) => Wire {
                message: Some(message.clone()),
                ..tag("error")
            },
            AttemptOutcome::HandedBack => tag("handed_back"),
        };
        wire.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for AttemptOutcome {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        Ok(match wire.outcome.as_str() {
            "success" => AttemptOutcome::Succeeded,
            "failed" => AttemptOutcome::Failed {
                step: wire.step.ok_or_else(|| D::Error::missing_field("step"))?,
                exit_code: wire.exit_code.flatten(),
            },
            "timed_out" => AttemptOutcome::TimedOut,
            "cancelled" => AttemptOutcome::Cancelled,
            "error" => AttemptOutcome::Error(
                wire.message
                    .ok_or_else(|| D::Error::missing_field("message"))?,
            ),
            "handed_back" => AttemptOutcome::HandedBack,
            other => {
                return Err(D::Error::unknown_variant(
                    other,
                    &[
                        "success",
                        "failed",
                        "timed_out",
                        "cancelled",
                        "error",
                        "handed_back",
                    ],
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn wire(outcome: &AttemptOutcome) -> Value {
        serde_json::to_value(outcome).unwrap_or_else(|e| panic!("{outcome:?}: {e}"))
    }

    fn read(value: Value) -> Result<AttemptOutcome, serde_json::Error> {
        serde_json::from_value(value)
    }

    /// The objects runners have always sent, both ways.
    #[test]
    fn the_wire_shape_is_the_runners_one() {
        let cases = [
            (AttemptOutcome::Succeeded, json!({"outcome": "success"})),
            (
                AttemptOutcome::Failed {
                    step: 2,
                    exit_code: Some(3),
                },
                json!({"outcome": "failed", "step": 2, "exit_code": 3}),
            ),
            (
                AttemptOutcome::Failed {
                    step: 0,
                    exit_code: None,
                },
                json!({"outcome": "failed", "step": 0, "exit_code": null}),
            ),
            (AttemptOutcome::TimedOut, json!({"outcome": "timed_out"})),
            (AttemptOutcome::Cancelled, json!({"outcome": "cancelled"})),
            (
                AttemptOutcome::Error("no such image".into()),
                json!({"outcome": "error", "message": "no such image"}),
            ),
            (
                AttemptOutcome::HandedBack,
                json!({"outcome": "handed_back"}),
            ),
        ];
        for (outcome, expected) in cases {
            assert_eq!(wire(&outcome), expected, "{outcome:?}");
            assert_eq!(read(expected).ok(), Some(outcome));
        }
    }

    #[test]
    fn malformed_reports_are_refused_with_a_reason() {
        let unknown = read(json!({"outcome": "exploded"}))
            .err()
            .map(|e| e.to_string());
        assert!(
            unknown.as_deref().is_some_and(|e| e.contains("exploded")),
            "{unknown:?}"
        );
        let no_step = read(json!({"outcome": "failed", "exit_code": 1}))
            .err()
            .map(|e| e.to_string());
        assert!(
            no_step.as_deref().is_some_and(|e| e.contains("step")),
            "{no_step:?}"
        );
        assert!(read(json!({"outcome": "error"})).is_err(), "no message");
        assert!(read(json!({"step": 1})).is_err(), "no tag");
        // A signal death's exit code may be left out as well as sent as null.
        assert_eq!(
            read(json!({"outcome": "failed", "step": 1})).ok(),
            Some(AttemptOutcome::Failed {
                step: 1,
                exit_code: None
            })
        );
    }
}
