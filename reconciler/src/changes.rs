//! The change feed: every run and stage transition the scheduler commits, numbered, kept in a
//! bounded ring of recent changes and broadcast to whoever follows (the status page's
//! `GET /api/v1/events`). A follower that reconnects names the last change it saw and gets
//! what it missed from the ring; one that is too far behind is told to start over (`Resume::Reset`).
//!
//! The source is the scheduler's own event broadcast ([`SchedulerEvent`]): the feed only
//! numbers and remembers, so it never reads the store.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use deploylite_model::{Attempt, RunId};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::scheduler::SchedulerEvent;
use crate::store::now_ms;

/// How many recent changes a reconnecting follower can catch up on.
pub const RING: usize = 4096;

/// What a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Subject {
    Run,
    Stage,
    Deployment,
}

/// One transition, as followers receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `<feed epoch>-<sequence>`: unique across daemon restarts, increasing within one.
    pub id: String,
    #[serde(skip)]
    pub seq: u64,
    pub subject: Subject,
    pub run_id: RunId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<Attempt>,
    /// The deployment of a `deployment` change (its `run_id` is 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<i64>,
    /// `repo/environment` of a `deployment` change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The new status (`running`, `success`, …; for a stage, its attempt's outcome; for a
    /// deployment, its status).
    pub status: String,
    /// When the feed saw it (Unix ms).
    pub at: i64,
}

/// Where a follower starts.
pub enum Resume {
    /// The changes after the one it named (possibly none), then the live ones.
    From(Vec<Change>, broadcast::Receiver<Change>),
    /// Its last change is no longer in the ring, or is from another daemon: reload everything.
    Reset(broadcast::Receiver<Change>),
}

struct Ring {
    next_seq: u64,
    recent: VecDeque<Change>,
}

pub struct ChangeFeed {
    epoch: i64,
    ring: Mutex<Ring>,
    live: broadcast::Sender<Change>,
    capacity: usize,
    /// Cancelled when the daemon stops: followers end their streams.
    closed: deploylite_runner::CancellationToken,
}

impl ChangeFeed {
    pub fn new() -> Arc<ChangeFeed> {
        ChangeFeed::with_capacity(RING)
    }

    pub fn with_capacity(capacity: usize) -> Arc<ChangeFeed> {
        let (live, _) = broadcast::channel(capacity.max(16));
        Arc::new(ChangeFeed {
            epoch: now_ms(),
            ring: Mutex::new(Ring {
                next_seq: 1,
                recent: VecDeque::with_capacity(capacity),
            }),
            live,
            capacity: capacity.max(1),
            closed: deploylite_runner::CancellationToken::new(),
        })
    }

    /// Ends every follower's stream. The daemon calls it when it stops: the HTTP server's
    /// graceful shutdown waits for every response to end, and an event stream (a status page
    /// left open) would otherwise never end and hold the daemon up.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Completes once [`ChangeFeed::close`] was called.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    /// Numbers a change, remembers it and sends it to every follower.
    pub fn publish(
        &self,
        subject: Subject,
        run_id: RunId,
        stage: Option<&str>,
        attempt: Option<Attempt>,
        status: &str,
    ) {
        self.push(Change {
            id: String::new(),
            seq: 0,
            subject,
            run_id,
            stage: stage.map(str::to_string),
            attempt,
            deployment_id: None,
            environment: None,
            status: status.to_string(),
            at: 0,
        });
    }

    /// Numbers and sends a deployment's new status.
    pub fn publish_deployment(&self, event: &crate::environments::DeploymentEvent) {
        self.push(Change {
            id: String::new(),
            seq: 0,
            subject: Subject::Deployment,
            run_id: RunId::new(0),
            stage: None,
            attempt: None,
            deployment_id: Some(event.id),
            environment: Some(format!("{}/{}", event.repo, event.environment)),
            status: event.status.as_str().to_string(),
            at: 0,
        });
    }

    fn push(&self, mut change: Change) {
        let mut ring = self.lock();
        let seq = ring.next_seq;
        ring.next_seq += 1;
        change.id = format!("{}-{seq}", self.epoch);
        change.seq = seq;
        change.at = now_ms();
        if ring.recent.len() == self.capacity {
            ring.recent.pop_front();
        }
        ring.recent.push_back(change.clone());
        // Sent under the lock, so a follower subscribing in `resume` never misses nor repeats one.
        let _ = self.live.send(change);
    }

    /// Follows the feed after `last_id` (a `Last-Event-ID`), or from now when None.
    pub fn resume(&self, last_id: Option<&str>) -> Resume {
        let ring = self.lock();
        let receiver = self.live.subscribe();
        let Some(last_id) = last_id else {
            return Resume::From(Vec::new(), receiver);
        };
        let Some(seq) = self.parse_id(last_id) else {
            return Resume::Reset(receiver);
        };
        let oldest_kept = ring.recent.front().map_or(ring.next_seq, |c| c.seq);
        // `seq` itself may have left the ring: what matters is that everything after it is still there.
        if seq >= ring.next_seq || seq + 1 < oldest_kept {
            return Resume::Reset(receiver);
        }
        let missed = ring
            .recent
            .iter()
            .filter(|c| c.seq > seq)
            .cloned()
            .collect();
        Resume::From(missed, receiver)
    }

