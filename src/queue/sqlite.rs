//! The standalone queue: one SQLite table in WAL mode, with `synchronous=FULL` so that a job is on
//! disk before the `202` is sent.
//!
//! Enqueues are group-committed: concurrent callouts that arrive while one commit is on its way to
//! disk share the next transaction (one fsync for the batch), and each `202` still waits for the
//! commit that holds its row.
//!
//! Semantics mirror Azure Storage queues (visibility timeout + dequeue count) so both backends
//! behave alike: a claimed job becomes invisible for a lease; if its worker dies, the lease runs
//! out and another claim picks it up. Dedupe is the UNIQUE constraint on the stage instance id.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{EnqueueOutcome, JobMessage, StoreError, now_ms};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stage_instance_id TEXT NOT NULL UNIQUE,
    request_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    message TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued','running','done','dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    received_at INTEGER NOT NULL,
    deadline_at INTEGER NOT NULL,
    visible_at INTEGER NOT NULL,
    lease TEXT,
    outcome TEXT,
    last_error TEXT,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs(status, visible_at);
";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Done,
    Dead,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Dead => "dead",
        }
    }
    pub fn parse(s: &str) -> Option<JobStatus> {
        [
            JobStatus::Queued,
            JobStatus::Running,
            JobStatus::Done,
            JobStatus::Dead,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// A row as `accessgate jobs` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub id: i64,
    pub stage_instance_id: String,
    pub request_id: String,
    pub stage: String,
    pub status: String,
    pub attempts: i64,
    pub received_at_ms: i64,
    pub deadline_at_ms: i64,
    pub visible_at_ms: i64,
    pub outcome: Option<String>,
    pub last_error: Option<String>,
}

/// A requeued job needs at least this long before its deadline to be worth running.
pub const MIN_RETRY_WINDOW: Duration = Duration::from_secs(10);

/// What `requeue` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requeue {
    Queued,
    NotFound,
    NotDead(String),
    /// The callout's deadline (unix ms) has passed or is too close for another attempt.
    TooLate(i64),
}

/// A job a worker holds under a lease.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub lease: String,
    pub attempts: u32,
    pub message: JobMessage,
    /// Why the previous attempt failed, if one did.
    pub last_error: Option<String>,
}

#[derive(Clone)]
pub struct SqliteQueue {
    conn: Arc<Mutex<Connection>>,
    writer: tokio::sync::mpsc::Sender<Insert>,
}

/// One enqueue waiting for the group commit.
struct Insert {
    sid: String,
    rid: String,
    stage: String,
    text: String,
    received_at: i64,
    deadline_at: i64,
    reply: tokio::sync::oneshot::Sender<Result<EnqueueOutcome, StoreError>>,
}

/// At most this many enqueues share one transaction; beyond it, latency would suffer.
const MAX_BATCH: usize = 256;
/// Enqueues waiting for the writer; a full channel makes intake wait (back-pressure).
const WRITER_QUEUE: usize = 4096;

/// The group-commit writer: takes whatever enqueues are waiting, inserts them in one
/// transaction, commits once, then answers each. Ends when every queue handle is dropped.
fn writer_loop(conn: Arc<Mutex<Connection>>, mut rx: tokio::sync::mpsc::Receiver<Insert>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(i) => batch.push(i),
                Err(_) => break,
            }
        }
        let results = match conn.lock() {
            Ok(mut c) => insert_batch(&mut c, &batch),
            Err(_) => Err("the database lock is poisoned".to_string()),
        };
        match results {
            Ok(outcomes) => {
                for (ins, outcome) in batch.drain(..).zip(outcomes) {
                    let _ = ins.reply.send(outcome);
                }
            }
            Err(e) => {
                for ins in batch.drain(..) {
                    let _ = ins.reply.send(Err(StoreError::Commit(e.clone())));
                }
            }
        }
    }
}

type Outcomes = Vec<Result<EnqueueOutcome, StoreError>>;

