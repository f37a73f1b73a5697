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
//!
//! Parked jobs (waiting for an event or a time, up to 14 days) stay in the queue, invisible
//! until their wake-up time or at most `recheck` (a message can hide for 7 days at most), and
//! are indexed in an Azure Table (`job` rows: which message waits for which key; `event` rows:
//! when a key was woken). A wake writes the event and makes the parked messages visible at once;
//! a parked message that becomes visible checks the event row and its time, and either runs or
//! hides again. A wake that is missed (its update raced a receive) is still seen at the next
//! recheck.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use async_trait::async_trait;
use serde_json::{Map, Value};
use sha2::Digest as _;

use super::azure::{
    AzureQueue, AzureQueueSettings, MAX_VISIBILITY, QueueError, Received, StorageAuth, TokenSource,
};
use super::settings::{AzureStorageSettings, StorageAuthSettings};
use super::store::LeaseToken;
use super::table::Table;
use super::{
    Deadline, EnqueueOutcome, JobMessage, JobStore, Lease, Outcome, Settle, StoreError, Stored,
    Wait, WaitKey, WaitingJob, WokenBy, now_ms,
};
use crate::credentials::{Audience, CredentialError, Credentials};
use crate::secret::Secret;

/// What travels in the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    #[serde(flatten)]
    pub job: JobMessage,
    /// Attempts handled (each ended in a retry) before this delivery.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Set while the job is parked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked: Option<Parked>,
}

/// A parked job's wait, and when the attempt that parked it started: a wake after that counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Parked {
    pub wait: Wait,
    pub since: Deadline,
}

impl Envelope {
    /// Parses a queue message leniently, as [`JobMessage::from_queue_text`] does; a plain job
    /// is an envelope with no attempts.
    pub fn from_queue_text(text: &str) -> Result<Envelope, serde_json::Error> {
        let mut s = text.trim().to_owned();
        for _ in 0..2 {
            if s.starts_with('"') {
                s = serde_json::from_str::<String>(&s)?;
            }
        }
        serde_json::from_str(&s)
    }

    pub fn fresh(job: JobMessage) -> Envelope {
        Envelope {
            job,
            attempts: 0,
            last_error: None,
            parked: None,
        }
    }
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
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Secret, CredentialError>> + Send + '_>,
    > {
        Box::pin(async move { self.0.token(Audience::Storage).await })
    }
}

fn storage_auth(cfg: &AzureStorageSettings, creds: Arc<Credentials>) -> StorageAuth {
    match &cfg.auth {
        StorageAuthSettings::SharedKey { account, key } => StorageAuth::SharedKey {
            account: account.clone(),
            key: key.clone(),
        },
        StorageAuthSettings::Entra => StorageAuth::Bearer(Arc::new(StorageToken(creds))),
    }
}

/// The queue client for a configuration.
pub fn connect(
    http: reqwest::Client,
    cfg: &AzureStorageSettings,
    creds: Arc<Credentials>,
) -> AzureQueue {
    AzureQueue::new(
        http,
        AzureQueueSettings {
            queue_url_base: cfg.endpoint.clone(),
            queue: cfg.name.clone(),
            poison_queue: cfg.poison_name.clone(),
        },
        storage_auth(cfg, creds),
    )
}

