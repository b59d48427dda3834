//! The run and stage state machines. Every status change in the store goes through
//! [`StageStatus::can_become`] / [`RunStatus::can_become`], so an illegal transition is a bug we
//! see, not a corrupted run.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! status_enum {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownStatus;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownStatus(other.to_string())),
                }
            }
        }
    };
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown status `{0}`")]
pub struct UnknownStatus(pub String);

status_enum!(RunStatus {
    Queued => "queued",
    Running => "running",
    Success => "success",
    Failed => "failed",
    Cancelled => "cancelled",
    Skipped => "skipped",
    Error => "error",
});

status_enum!(StageStatus {
    Queued => "queued",
    Running => "running",
    Success => "success",
    Failed => "failed",
    Cancelled => "cancelled",
    Skipped => "skipped",
});

status_enum!(DeploymentStatus {
    Waiting => "waiting",
    Queued => "queued",
    Deploying => "deploying",
    Verifying => "verifying",
    Succeeded => "succeeded",
    Failed => "failed",
    RollingBack => "rolling_back",
    RolledBack => "rolled_back",
    Superseded => "superseded",
    Cancelled => "cancelled",
    Rejected => "rejected",
});

status_enum!(DeploymentAction {
    Deploy => "deploy",
    Rollback => "rollback",
});

// What a deployment's run does, given to its stages as `DEPLOYLITE_ACTION`.
status_enum!(RunAction {
    Deploy => "deploy",
    Rollback => "rollback",
    Verify => "verify",
    Check => "check",
});

status_enum!(Sync {
    InSync => "in_sync",
    OutOfSync => "out_of_sync",
    Drifted => "drifted",
    Unknown => "unknown",
});

status_enum!(Health {
    Healthy => "healthy",
    Degraded => "degraded",
    Progressing => "progressing",
    Unknown => "unknown",
});

impl DeploymentStatus {
    /// Final: nothing moves it any more. `RollingBack` is not final: its rollback is running.
    pub fn is_final(self) -> bool {
        use DeploymentStatus::*;
        matches!(
            self,
            Succeeded | Failed | RolledBack | Superseded | Cancelled | Rejected
        )
    }

    /// Holds the environment's lock: one such deployment per environment at a time.
    pub fn is_active(self) -> bool {
        use DeploymentStatus::*;
        matches!(self, Queued | Deploying | Verifying)
    }

    pub fn can_become(self, next: DeploymentStatus) -> bool {
        use DeploymentStatus::*;
        matches!(
            (self, next),
            (Waiting, Queued)
                | (Waiting, Superseded)
                | (Waiting, Cancelled)
                | (Waiting, Rejected)
                | (Queued, Deploying)
                | (Queued, Superseded)
                | (Queued, Cancelled)
                | (Queued, Failed)
                | (Deploying, Verifying)
                | (Deploying, Succeeded)
                | (Deploying, Failed)
                | (Deploying, Cancelled)
                | (Deploying, RollingBack)
                | (Verifying, Succeeded)
                | (Verifying, Failed)
                | (Verifying, Cancelled)
                | (Verifying, RollingBack)
                | (RollingBack, RolledBack)
                | (RollingBack, Failed)
        )
    }
}

impl RunStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }

    pub fn can_become(self, next: RunStatus) -> bool {
        use RunStatus::*;
        matches!(
            (self, next),
            (Queued, Running)
                | (Queued, Cancelled)
                | (Running, Success)
                | (Running, Failed)
                | (Running, Cancelled)
        )
    }
}

impl StageStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, StageStatus::Queued | StageStatus::Running)
    }

    /// `Running -> Queued` is a retry (or a restart after a crash): a new attempt follows.
    pub fn can_become(self, next: StageStatus) -> bool {
        use StageStatus::*;
        matches!(
            (self, next),
            (Queued, Running)
                | (Queued, Skipped)
                | (Queued, Cancelled)
                | (Running, Success)
                | (Running, Failed)
                | (Running, Cancelled)
                | (Running, Queued)
        )
    }
}

/// The outcome of a run once every stage is final.
pub fn run_outcome(stages: &[StageStatus], cancel_requested: bool) -> RunStatus {
    if stages.contains(&StageStatus::Failed) {
        RunStatus::Failed
    } else if cancel_requested || stages.contains(&StageStatus::Cancelled) {
        RunStatus::Cancelled
    } else {
        RunStatus::Success
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        for s in RunStatus::ALL {
            assert_eq!(s.as_str().parse::<RunStatus>().ok(), Some(*s));
        }
        for s in StageStatus::ALL {
            assert_eq!(s.as_str().parse::<StageStatus>().ok(), Some(*s));
        }
        for s in DeploymentStatus::ALL {
            assert_eq!(s.as_str().parse::<DeploymentStatus>().ok(), Some(*s));
        }
        assert!("bogus".parse::<RunStatus>().is_err());
    }

    #[test]
    fn final_states_never_move() {
        for from in StageStatus::ALL.iter().filter(|s| s.is_final()) {
            for to in StageStatus::ALL {
                assert!(!from.can_become(*to), "{from} -> {to}");
            }
        }
        for from in DeploymentStatus::ALL.iter().filter(|s| s.is_final()) {
            for to in DeploymentStatus::ALL {
                assert!(!from.can_become(*to), "{from} -> {to}");
            }
        }
        for from in RunStatus::ALL.iter().filter(|s| s.is_final()) {
            for to in RunStatus::ALL {
                assert!(!from.can_become(*to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn stage_transitions() {
        use StageStatus::*;
        assert!(Queued.can_become(Running));
        assert!(Running.can_become(Queued), "retry");
        assert!(!Queued.can_become(Success), "must run first");
        assert!(!Queued.can_become(Failed));
        assert!(!Running.can_become(Skipped));
    }

    #[test]
    fn outcome() {
        use StageStatus::*;
        assert_eq!(run_outcome(&[Success, Skipped], false), RunStatus::Success);
        assert_eq!(
            run_outcome(&[Success, Failed, Skipped], false),
            RunStatus::Failed
        );
        assert_eq!(
            run_outcome(&[Success, Cancelled], false),
            RunStatus::Cancelled
        );
        assert_eq!(run_outcome(&[Success, Skipped], true), RunStatus::Cancelled);
        assert_eq!(run_outcome(&[], false), RunStatus::Success);
    }
}
