//! DeployLite's control loop: watch git refs, turn each new commit's `.deploylite/` into runs
//! (desired state), record them (the store), and move runs and stages through their state
//! machine (the scheduler).

pub mod changes;
pub mod desired;
pub mod environments;
pub mod events;
pub mod git;
pub mod inbox;
pub mod model;
pub mod observe;
pub mod paths;
pub mod pulls;
pub mod run_gate;
pub mod scheduler;
pub mod secrets;
/// The run, stage and deployment state machines (the `deploylite-model` crate's).
pub use deploylite_model::status;
pub mod store;
pub mod trust;
pub mod watcher;