fn insert_batch(c: &mut Connection, batch: &[Insert]) -> Result<Outcomes, String> {
    let tx = c
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(batch.len());
    {
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO jobs (stage_instance_id, request_id, stage, message, status, received_at, deadline_at, visible_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?5, ?5)
                 ON CONFLICT(stage_instance_id) DO NOTHING",
            )
            .map_err(|e| e.to_string())?;
        for i in batch {
            // A statement error fails only its own enqueue; the transaction goes on.
            out.push(
                stmt.execute(params![
                    i.sid,
                    i.rid,
                    i.stage,
                    i.text,
                    i.received_at,
                    i.deadline_at
                ])
                .map(|n| {
                    if n == 1 {
                        EnqueueOutcome::Enqueued
                    } else {
                        EnqueueOutcome::Duplicate
                    }
                })
                .map_err(StoreError::from),
            );
        }
    }
    tx.commit().map_err(|e| e.to_string())?;
    Ok(out)
}

/// Held by the serving process so two processes never run one data directory.
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    pub fn acquire(dir: &Path) -> Result<DataDirLock, StoreError> {
        std::fs::create_dir_all(dir)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("accessgate.lock"))?;
        file.try_lock()
            .map_err(|_| StoreError::Locked(dir.display().to_string()))?;
        Ok(DataDirLock { _file: file })
    }
}

