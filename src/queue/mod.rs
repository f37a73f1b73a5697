//! Durable work: the [`JobMessage`] that carries one acknowledged callout from intake to worker.
//!
//! Standalone, jobs live in SQLite ([`sqlite`]); under Azure Functions the same message is a
//! Storage Queue message written by the host's output binding. Either way the message carries its
//! own correlation (request id, stage, stage instance id), so any instance can run it.

pub mod azure;
pub mod azure_backend;
pub mod job;
pub mod settings;
pub mod shared_key;
pub mod sqlite;
pub mod store;
pub mod table;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::callout::Callout;
pub use job::{Deadline, Outcome, Step, Wait, WaitKey, WokenBy, now_ms};
pub use store::{JobStore, Lease, Settle, Stored, WaitingJob};

pub use settings::Settings;

/// Version of the message format, so an old message in a queue is recognised after an upgrade.
pub const MESSAGE_VERSION: u32 = 1;

/// The longest callback timeout entitlement management allows.
pub const MAX_CALLBACK_TIMEOUT: Duration = job::MAX_WAIT;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobMessage {
    pub v: u32,
    pub correlation_id: String,
    pub received_at_ms: i64,
    /// Past this instant a resume is pointless (Entra has timed the callout out).
    #[serde(rename = "deadlineAtMs")]
    pub deadline: Deadline,
    /// The extension (`[extensions.NAME]`) a PoP callout came through; selects its policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<String>,
    pub callout: Callout,
}

impl JobMessage {
    /// Builds the job for a freshly accepted callout. The deadline is the callout's callback
    /// timeout (or the configured default) minus a safety margin.
    pub fn new(
        callout: Callout,
        correlation_id: String,
        extension: Option<String>,
        default_timeout: Duration,
        margin: Duration,
    ) -> Self {
        let now = now_ms();
        // ELM waits at most 14 days (protocol.md §2); a larger value is not Entra's.
        let timeout = callout
            .callback_timeout()
            .unwrap_or(default_timeout)
            .min(MAX_CALLBACK_TIMEOUT);
        // A margin larger than half the timeout would leave too little time to work; cap it there.
        let usable = timeout.saturating_sub(margin).max(timeout / 2);
        JobMessage {
            v: MESSAGE_VERSION,
            correlation_id,
            received_at_ms: now,
            deadline: Deadline::from_unix_ms(now).later_by(usable),
            extension,
            callout,
        }
    }

    /// Parses a queue message leniently: the Functions host may hand it over JSON-quoted once more.
    pub fn from_queue_text(text: &str) -> Result<JobMessage, serde_json::Error> {
        let mut s = text.trim().to_owned();
        // Unwrap up to two layers of JSON string quoting (functions.md §2).
        for _ in 0..2 {
            if s.starts_with('"') {
                s = serde_json::from_str::<String>(&s)?;
            }
        }
        serde_json::from_str(&s)
    }
}

/// Result of putting a callout on the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueOutcome {
    Enqueued,
    /// The same `customExtensionStageInstanceId` is already queued or done.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("stored job is unreadable: {0}")]
    Corrupt(String),
    #[error("the data directory {0} is used by another accessgate process")]
    Locked(String),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("store task failed")]
    Join,
    /// One failed group commit fails every enqueue in it, so the cause is shared.
    #[error("committing a batch of enqueues failed: {0}")]
    Commit(Arc<rusqlite::Error>),
    #[error("this host has no local queue")]
    NoLocalQueue,
    #[error(transparent)]
    Azure(#[from] azure::QueueError),
    #[error("Azure Table (wait index): {0}")]
    Table(#[from] table::TableError),
    /// A lease handed to a backend that did not issue it (a bug, never a user error).
    #[error("this lease belongs to another job backend")]
    ForeignLease,
    #[error(
        "parking a job needs the Azure Storage queue settings (queue.backend = \"azure_storage\") on this host"
    )]
    WaitNeedsStorage,
    #[error("job message cannot be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

impl StoreError {
    /// How long the backend asked us to back off, if it throttled.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            StoreError::Azure(azure::QueueError::Throttled { retry_after }) => {
                Some(retry_after.unwrap_or(Duration::from_secs(1)))
            }
            _ => None,
        }
    }
}
