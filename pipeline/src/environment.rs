//! STUB (types only) until helper-envfile's parser lands; the merge takes the helper's file.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Diagnostic, Pos};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub name: String,
    #[serde(default)]
    pub name_pos: Pos,
    pub deploy: String,
    pub follows: Follows,
    #[serde(default)]
    pub requires: Vec<String>,
    #[serde(default)]
    pub promote_from: Vec<String>,
    #[serde(default)]
    pub approval: Option<Approval>,
    #[serde(default)]
    pub verify: Option<String>,
    #[serde(default)]
    pub check: Option<DriftCheck>,
    #[serde(default)]
    pub on_drift: OnDrift,
    #[serde(default)]
    pub rollback: RollbackMode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Diagnostic>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Follows {
    Branch(String),
    Tag(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub required: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftCheck {
    pub pipeline: String,
    #[serde(with = "ms")]
    pub interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDrift {
    Redeploy,
    #[default]
    Report,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackMode {
    Auto,
    #[default]
    Manual,
}

impl Environment {
    pub fn pipelines(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.deploy.as_str())
            .chain(self.verify.as_deref())
            .chain(self.check.as_ref().map(|c| c.pipeline.as_str()))
    }
}

pub fn parse_environment(file: &str, src: &str) -> Result<Environment, Vec<Diagnostic>> {
    let _ = src;
    Err(vec![Diagnostic {
        file: file.to_string(),
        line: 1,
        col: 1,
        message: "environment files are not parsed yet".into(),
    }])
}

mod ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