/// The wait-index table client for a configuration.
pub fn connect_waits(
    http: reqwest::Client,
    cfg: &AzureStorageSettings,
    creds: Arc<Credentials>,
) -> Table {
    Table::new(
        http,
        cfg.table_endpoint.clone(),
        cfg.wait_table.clone(),
        storage_auth(cfg, creds),
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

const JOB_ROWS: &str = "job";
const EVENT_ROWS: &str = "event";

/// A table row key for a stage instance id (which may hold characters a row key cannot).
fn job_row_key(stage_instance_id: &str) -> String {
    let h = sha2::Sha256::digest(stage_instance_id.as_bytes());
    h.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn str_prop<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    m.get(k).and_then(Value::as_str)
}

fn int_prop(m: &Map<String, Value>, k: &str) -> Option<i64> {
    // Int64 properties travel as strings with odata type annotations; accept both.
    match m.get(k)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[derive(Clone)]
pub struct AzureJobs {
    pub queue: AzureQueue,
    pub waits: Table,
    max_unhandled: u32,
    /// A parked message hides at most this long before it checks for a missed wake.
    recheck: Duration,
    /// Told of every message this process enqueues, for its idle workers (other processes
    /// find it by polling).
    signal: std::sync::Arc<tokio::sync::Notify>,
}

impl AzureJobs {
    pub fn new(queue: AzureQueue, waits: Table, cfg: &AzureStorageSettings) -> Self {
        Self::from_parts(queue, waits, cfg.max_unhandled_deliveries, cfg.wait_recheck)
    }

    pub fn from_parts(
        queue: AzureQueue,
        waits: Table,
        max_unhandled: u32,
        recheck: Duration,
    ) -> Self {
        AzureJobs {
            queue,
            waits,
            max_unhandled,
            recheck: recheck.min(MAX_VISIBILITY),
            signal: std::sync::Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Creates the queues and the wait table; existing ones are fine.
    pub async fn ensure(&self) -> Result<(), StoreError> {
        self.queue.ensure_queues().await?;
        self.waits.ensure().await?;
        Ok(())
    }

    async fn put(&self, job: &JobMessage) -> Result<(), QueueError> {
        let text = serde_json::to_string(&Envelope::fresh(job.clone()))
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
                    // A parked message is delivered once per recheck without an attempt.
                    if unhandled > self.max_unhandled && envelope.parked.is_none() {
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

    /// Moves a message to the poison queue with the reason, then deletes it.
    async fn poison(&self, r: &Received, reason: &str) -> Result<(), QueueError> {
        let record = PoisonRecord {
            reason: reason.to_owned(),
            dead_at_ms: now_ms(),
            message: r.text.clone(),
        };
        let text =
            serde_json::to_string(&record).map_err(|e| QueueError::Malformed(e.to_string()))?;
        self.queue.send_poison(&text).await?;
        self.queue.delete(r).await
    }

    /// Whether a parked job should run now, and why.
    async fn woken(&self, p: &Parked) -> Result<Option<WokenBy>, StoreError> {
        if p.wait.until.has_passed() {
            return Ok(Some(WokenBy::Timer));
        }
        let Some(key) = &p.wait.key else {
            return Ok(None);
        };
        let event = self.waits.get(EVENT_ROWS, key.as_str()).await?;
        let at = event.as_ref().and_then(|e| int_prop(e, "WokenAt"));
        Ok(at
            .filter(|t| *t >= p.since.unix_ms())
            .map(|_| WokenBy::Event))
    }

    /// [`AzureJobs::woken`] for the Functions queue trigger.
    pub async fn woken_check(&self, p: &Parked) -> Result<Option<WokenBy>, StoreError> {
        self.woken(p).await
    }

    /// How long a parked message hides before it looks again.
    fn hide_for(&self, p: &Parked) -> Duration {
        p.wait.until.remaining().min(self.recheck)
    }

    async fn index(&self, env: &Envelope, msg: &Received) -> Result<(), StoreError> {
        let Some(p) = &env.parked else {
            return Ok(());
        };
        let c = &env.job.callout;
        let mut row = Map::new();
        row.insert(
            "StageInstanceId".into(),
            c.stage_instance_id.to_string().into(),
        );
        row.insert("RequestId".into(), c.request_id.to_string().into());
        row.insert("Stage".into(), c.stage.to_string().into());
        row.insert(
            "CorrelationId".into(),
            env.job.correlation_id.clone().into(),
        );
        row.insert("MessageId".into(), msg.message_id.clone().into());
        row.insert("PopReceipt".into(), msg.pop_receipt.clone().into());
        row.insert("Until".into(), p.wait.until.unix_ms().to_string().into());
        row.insert(
            "Deadline".into(),
            env.job.deadline.unix_ms().to_string().into(),
        );
        row.insert("Reason".into(), p.wait.reason.clone().into());
        if let Some(k) = &p.wait.key {
            row.insert("WaitKey".into(), k.as_str().into());
        }
        self.waits
            .upsert(JOB_ROWS, &job_row_key(c.stage_instance_id.as_str()), row)
            .await?;
        Ok(())
    }

    /// Removes a job's wait-index row, if it had one. Best effort: a stale row only makes a
    /// later wake try to show a message that is gone.
    async fn unindex(&self, env: &Envelope) {
        if env.parked.is_none() {
            return;
        }
        let sid = env.job.callout.stage_instance_id.to_string();
        if let Err(e) = self.waits.delete(JOB_ROWS, &job_row_key(&sid)).await {
            tracing::warn!(error = %e, "could not remove the wait-index row of a finished job");
        }
    }

    /// Parks `job` as a new message (the Functions host's queue trigger deletes the one it
    /// delivered): hidden until its wake-up time or the recheck, and indexed.
    pub async fn park_new(
        &self,
        job: &JobMessage,
        wait: &Wait,
        since: Deadline,
    ) -> Result<(), StoreError> {
        let env = Envelope {
            job: job.clone(),
            attempts: 0,
            last_error: None,
            parked: Some(Parked {
                wait: wait.clone(),
                since,
            }),
        };
        let text = serde_json::to_string(&env)?;
        let hide = match env.parked.as_ref() {
            Some(p) if self.woken(p).await? == Some(WokenBy::Event) => Duration::ZERO,
            Some(p) => self.hide_for(p),
            None => Duration::ZERO,
        };
        let msg = self.queue.send_returning(&text, Some(hide)).await?;
        self.index(&env, &msg).await
    }

    fn storage_lease(lease: &Lease) -> Result<(&Received, &Envelope), StoreError> {
        match &lease.token {
            LeaseToken::Storage {
                received, envelope, ..
            } => Ok((received, envelope)),
            _ => Err(StoreError::ForeignLease),
        }
    }
}

/// A stale pop receipt means the lease ran out and another worker has the message.
fn stored(r: Result<(), QueueError>) -> Result<Stored, StoreError> {
    match r {
        Ok(()) => Ok(Stored::Yes),
        Err(QueueError::NotFound(_)) => Ok(Stored::LeaseLost),
        Err(e) => Err(e.into()),
    }
}

#[async_trait]
impl Settle for AzureJobs {
    async fn complete(&self, lease: &Lease, _outcome: &Outcome) -> Result<Stored, StoreError> {
        let (r, env) = Self::storage_lease(lease)?;
        let s = stored(self.queue.delete(r).await)?;
        self.unindex(env).await;
        Ok(s)
    }

    async fn retry_at(
        &self,
        lease: &Lease,
        at: Deadline,
        reason: &str,
    ) -> Result<Stored, StoreError> {
        let (r, env) = Self::storage_lease(lease)?;
        let next = Envelope {
            job: env.job.clone(),
            attempts: env.attempts.saturating_add(1).max(r.dequeue_count),
            last_error: Some(reason.to_owned()),
            parked: None,
        };
        let text = serde_json::to_string(&next)?;
        let s = stored(
            self.queue
                .update(r, at.remaining(), Some(&text))
                .await
                .map(|_| ()),
        )?;
        self.unindex(env).await;
        Ok(s)
    }

    async fn dead(&self, lease: &Lease, reason: &str) -> Result<Stored, StoreError> {
        let (r, env) = Self::storage_lease(lease)?;
        let s = stored(self.poison(r, reason).await)?;
        self.unindex(env).await;
        Ok(s)
    }

    async fn wait(&self, lease: &Lease, wait: &Wait) -> Result<Stored, StoreError> {
        let LeaseToken::Storage {
            received,
            envelope,
            claimed_at,
        } = &lease.token
        else {
            return Err(StoreError::ForeignLease);
        };
        let parked = Parked {
            wait: wait.clone(),
            since: *claimed_at,
        };
        // The dequeue count goes on rising while parked; record it so the message is not taken
        // for one whose workers keep dying.
        let next = Envelope {
            job: envelope.job.clone(),
            attempts: received.dequeue_count,
            last_error: None,
            parked: Some(parked.clone()),
        };
        let hide = if self.woken(&parked).await? == Some(WokenBy::Event) {
            Duration::ZERO
        } else {
            self.hide_for(&parked)
        };
        let text = serde_json::to_string(&next)?;
        match self.queue.update(received, hide, Some(&text)).await {
            Ok(moved) => {
                self.index(&next, &moved).await?;
                Ok(Stored::Yes)
            }
            Err(QueueError::NotFound(_)) => Ok(Stored::LeaseLost),
            Err(e) => Err(e.into()),
        }
    }
}

#[async_trait]
impl JobStore for AzureJobs {
    async fn enqueue(&self, job: &JobMessage) -> Result<EnqueueOutcome, StoreError> {
        self.put(job).await?;
        self.signal.notify_one();
        Ok(EnqueueOutcome::Enqueued)
    }

    fn work_signal(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        Some(self.signal.clone())
    }

    async fn claim(&self, lease: Duration) -> Result<Option<Lease>, StoreError> {
        for d in self.receive(1, lease).await? {
            let (received, envelope) = match d {
                Delivery::Poison { received, reason } => {
                    tracing::error!(message_id = %received.message_id, reason = %reason, "job message moved to the poison queue");
                    if let Err(e) = self.poison(&received, &reason).await {
                        tracing::error!(error = %e, "cannot move the message to the poison queue; it will be delivered again");
                    }
                    continue;
                }
                Delivery::Job { received, envelope } => (received, envelope),
            };
            let mut woken_by = None;
            if let Some(p) = &envelope.parked {
                match self.woken(p).await? {
                    Some(w) => woken_by = Some(w),
                    None => {
                        // Not yet: hide again and keep the index pointing at the message.
                        let moved = self.queue.update(&received, self.hide_for(p), None).await?;
                        self.index(&envelope, &moved).await?;
                        continue;
                    }
                }
            }
            let attempt = envelope.attempts.saturating_add(1);
            let last_error = envelope.last_error.clone();
            return Ok(Some(Lease {
                job: envelope.job.clone(),
                attempt: if envelope.parked.is_some() {
                    1
                } else {
                    attempt
                },
                last_error,
                woken_by,
                token: LeaseToken::Storage {
                    received,
                    envelope,
                    claimed_at: Deadline::from_unix_ms(now_ms()),
                },
            }));
        }
        Ok(None)
    }

    async fn wake(&self, key: &WaitKey) -> Result<usize, StoreError> {
        let mut event = Map::new();
        event.insert("WokenAt".into(), now_ms().to_string().into());
        self.waits.upsert(EVENT_ROWS, key.as_str(), event).await?;
        let rows = self
            .waits
            .query(JOB_ROWS, Some(("WaitKey", key.as_str())), 1000)
            .await?;
        let mut woken = 0;
        for row in &rows {
            let (Some(id), Some(receipt)) =
                (str_prop(row, "MessageId"), str_prop(row, "PopReceipt"))
            else {
                continue;
            };
            let msg = Received {
                message_id: id.to_owned(),
                pop_receipt: receipt.to_owned(),
                dequeue_count: 0,
                inserted_ms: None,
                text: String::new(),
            };
            match self.queue.update(&msg, Duration::ZERO, None).await {
                Ok(_) => woken += 1,
                // Received meanwhile (it will see the event), or already gone.
                Err(QueueError::NotFound(_)) => woken += 1,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(woken)
    }

    async fn waiting(&self, limit: usize) -> Result<Vec<WaitingJob>, StoreError> {
        let rows = self.waits.query(JOB_ROWS, None, limit).await?;
        let mut out: Vec<WaitingJob> = rows
            .iter()
            .map(|r| WaitingJob {
                stage_instance_id: str_prop(r, "StageInstanceId")
                    .unwrap_or_default()
                    .to_owned(),
                request_id: str_prop(r, "RequestId").unwrap_or_default().to_owned(),
                stage: str_prop(r, "Stage").unwrap_or_default().to_owned(),
                correlation_id: str_prop(r, "CorrelationId").unwrap_or_default().to_owned(),
                until: Deadline::from_unix_ms(int_prop(r, "Until").unwrap_or(0)),
                key: str_prop(r, "WaitKey").and_then(|k| WaitKey::parse(k).ok()),
                reason: str_prop(r, "Reason").unwrap_or_default().to_owned(),
                deadline: Deadline::from_unix_ms(int_prop(r, "Deadline").unwrap_or(0)),
            })
            .collect();
        out.sort_by_key(|w| w.until);
        Ok(out)
    }

    /// `{"queued": n, "dead": m}` (approximate, as Azure counts; parked jobs are in `queued`).
    async fn counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let q = self.queue.approximate_count(false).await?;
        let d = self.queue.approximate_count(true).await?;
        Ok(vec![
            ("queued".into(), i64::try_from(q).unwrap_or(i64::MAX)),
            ("dead".into(), i64::try_from(d).unwrap_or(i64::MAX)),
        ])
    }

    fn backend(&self) -> &'static str {
        "azure_storage"
    }

    fn billed_polls(&self) -> bool {
        true
    }
}