    /// The sequence number of one of this feed's ids.
    fn parse_id(&self, id: &str) -> Option<u64> {
        let (epoch, seq) = id.trim().split_once('-')?;
        (epoch.parse::<i64>().ok()? == self.epoch)
            .then(|| seq.parse().ok())
            .flatten()
    }

    /// Turns the scheduler's events into changes until that broadcast closes. A gap (this task
    /// fell behind the scheduler) is published as a `reset` of run 0: followers reload.
    pub async fn follow(self: Arc<Self>, mut events: broadcast::Receiver<SchedulerEvent>) {
        loop {
            match events.recv().await {
                Ok(event) => self.publish_event(&event),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "the change feed fell behind the scheduler");
                    self.publish(Subject::Run, RunId::new(0), None, None, "reset");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Publishes the environment controller's deployment moves until that broadcast closes.
    pub async fn follow_deployments(
        self: Arc<Self>,
        mut events: broadcast::Receiver<crate::environments::DeploymentEvent>,
    ) {
        loop {
            match events.recv().await {
                Ok(event) => self.publish_deployment(&event),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "the change feed fell behind the deployments");
                    self.publish(Subject::Run, RunId::new(0), None, None, "reset");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn publish_event(&self, event: &SchedulerEvent) {
        match event {
            SchedulerEvent::RunStarted { run_id } => {
                self.publish(Subject::Run, *run_id, None, None, "running")
            }
            SchedulerEvent::RunFinished { run_id, status } => {
                self.publish(Subject::Run, *run_id, None, None, status.as_str())
            }
            SchedulerEvent::StageStarted {
                run_id,
                stage,
                attempt,
            } => self.publish(
                Subject::Stage,
                *run_id,
                Some(stage),
                Some(*attempt),
                "running",
            ),
            SchedulerEvent::StageFinished {
                run_id,
                stage,
                attempt,
                status,
            } => self.publish(
                Subject::Stage,
                *run_id,
                Some(stage),
                Some(*attempt),
                status.as_str(),
            ),
            SchedulerEvent::StageSkipped {
                run_id,
                stage,
                status,
            } => self.publish(Subject::Stage, *run_id, Some(stage), None, status.as_str()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // The ring holds plain data: a panic elsewhere cannot leave it half-written.
        self.ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(changes: &[Change]) -> Vec<u64> {
        changes.iter().map(|c| c.seq).collect()
    }

    #[test]
    fn a_follower_resumes_after_the_change_it_named() {
        let feed = ChangeFeed::with_capacity(8);
        for run in 1..=5 {
            feed.publish(Subject::Run, RunId::new(run), None, None, "running");
        }
        let third = format!("{}-3", feed.epoch);
        let Resume::From(missed, _) = feed.resume(Some(&third)) else {
            panic!("expected a resume");
        };
        assert_eq!(ids(&missed), vec![4, 5]);
        let latest = format!("{}-5", feed.epoch);
        let Resume::From(missed, _) = feed.resume(Some(&latest)) else {
            panic!("expected a resume");
        };
        assert!(missed.is_empty());
    }

    #[test]
    fn too_old_future_or_foreign_ids_reset() {
        let feed = ChangeFeed::with_capacity(4);
        for run in 1..=10 {
            feed.publish(Subject::Run, RunId::new(run), None, None, "running");
        }
        // The ring keeps 7..=10: resuming after 6 is still complete, after 5 is not.
        assert!(matches!(
            feed.resume(Some(&format!("{}-6", feed.epoch))),
            Resume::From(ref m, _) if ids(m) == vec![7, 8, 9, 10]
        ));
        for stale in [
            format!("{}-5", feed.epoch),
            format!("{}-11", feed.epoch),
            format!("{}-3", feed.epoch + 1),
            "garbage".to_string(),
        ] {
            assert!(
                matches!(feed.resume(Some(&stale)), Resume::Reset(_)),
                "{stale}"
            );
        }
    }

    #[tokio::test]
    async fn live_changes_follow_the_backlog_without_gaps() {
        let feed = ChangeFeed::with_capacity(8);
        feed.publish(Subject::Run, RunId::new(1), None, None, "running");
        let first = format!("{}-1", feed.epoch);
        let Resume::From(missed, mut live) = feed.resume(Some(&first)) else {
            panic!("expected a resume");
        };
        assert!(missed.is_empty());
        feed.publish(
            Subject::Stage,
            RunId::new(1),
            Some("build"),
            Some(Attempt::FIRST),
            "running",
        );
        let next = live.recv().await.expect("a live change");
        assert_eq!(next.seq, 2);
        assert_eq!(next.stage.as_deref(), Some("build"));
        assert_eq!(next.attempt, Some(Attempt::FIRST));
    }
}
