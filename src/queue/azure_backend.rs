//! Jobs on an Azure Storage queue, so several `accessgate serve` instances share the work.
//!
//! A message is the [`JobMessage`] plus the attempts handled so far. A worker receives it with a
//! visibility timeout of `worker.lease` (its lease); then it is deleted when done, made visible
//! again at the retry time (with the attempt recorded) when a retry is due, or moved to the
//! poison queue when dead. A message delivered more than `queue.max_unhandled_deliveries` times
//! without a recorded attempt (its workers died, or it cannot be read) is poisoned too.
//!
//! There is no cross-instance dedupe at enqueue: a duplicate callout becomes a second message,
//! and its resume finds the request no longer waiting (idempotent in effect).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::azure::{
    AzureQueue, AzureQueueSettings, QueueError, Received, StorageAuth, TokenSource,
};
use super::settings::{AzureStorageSettings, StorageAuthSettings};
use super::{JobMessage, now_ms};
use crate::credentials::{Audience, Credentials};
use crate::secret::Secret;

/// What travels in the queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    #[serde(flatten)]
    pub job: JobMessage,
    /// Attempts handled (each ended in a retry) before this delivery.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A dead letter in the poison queue: the reason and the message as it was.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoisonRecord {
    pub reason: String,
    pub dead_at_ms: i64,
    pub message: String,
}

struct StorageToken(Arc<Credentials>);

impl TokenSource for StorageToken {
    fn token(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Secret, String>> + Send + '_>>
    {
        Box::pin(async move {
            self.0
                .token(Audience::Storage)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The queue client for a configuration.
pub fn connect(
    http: reqwest::Client,
    cfg: &AzureStorageSettings,
    creds: Arc<Credentials>,
) -> AzureQueue {
    let auth = match &cfg.auth {
        StorageAuthSettings::SharedKey { account, key } => StorageAuth::SharedKey {
            account: account.clone(),
            key: key.clone(),
        },
        StorageAuthSettings::Entra => StorageAuth::Bearer(Arc::new(StorageToken(creds))),
    };
    AzureQueue::new(
        http,
        AzureQueueSettings {
            queue_url_base: cfg.endpoint.clone(),
            queue: cfg.name.clone(),
            poison_queue: cfg.poison_name.clone(),
        },
        auth,
    )
}

/// A received job, or a message that must be poisoned.
pub enum Delivery {
    Job {
        received: Received,
        envelope: Box<Envelope>,
    },
    Poison {
        received: Received,
        reason: String,
    },
}

#[derive(Clone)]
pub struct AzureJobs {
    pub queue: AzureQueue,
    max_unhandled: u32,
}

impl AzureJobs {
    pub fn new(queue: AzureQueue, cfg: &AzureStorageSettings) -> Self {
        AzureJobs {
            queue,
            max_unhandled: cfg.max_unhandled_deliveries,
        }
    }

    pub async fn enqueue(&self, job: &JobMessage) -> Result<(), QueueError> {
        let text = serde_json::to_string(&Envelope {
            job: job.clone(),
            attempts: 0,
            last_error: None,
        })
        .map_err(|e| QueueError::Malformed(e.to_string()))?;
        self.queue.send(&text, None).await
    }

    /// Up to `max` deliveries, each leased for `lease`.
    pub async fn receive(&self, max: u8, lease: Duration) -> Result<Vec<Delivery>, QueueError> {
        let got = self.queue.receive(max.clamp(1, 32), lease).await?;
        Ok(got
            .into_iter()
            .map(|received| match serde_json::from_str::<Envelope>(&received.text) {
                Err(e) => Delivery::Poison {
                    reason: format!("unreadable job message: {e}"),
                    received,
                },
                Ok(envelope) => {
                    let unhandled = received.dequeue_count.saturating_sub(envelope.attempts);
                    if unhandled > self.max_unhandled {
                        Delivery::Poison {
                            reason: format!(
                                "delivered {unhandled} times without a recorded attempt (its workers stopped or failed while running it)"
                            ),
                            received,
                        }
                    } else {
                        Delivery::Job {
                            received,
                            envelope: Box::new(envelope),
                        }
                    }
                }
            })
            .collect())
    }

    pub async fn complete(&self, r: &Received) -> Result<(), QueueError> {
        self.queue.delete(r).await
    }

    /// Makes the message visible again at `at_ms`, with the attempt recorded.
    pub async fn retry_at(
        &self,
        r: &Received,
        envelope: &Envelope,
        at_ms: i64,
        reason: String,
    ) -> Result<(), QueueError> {
        let next = Envelope {
            job: envelope.job.clone(),
            attempts: envelope.attempts.saturating_add(1).max(r.dequeue_count),
            last_error: Some(reason),
        };
        let text =
            serde_json::to_string(&next).map_err(|e| QueueError::Malformed(e.to_string()))?;
        let wait = Duration::from_millis(u64::try_from(at_ms - now_ms()).unwrap_or(0));
        self.queue.update(r, wait, Some(&text)).await.map(|_| ())
    }

    /// Moves the message to the poison queue with the reason, then deletes it.
    pub async fn dead(&self, r: &Received, reason: String) -> Result<(), QueueError> {
        let record = PoisonRecord {
            reason,
            dead_at_ms: now_ms(),
            message: r.text.clone(),
        };
        let text =
            serde_json::to_string(&record).map_err(|e| QueueError::Malformed(e.to_string()))?;
        self.queue.send_poison(&text).await?;
        self.queue.delete(r).await
    }

    /// `{"queued": n, "dead": m}` (approximate, as Azure counts).
    pub async fn counts(&self) -> Result<Vec<(String, i64)>, QueueError> {
        let q = self.queue.approximate_count(false).await?;
        let d = self.queue.approximate_count(true).await?;
        Ok(vec![
            ("queued".into(), i64::try_from(q).unwrap_or(i64::MAX)),
            ("dead".into(), i64::try_from(d).unwrap_or(i64::MAX)),
        ])
    }
}
