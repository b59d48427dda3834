//! How each repository's polling goes, kept in memory and shared with the HTTP API: a broken
//! repository (unreachable URL, missing path, bad credential) is shown, not only logged, and
//! its polls back off instead of hammering it.

use std::time::Duration;

use serde::Serialize;

/// Failing polls back off up to this many poll intervals.
pub const MAX_BACKOFF_FACTOR: u32 = 10;

/// How long to wait before the next poll: the poll interval, doubled for every consecutive
/// failure (2×, 4×, 8×…), at most [`MAX_BACKOFF_FACTOR`] intervals.
pub fn poll_delay(interval: Duration, consecutive_failures: u32) -> Duration {
    let cap = interval.saturating_mul(MAX_BACKOFF_FACTOR);
    if consecutive_failures == 0 {
        return interval;
    }
    let factor = 2u32.saturating_pow(consecutive_failures.min(31));
    interval.saturating_mul(factor).min(cap)
}

/// One repository's polling, as last seen. Times are epoch milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RepoHealth {
    pub last_poll_at: Option<i64>,
    pub last_success_at: Option<i64>,
    /// The last poll's error; None once a poll succeeds.
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    pub next_poll_at: Option<i64>,
    /// Pipelines whose tag triggers the repository's `tags:` keeps from firing.
    pub tag_warnings: Vec<String>,
    /// Polls ended since the daemon started, failed or not: a poll that began after some
    /// moment has ended once this grew by two (what tests wait for before asserting that a
    /// poll changed nothing).
    pub polls: u64,
}

impl RepoHealth {
    /// Records a poll that ended at `now` and returns the delay before the next one.
    pub fn record_poll(&mut self, now: i64, error: Option<String>, interval: Duration) -> Duration {
        self.last_poll_at = Some(now);
        self.polls = self.polls.saturating_add(1);
        match error {
            None => {
                self.last_success_at = Some(now);
                self.last_error = None;
                self.consecutive_failures = 0;
            }
            Some(error) => {
                self.last_error = Some(error);
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            }
        }
        let delay = poll_delay(interval, self.consecutive_failures);
        self.next_poll_at =
            Some(now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)));
        delay
    }

    pub fn is_failing(&self) -> bool {
        self.consecutive_failures > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_polls_back_off_exponentially_up_to_ten_intervals() {
        let interval = Duration::from_secs(2);
        let delays: Vec<u64> = (0..7)
            .map(|failures| poll_delay(interval, failures).as_secs())
            .collect();
        assert_eq!(delays, vec![2, 4, 8, 16, 20, 20, 20]);
        assert_eq!(
            poll_delay(interval, u32::MAX),
            Duration::from_secs(20),
            "no overflow"
        );
    }

    #[test]
    fn a_success_resets_the_backoff_and_the_error() {
        let interval = Duration::from_millis(100);
        let mut health = RepoHealth::default();
        assert_eq!(
            health.record_poll(1_000, Some("gone".into()), interval),
            Duration::from_millis(200)
        );
        assert_eq!(
            health.record_poll(1_200, Some("gone".into()), interval),
            Duration::from_millis(400)
        );
        assert_eq!(health.next_poll_at, Some(1_600));
        assert_eq!(health.consecutive_failures, 2);
        assert_eq!(health.last_success_at, None);
        assert_eq!(health.record_poll(1_600, None, interval), interval);
        assert_eq!(
            health,
            RepoHealth {
                last_poll_at: Some(1_600),
                last_success_at: Some(1_600),
                last_error: None,
                consecutive_failures: 0,
                next_poll_at: Some(1_700),
                tag_warnings: Vec::new(),
                polls: 3,
            }
        );
    }
}