impl SqliteQueue {
    pub fn open(dir: &Path) -> Result<SqliteQueue, StoreError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("queue.db");
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a committed enqueue survives power loss, which is the promise behind the 202.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        let conn = Arc::new(Mutex::new(conn));
        let (writer, rx) = tokio::sync::mpsc::channel(WRITER_QUEUE);
        let wconn = conn.clone();
        std::thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || writer_loop(wconn, rx))?;
        Ok(SqliteQueue { conn, writer })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().map_err(|_| StoreError::Join)?;
            f(&mut c)
        })
        .await
        .map_err(|_| StoreError::Join)?
    }

    fn run_sync<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut c = self.conn.lock().map_err(|_| StoreError::Join)?;
        f(&mut c)
    }

    /// Persists the job (returns after the commit that holds it); `Duplicate` when this stage
    /// instance id was seen before.
    pub async fn enqueue(&self, msg: &JobMessage) -> Result<EnqueueOutcome, StoreError> {
        let text = serde_json::to_string(msg).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let insert = Insert {
            sid: msg.callout.stage_instance_id.to_string(),
            rid: msg.callout.request_id.to_string(),
            stage: msg.callout.stage.to_string(),
            text,
            received_at: msg.received_at_ms,
            deadline_at: msg.deadline_at_ms,
            reply,
        };
        self.writer
            .send(insert)
            .await
            .map_err(|_| StoreError::Join)?;
        answer.await.map_err(|_| StoreError::Join)?
    }

    /// Takes the next visible job under a lease. A `running` job whose lease ran out (its worker
    /// died) is visible again.
    pub async fn claim(&self, lease: Duration) -> Result<Option<Claimed>, StoreError> {
        let token = uuid::Uuid::new_v4().to_string();
        self.run(move |c| {
            let now = now_ms();
            let row = c
                .query_row(
                    "UPDATE jobs SET status='running', attempts=attempts+1, lease=?1, visible_at=?2, updated_at=?3
                     WHERE id = (SELECT id FROM jobs WHERE status IN ('queued','running') AND visible_at <= ?3
                                 ORDER BY visible_at, id LIMIT 1)
                     RETURNING id, attempts, message, last_error",
                    params![token, now + lease.as_millis() as i64, now],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?, r.get::<_, Option<String>>(3)?)),
                )
                .optional()?;
            match row {
                None => Ok(None),
                Some((id, attempts, text, last_error)) => {
                    let message = match serde_json::from_str(&text) {
                        Ok(m) => m,
                        Err(e) => {
                            // Retrying cannot make it readable: dead-letter it now, or it would be
                            // claimed again after every lease forever.
                            c.execute(
                                "UPDATE jobs SET status='dead', outcome=?1, last_error=?1, lease=NULL WHERE id=?2",
                                params![format!("stored job is unreadable: {e}"), id],
                            )?;
                            return Err(StoreError::Corrupt(format!("job {id}: {e}")));
                        }
                    };
                    Ok(Some(Claimed { id, lease: token, attempts: attempts as u32, message, last_error }))
                }
            }
        })
        .await
    }

    /// Marks a job done. Returns false if the lease was lost (another worker owns it now).
    pub async fn complete(&self, job: &Claimed, outcome: String) -> Result<bool, StoreError> {
        self.finish(job, "done", Some(outcome), None, None).await
    }

    /// Puts a job back, visible again at `at_ms`.
    pub async fn retry_at(
        &self,
        job: &Claimed,
        at_ms: i64,
        error: String,
    ) -> Result<bool, StoreError> {
        self.finish(job, "queued", None, Some(error), Some(at_ms))
            .await
    }

    /// Moves a job to the dead letters with the reason.
    pub async fn dead(&self, job: &Claimed, reason: String) -> Result<bool, StoreError> {
        self.finish(job, "dead", Some(reason.clone()), Some(reason), None)
            .await
    }

    async fn finish(
        &self,
        job: &Claimed,
        status: &'static str,
        outcome: Option<String>,
        error: Option<String>,
        visible_at: Option<i64>,
    ) -> Result<bool, StoreError> {
        let (id, lease) = (job.id, job.lease.clone());
        self.run(move |c| {
            let now = now_ms();
            let n = c.execute(
                "UPDATE jobs SET status=?1, outcome=COALESCE(?2, outcome), last_error=COALESCE(?3, last_error),
                        visible_at=COALESCE(?4, visible_at), lease=NULL, updated_at=?5
                 WHERE id=?6 AND lease=?7",
                params![status, outcome, error, visible_at, now, id, lease],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// At start-up of the only process on this data directory, jobs left `running` belong to a
    /// process that died: make them visible now instead of waiting out their lease.
    pub fn recover_running(&self) -> Result<usize, StoreError> {
        self.run_sync(|c| {
            Ok(c.execute(
                "UPDATE jobs SET status='queued', lease=NULL, visible_at=?1, updated_at=?1 WHERE status='running'",
                params![now_ms()],
            )?)
        })
    }

    pub fn list(&self, status: Option<JobStatus>, limit: usize) -> Result<Vec<JobRow>, StoreError> {
        self.run_sync(|c| {
            let mut stmt = c.prepare(
                "SELECT id, stage_instance_id, request_id, stage, status, attempts, received_at, deadline_at, visible_at, outcome, last_error
                 FROM jobs WHERE (?1 IS NULL OR status = ?1) ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt
                .query_map(params![status.map(JobStatus::as_str), limit as i64], row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Finds a job by numeric id or by stage instance id.
    pub fn get(&self, key: &str) -> Result<Option<(JobRow, JobMessage)>, StoreError> {
        self.run_sync(|c| {
            let found = c
                .query_row(
                    "SELECT id, stage_instance_id, request_id, stage, status, attempts, received_at, deadline_at, visible_at, outcome, last_error, message
                     FROM jobs WHERE stage_instance_id = ?1 OR CAST(id AS TEXT) = ?1",
                    params![key],
                    |r| Ok((row(r)?, r.get::<_, String>(11)?)),
                )
                .optional()?;
            match found {
                None => Ok(None),
                Some((jr, text)) => {
                    let m = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    Ok(Some((jr, m)))
                }
            }
        })
    }

    /// Sends a dead job back to the queue (after the cause was fixed), clearing its outcome.
    /// A job at or within [`MIN_RETRY_WINDOW`] of its deadline is not requeued: Entra has timed
    /// the callout out (or is about to) and would refuse the resume.
    pub fn requeue(&self, key: &str) -> Result<Requeue, StoreError> {
        self.run_sync(|c| {
            let now = now_ms();
            let found = c
                .query_row(
                    "SELECT id, status, deadline_at FROM jobs WHERE stage_instance_id = ?1 OR CAST(id AS TEXT) = ?1",
                    params![key],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)),
                )
                .optional()?;
            let Some((id, status, deadline)) = found else {
                return Ok(Requeue::NotFound);
            };
            if status != "dead" {
                return Ok(Requeue::NotDead(status));
            }
            if deadline - now < MIN_RETRY_WINDOW.as_millis() as i64 {
                return Ok(Requeue::TooLate(deadline));
            }
            c.execute(
                "UPDATE jobs SET status='queued', attempts=0, visible_at=?1, lease=NULL, outcome=NULL, updated_at=?1 WHERE id=?2",
                params![now, id],
            )?;
            Ok(Requeue::Queued)
        })
    }

    /// Counts per status, for health and the demo.
    pub async fn counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.run(|c| {
            let mut stmt =
                c.prepare("SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status")?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        stage_instance_id: r.get(1)?,
        request_id: r.get(2)?,
        stage: r.get(3)?,
        status: r.get(4)?,
        attempts: r.get(5)?,
        received_at_ms: r.get(6)?,
        deadline_at_ms: r.get(7)?,
        visible_at_ms: r.get(8)?,
        outcome: r.get(9)?,
        last_error: r.get(10)?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::callout::{Parsed, parse};

    fn msg(sid: &str) -> JobMessage {
        let body = format!(
            r#"{{"Stage":"assignmentRequestCreated","CustomExtensionStageInstanceId":"{sid}","AccessPackageAssignmentRequestId":"r","CallbackConfiguration":{{"DurationBeforeTimeout":"PT1H"}}}}"#
        );
        let Ok(Parsed::Callout(c)) = parse(body.as_bytes()) else {
            panic!()
        };
        JobMessage::new(
            *c,
            "corr".into(),
            None,
            Duration::from_secs(3600),
            Duration::from_secs(60),
        )
    }

    #[tokio::test]
    async fn enqueue_dedupes_and_claim_leases() {
        let dir = tempfile::tempdir().unwrap();
        let q = SqliteQueue::open(dir.path()).unwrap();
        assert_eq!(
            q.enqueue(&msg("a")).await.unwrap(),
            EnqueueOutcome::Enqueued
        );
        assert_eq!(
            q.enqueue(&msg("a")).await.unwrap(),
            EnqueueOutcome::Duplicate
        );
        let c = q.claim(Duration::from_secs(60)).await.unwrap().unwrap();
        assert_eq!(c.attempts, 1);
        assert!(
            q.claim(Duration::from_secs(60)).await.unwrap().is_none(),
            "leased job must be invisible"
        );
        assert!(q.retry_at(&c, now_ms() - 1, "boom".into()).await.unwrap());
        let c2 = q.claim(Duration::from_secs(60)).await.unwrap().unwrap();
        assert_eq!(c2.attempts, 2);
        assert!(
            !q.complete(&c, "stale lease".into()).await.unwrap(),
            "old lease must not finish the job"
        );
        assert!(q.dead(&c2, "gave up".into()).await.unwrap());
        let (row, _) = q.get("a").unwrap().unwrap();
        assert_eq!(row.status, "dead");
        assert_eq!(q.requeue("a").unwrap(), Requeue::Queued);
        assert_eq!(q.requeue("a").unwrap(), Requeue::NotDead("queued".into()));
        assert_eq!(q.requeue("zzz").unwrap(), Requeue::NotFound);
        assert_eq!(q.get("a").unwrap().unwrap().0.status, "queued");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_enqueues_share_commits_and_each_gets_its_own_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let q = SqliteQueue::open(dir.path()).unwrap();
        // 300 distinct ids, each sent twice at once: exactly one Enqueued per id.
        let mut tasks = Vec::new();
        for i in 0..600 {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                let sid = format!("s{}", i % 300);
                (sid.clone(), q.enqueue(&msg(&sid)).await.unwrap())
            }));
        }
        let mut enqueued = std::collections::HashMap::new();
        for t in tasks {
            let (sid, outcome) = t.await.unwrap();
            if outcome == EnqueueOutcome::Enqueued {
                *enqueued.entry(sid).or_insert(0) += 1;
            }
        }
        assert_eq!(enqueued.len(), 300);
        assert!(enqueued.values().all(|n| *n == 1), "{enqueued:?}");
        // Every acknowledged row is in the database, readable by another connection.
        let other = Connection::open(dir.path().join("queue.db")).unwrap();
        let n: i64 = other
            .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 300);
    }

    #[tokio::test]
    async fn expired_lease_makes_a_job_visible_again() {
        let dir = tempfile::tempdir().unwrap();
        let q = SqliteQueue::open(dir.path()).unwrap();
        q.enqueue(&msg("b")).await.unwrap();
        let _lost = q.claim(Duration::from_millis(0)).await.unwrap().unwrap();
        let again = q.claim(Duration::from_secs(60)).await.unwrap().unwrap();
        assert_eq!(again.attempts, 2);
    }

    #[test]
    fn data_dir_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let _a = DataDirLock::acquire(dir.path()).unwrap();
        assert!(matches!(
            DataDirLock::acquire(dir.path()),
            Err(StoreError::Locked(_))
        ));
    }

    #[test]
    fn queue_text_is_parsed_leniently() {
        let m = msg("c");
        let once = serde_json::to_string(&m).unwrap();
        let twice = serde_json::to_string(&once).unwrap();
        assert_eq!(JobMessage::from_queue_text(&once).unwrap(), m);
        assert_eq!(JobMessage::from_queue_text(&twice).unwrap(), m);
    }
}
