//! The verbs every job backend offers, so one runner drives them all.
//!
//! [`Settle`] stores what an attempt came to (complete, retry at a time, dead-letter, wait); the
//! SQLite queue, the Azure Storage queue and the Functions host's queue trigger implement it.
//! [`JobStore`] adds what a backend that holds its own jobs can do: enqueue with dedupe, claim
//! under a lease, wake parked jobs, list the parked ones and count.

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use super::job::{Deadline, Outcome, Wait, WaitKey, WokenBy};
use super::{EnqueueOutcome, JobMessage, StoreError};

/// A job a worker holds: nobody else runs it until the lease is settled or runs out.
#[derive(Debug, Clone)]
pub struct Lease {
    pub job: JobMessage,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// Why the previous attempt did not finish, if one did not.
    pub last_error: Option<String>,
    /// Set when a parked job runs again.
    pub woken_by: Option<WokenBy>,
    pub(crate) token: LeaseToken,
}

/// The backend's own handle on a lease.
#[derive(Debug, Clone)]
pub(crate) enum LeaseToken {
    Sqlite {
        id: i64,
        lease: String,
    },
    Storage {
        received: super::azure::Received,
        envelope: Box<super::azure_backend::Envelope>,
        /// When this attempt started: a wake after it counts for a wait it sets.
        claimed_at: Deadline,
    },
    /// A message the Functions host delivered (the host deletes or redelivers it).
    Host,
}

/// Whether an outcome was stored under the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Yes,
    /// Another worker owns the job now (the lease ran out); nothing was changed.
    LeaseLost,
}

/// A parked job as `accessgate jobs` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaitingJob {
    pub stage_instance_id: String,
    pub request_id: String,
    pub stage: String,
    pub correlation_id: String,
    pub until: Deadline,
    pub key: Option<WaitKey>,
    pub reason: String,
    pub deadline: Deadline,
}

#[async_trait]
pub trait Settle: Send + Sync {
    /// The job is finished.
    async fn complete(&self, lease: &Lease, outcome: &Outcome) -> Result<Stored, StoreError>;
    /// Run it again at `at`, recording why this attempt failed.
    async fn retry_at(
        &self,
        lease: &Lease,
        at: Deadline,
        reason: &str,
    ) -> Result<Stored, StoreError>;
    /// Move it to the dead letters with the reason.
    async fn dead(&self, lease: &Lease, reason: &str) -> Result<Stored, StoreError>;
    /// Park it until `wait.until` or until its key is woken, whichever comes first; survives
    /// restarts.
    async fn wait(&self, lease: &Lease, wait: &Wait) -> Result<Stored, StoreError>;
}

#[async_trait]
pub trait JobStore: Settle {
    /// One durable enqueue: the `202` is sent only after this returns.
    async fn enqueue(&self, job: &JobMessage) -> Result<EnqueueOutcome, StoreError>;
    /// The next runnable job under a lease of `lease`, if any.
    async fn claim(&self, lease: Duration) -> Result<Option<Lease>, StoreError>;
    /// Makes the jobs parked on `key` runnable now; returns how many were woken.
    async fn wake(&self, key: &WaitKey) -> Result<usize, StoreError>;
    /// Parked jobs, soonest wake-up first.
    async fn waiting(&self, limit: usize) -> Result<Vec<WaitingJob>, StoreError>;
    /// Jobs per status (approximate where the backend counts so).
    async fn counts(&self) -> Result<Vec<(String, i64)>, StoreError>;
    /// Whether the store can take work now: for `/readyz`. The default reads the counts (the
    /// store answers); a backend whose reads can succeed while its commits fail probes a write.
    async fn ready(&self) -> Result<(), StoreError> {
        self.counts().await.map(|_| ())
    }
    /// `sqlite` or `azure_storage`, for logs.
    fn backend(&self) -> &'static str;
    /// Notified (one permit per new job) when this process adds runnable work, so that an idle
    /// worker starts it at once instead of at its next poll; `None` when the backend does not
    /// signal. The poll stays the fallback for work from elsewhere (timers, other processes).
    fn work_signal(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
    /// Whether each poll is a billed transaction (the pool then polls an empty store less
    /// often).
    fn billed_polls(&self) -> bool {
        false
    }
}
