//! The gates a decision is asked at. Each gate is a Rego package prefix: every package at or
//! under it that declares `deny` or `warn` takes part, so bundles can live side by side in
//! packages of their own (`deploylite.run.image_registries`) and be tested one at a time.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Gate {
    /// Once a run is planned, before anything is dispatched: a deny ends the run in `error`.
    #[serde(rename = "deploylite.run")]
    Run,
    /// When a deployment leaves `waiting`: a deny rejects it.
    #[serde(rename = "deploylite.deploy")]
    Deploy,
}

impl Gate {
    pub const ALL: [Gate; 2] = [Gate::Run, Gate::Deploy];

    /// The Rego package (and the `input.gate` value) of this gate.
    pub fn package(self) -> &'static str {
        match self {
            Gate::Run => "deploylite.run",
            Gate::Deploy => "deploylite.deploy",
        }
    }

    /// The package components, `["deploylite", "run"]`.
    pub(crate) fn components(self) -> [&'static str; 2] {
        match self {
            Gate::Run => ["deploylite", "run"],
            Gate::Deploy => ["deploylite", "deploy"],
        }
    }

    /// Whether a package (by its components) belongs to this gate.
    pub(crate) fn covers(self, package: &[String]) -> bool {
        let prefix = self.components();
        package.len() >= prefix.len() && prefix.iter().zip(package).all(|(a, b)| *a == b)
    }
}

impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.package())
    }
}

impl std::str::FromStr for Gate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Gate::ALL
            .into_iter()
            .find(|g| g.package() == s || g.package().strip_prefix("deploylite.") == Some(s))
            .ok_or_else(|| {
                format!("unknown gate `{s}`: expected deploylite.run or deploylite.deploy")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(p: &str) -> Vec<String> {
        p.split('.').map(str::to_string).collect()
    }

    #[test]
    fn a_gate_covers_its_package_and_those_under_it_only() {
        assert!(Gate::Run.covers(&package("deploylite.run")));
        assert!(Gate::Run.covers(&package("deploylite.run.registries")));
        assert!(!Gate::Run.covers(&package("deploylite.runner")));
        assert!(!Gate::Run.covers(&package("deploylite.deploy.windows")));
        assert!(!Gate::Run.covers(&package("deploylite")));
        assert!(Gate::Deploy.covers(&package("deploylite.deploy.windows")));
    }

    #[test]
    fn gates_parse_by_package_or_short_name() {
        assert_eq!("deploylite.run".parse(), Ok(Gate::Run));
        assert_eq!("deploy".parse(), Ok(Gate::Deploy));
        assert!("deploylite.build".parse::<Gate>().is_err());
    }
}
