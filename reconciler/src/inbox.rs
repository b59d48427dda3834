//! Forge deliveries in: one bounded queue per repository, applied in arrival order by one task
//! per repository. A close and a reopen sent back to back are applied in that order, and a
//! burst of deliveries holds a bounded amount of memory instead of a task each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::events::ForgeEvent;
use crate::watcher::Watcher;

/// Deliveries waiting per repository; one more is refused (the forge retries it later).
pub const QUEUE_CAPACITY: usize = 256;

/// A delivery accepted by the webhook receiver, to be applied after its answer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event: ForgeEvent,
    /// `github` or `gitlab`, as the delivery was recorded under.
    pub forge: &'static str,
    /// The delivery id it was de-duplicated by: forgotten if applying fails, so that the forge's
    /// redelivery is applied rather than dropped as a replay.
    pub id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    #[error("{0} deliveries are already waiting for this repository")]
    Full(usize),
    #[error("the watcher is stopping")]
    Stopped,
}

/// The per-repository queues.
#[derive(Default)]
pub struct Inbox {
    queues: Mutex<HashMap<String, mpsc::Sender<Delivery>>>,
}

impl Watcher {
    /// Queues `delivery` behind the ones already waiting for its repository.
    pub fn enqueue(self: &Arc<Self>, delivery: Delivery) -> Result<(), EnqueueError> {
        let repo = delivery.event.repo().to_string();
        let mut queues = self.inbox.queues.lock().unwrap_or_else(|e| e.into_inner());
        let sender = queues.entry(repo).or_insert_with(|| {
            let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
            tokio::spawn(apply_in_order(Arc::downgrade(self), receiver));
            sender
        });
        sender.try_send(delivery).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => EnqueueError::Full(QUEUE_CAPACITY),
            mpsc::error::TrySendError::Closed(_) => EnqueueError::Stopped,
        })
    }
}

/// One repository's queue. A weak handle: the queue must not keep a stopped watcher alive.
async fn apply_in_order(watcher: Weak<Watcher>, mut deliveries: mpsc::Receiver<Delivery>) {
    while let Some(Delivery { event, forge, id }) = deliveries.recv().await {
        let Some(watcher) = watcher.upgrade() else {
            return;
        };
        let span = tracing::info_span!(
            "webhook_apply",
            forge,
            delivery = id.as_deref().unwrap_or("")
        );
        apply_one(&watcher, event, forge, id).instrument(span).await;
    }
}

async fn apply_one(watcher: &Watcher, event: ForgeEvent, forge: &'static str, id: Option<String>) {
    match watcher.apply(event.clone()).await {
        Ok(applied) => {
            tracing::debug!(forge, delivery = ?id, ?event, ?applied, "webhook applied")
        }
        Err(error) => {
            tracing::error!(forge, delivery = ?id, ?event, %error, "applying a webhook failed; a redelivery will be applied");
            if let Some(id) = &id {
                if let Err(error) = watcher.store().forget_delivery(forge, id).await {
                    tracing::error!(forge, delivery = %id, %error, "cannot forget a failed delivery");
                }
            }
        }
    }
}
