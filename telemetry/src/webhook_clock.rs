//! When webhooks arrived, per repository, so that the first stage of a run they caused can
//! say how long after its webhook it started (`deploylite_webhook_to_start_seconds`).
//!
//! A push webhook only pokes the repository's watcher, which records the runs on its next
//! pass; so the link between a webhook and its runs is made by time: a run recorded for the
//! repository within [`CAUSE_WINDOW`] after a webhook was caused by the latest such webhook.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};

/// How long after a webhook a run recorded for its repository counts as its consequence.
pub const CAUSE_WINDOW_MS: i64 = 60_000;
/// Receipts kept per repository (a burst beyond it keeps the newest).
const KEPT_PER_REPO: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub forge: String,
    /// Epoch milliseconds.
    pub at_ms: i64,
}

#[derive(Default)]
pub struct WebhookClock {
    recent: Mutex<HashMap<String, VecDeque<Receipt>>>,
}

/// The process' clock (repositories are bounded by the configuration: only deliveries for a
/// watched repository are recorded).
pub fn webhook_clock() -> &'static WebhookClock {
    static CLOCK: OnceLock<WebhookClock> = OnceLock::new();
    CLOCK.get_or_init(Default::default)
}

impl WebhookClock {
    /// A webhook for `repo` from `forge` was accepted at `at_ms`.
    pub fn received(&self, repo: &str, forge: &str, at_ms: i64) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let receipts = recent.entry(repo.to_string()).or_default();
        while receipts
            .front()
            .is_some_and(|r| r.at_ms < at_ms - CAUSE_WINDOW_MS)
            || receipts.len() >= KEPT_PER_REPO
        {
            receipts.pop_front();
        }
        receipts.push_back(Receipt {
            forge: forge.to_string(),
            at_ms,
        });
    }

    /// The webhook that caused a run of `repo` recorded at `recorded_ms`, if one did.
    pub fn cause_of(&self, repo: &str, recorded_ms: i64) -> Option<Receipt> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .get(repo)?
            .iter()
            .rev()
            .find(|r| r.at_ms <= recorded_ms && recorded_ms - r.at_ms <= CAUSE_WINDOW_MS)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_caused_by_the_latest_webhook_before_it_within_the_window() {
        let clock = WebhookClock::default();
        clock.received("app", "github", 1_000);
        clock.received("app", "gitlab", 5_000);
        assert_eq!(clock.cause_of("app", 6_000).unwrap().forge, "gitlab");
        assert_eq!(clock.cause_of("app", 4_000).unwrap().at_ms, 1_000);
        assert_eq!(clock.cause_of("app", 500), None, "before any webhook");
        assert_eq!(clock.cause_of("app", 5_000 + CAUSE_WINDOW_MS + 1), None);
        assert_eq!(clock.cause_of("other", 6_000), None);
    }

    #[test]
    fn old_receipts_are_forgotten() {
        let clock = WebhookClock::default();
        for i in 0..1000 {
            clock.received("app", "github", i);
        }
        assert!(clock.recent.lock().unwrap()["app"].len() <= KEPT_PER_REPO);
    }
}
