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

use async_trait::async_trait;

use super::store::LeaseToken;
use super::{
    Deadline, EnqueueOutcome, JobMessage, JobStore, Lease, Outcome, Settle, StoreError, Stored,
    Wait, WaitKey, WaitingJob, WokenBy, now_ms,
};

/// Schema version 2 added parked jobs (`waiting`, the wait columns and `wake_events`).
const SCHEMA_VERSION: i64 = 2;

const JOBS_TABLE: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stage_instance_id TEXT NOT NULL UNIQUE,
    request_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    message TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued','running','done','dead','waiting')),
    attempts INTEGER NOT NULL DEFAULT 0,
    received_at INTEGER NOT NULL,
    deadline_at INTEGER NOT NULL,
    visible_at INTEGER NOT NULL,
    lease TEXT,
    outcome TEXT,
    last_error TEXT,
    updated_at INTEGER NOT NULL,
    claimed_at INTEGER,
    wait_key TEXT,
    wait_reason TEXT,
    woken_by TEXT
);
";

const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs(status, visible_at);
CREATE INDEX IF NOT EXISTS jobs_wait_key ON jobs(wait_key) WHERE wait_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS wake_events (key TEXT PRIMARY KEY, woken_at INTEGER NOT NULL);
";

/// The columns a version-1 table has, copied over when it is rebuilt.
const V1_COLUMNS: &str = "id, stage_instance_id, request_id, stage, message, status, attempts, received_at, deadline_at, visible_at, lease, outcome, last_error, updated_at";

/// Creates the schema, or upgrades a version-1 database in place (SQLite cannot change a CHECK
/// constraint, so the table is rebuilt in one transaction).
fn migrate(c: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version >= SCHEMA_VERSION {
        return Ok(());
    }
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
    let has_jobs: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type='table' AND name='jobs')",
        [],
        |r| r.get(0),
    )?;
    if has_jobs && version < 2 {
        tx.execute_batch("DROP INDEX IF EXISTS jobs_ready; ALTER TABLE jobs RENAME TO jobs_v1;")?;
        tx.execute_batch(JOBS_TABLE)?;
        tx.execute_batch(&format!(
            "INSERT INTO jobs ({V1_COLUMNS}) SELECT {V1_COLUMNS} FROM jobs_v1; DROP TABLE jobs_v1;"
        ))?;
    } else {
        tx.execute_batch(JOBS_TABLE)?;
    }
    tx.execute_batch(INDEXES)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Done,
    Dead,
    Waiting,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Dead => "dead",
            JobStatus::Waiting => "waiting",
        }
    }
    pub fn parse(s: &str) -> Option<JobStatus> {
        [
            JobStatus::Queued,
            JobStatus::Running,
            JobStatus::Done,
            JobStatus::Dead,
            JobStatus::Waiting,
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
    /// For a `waiting` job: the key it waits for and why.
    pub wait_key: Option<String>,
    pub wait_reason: Option<String>,
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

#[derive(Clone)]
pub struct SqliteQueue {
    /// The one connection. The writer thread holds it for each group commit; only the CLI's
    /// synchronous calls (`jobs`, start-up recovery) lock it from elsewhere.
    conn: Arc<Mutex<Connection>>,
    writer: tokio::sync::mpsc::Sender<Command>,
    /// Told of every job this process makes runnable (enqueue, wake), for idle workers.
    signal: Arc<tokio::sync::Notify>,
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

/// Told after the commit: `None` when it succeeded, else why it failed.
type Reply = Box<dyn FnOnce(Option<Arc<rusqlite::Error>>) + Send>;
/// A worker's or the server's own statement (claim, settle, wake, readiness): run in the group
/// commit's transaction (`None` when it could not begin), answered after the commit.
type Op = Box<dyn for<'t> FnOnce(Option<&mut rusqlite::Transaction<'t>>) -> Reply + Send>;

/// What the writer thread runs. Everything that writes goes through it, so a worker's claim
/// or settle shares the next commit with the enqueues instead of holding the connection for a
/// commit of its own while a `202` waits.
enum Command {
    Insert(Insert),
    Op(Op),
}

/// A command run in the transaction, waiting for the commit's verdict.
enum Done {
    Insert(
        tokio::sync::oneshot::Sender<Result<EnqueueOutcome, StoreError>>,
        Result<EnqueueOutcome, StoreError>,
    ),
    Op(Reply),
}

/// At most this many commands share one transaction; beyond it, latency would suffer.
const MAX_BATCH: usize = 256;
/// Commands waiting for the writer; a full channel makes intake wait (back-pressure).
const WRITER_QUEUE: usize = 4096;

const INSERT_JOB: &str = "INSERT INTO jobs (stage_instance_id, request_id, stage, message, status, received_at, deadline_at, visible_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?5, ?5)
                 ON CONFLICT(stage_instance_id) DO NOTHING";

/// The group-commit writer: takes whatever commands are waiting, runs them in one
/// transaction, commits once, then answers each. Ends when every queue handle is dropped.
fn writer_loop(
    conn: Arc<Mutex<Connection>>,
    mut rx: tokio::sync::mpsc::Receiver<Command>,
    signal: Arc<tokio::sync::Notify>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut done = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(i) => batch.push(i),
                Err(_) => break,
            }
        }
        // A panic elsewhere while holding the lock left no transaction open (rusqlite rolls
        // back on drop), so the connection is still usable.
        let mut c = conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let verdict = run_batch(&mut c, &mut batch, &mut done);
        drop(c);
        let failed = verdict.err().map(Arc::new);
        for d in done.drain(..) {
            match d {
                Done::Insert(reply, outcome) => {
                    let outcome = match &failed {
                        Some(e) => Err(StoreError::Commit(e.clone())),
                        None => outcome,
                    };
                    if matches!(outcome, Ok(EnqueueOutcome::Enqueued)) {
                        // Committed: an idle worker may claim it now (before the 202 is even
                        // written; the claim waits for nothing of the intake's).
                        signal.notify_one();
                    }
                    let _ = reply.send(outcome);
                }
                Done::Op(reply) => reply(failed.clone()),
            }
        }
    }
}

/// Runs `batch` in one transaction into `done`; the commit's result. When the transaction cannot
/// begin, every command is still moved to `done` (and told of the failure).
fn run_batch(
    c: &mut Connection,
    batch: &mut Vec<Command>,
    done: &mut Vec<Done>,
) -> Result<(), rusqlite::Error> {
    let mut tx = match c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            for cmd in batch.drain(..) {
                done.push(match cmd {
                    Command::Insert(i) => Done::Insert(i.reply, Ok(EnqueueOutcome::Enqueued)),
                    Command::Op(op) => Done::Op(op(None)),
                });
            }
            return Err(e);
        }
    };
    for cmd in batch.drain(..) {
        done.push(match cmd {
            // A statement error fails only its own command; the transaction goes on.
            Command::Insert(i) => {
                let outcome = insert_one(&tx, &i);
                Done::Insert(i.reply, outcome)
            }
            Command::Op(op) => {
                // A bug in one command must not end the writer thread (and with it every
                // enqueue): its savepoint is rolled back as the panic unwinds, and its caller
                // sees the queue as unavailable for that one call.
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(Some(&mut tx)))) {
                    Ok(reply) => Done::Op(reply),
                    Err(_) => {
                        tracing::error!("a queue command panicked; its writes were rolled back");
                        continue;
                    }
                }
            }
        });
    }
    tx.commit()
}

fn insert_one(tx: &rusqlite::Transaction<'_>, i: &Insert) -> Result<EnqueueOutcome, StoreError> {
    let mut stmt = tx.prepare_cached(INSERT_JOB)?;
    let n = stmt.execute(params![
        i.sid,
        i.rid,
        i.stage,
        i.text,
        i.received_at,
        i.deadline_at
    ])?;
    Ok(if n == 1 {
        EnqueueOutcome::Enqueued
    } else {
        EnqueueOutcome::Duplicate
    })
}

/// The wall clock in milliseconds, but strictly increasing within this process (the only one on
/// its data directory): a claim's `claimed_at` and a wake's `woken_at` then order the two
/// exactly, even when both fall in one millisecond (a wake during the attempt must be seen, an
/// older one must not).
fn stamp() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering::SeqCst};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let mut last = LAST.load(SeqCst);
    loop {
        let next = now_ms().max(last + 1);
        match LAST.compare_exchange(last, next, SeqCst, SeqCst) {
            Ok(_) => return next,
            Err(l) => last = l,
        }
    }
}

/// Runs one command's statements under a savepoint, so a failed statement undoes only its own
/// command's writes, not the enqueues that share the transaction.
fn in_savepoint<T>(
    tx: &mut rusqlite::Transaction<'_>,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let sp = tx.savepoint()?;
    let r = f(&sp);
    if matches!(r, Err(StoreError::Db(_))) {
        drop(sp); // rolls back to the savepoint
    } else {
        sp.commit()?;
    }
    r
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
        let mut conn = conn;
        migrate(&mut conn)?;
        // One row rewritten by the readiness probe: a commit that fails here (read-only or full
        // disk, a lock held elsewhere) would fail an enqueue too. Not part of the job schema.
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS readiness (id INTEGER PRIMARY KEY, at INTEGER NOT NULL)",
        )?;
        // The ticket ledger of the ServiceNow bridge (`queue::tickets`).
        conn.execute_batch(super::tickets::SQLITE_SCHEMA)?;
        // The PIM verdict ledger (`queue::verdicts`).
        conn.execute_batch(super::verdicts::SQLITE_SCHEMA)?;
        let conn = Arc::new(Mutex::new(conn));
        let (writer, rx) = tokio::sync::mpsc::channel(WRITER_QUEUE);
        let wconn = conn.clone();
        let signal = Arc::new(tokio::sync::Notify::new());
        let wsignal = signal.clone();
        std::thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || writer_loop(wconn, rx, wsignal))?;
        Ok(SqliteQueue {
            conn,
            writer,
            signal,
        })
    }

    /// Runs `f` in the writer's next group commit; its result once that commit is durable.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let op: Op = Box::new(move |tx: Option<&mut rusqlite::Transaction<'_>>| -> Reply {
            let result = tx.map(|tx| in_savepoint(tx, f));
            Box::new(move |failed: Option<Arc<rusqlite::Error>>| {
                let _ = reply.send(match (failed, result) {
                    (Some(e), _) => Err(StoreError::Commit(e)),
                    (None, Some(r)) => r,
                    // Not reached: a commit succeeds only after its transaction began.
                    (None, None) => Err(StoreError::Join),
                });
            })
        });
        self.writer
            .send(Command::Op(op))
            .await
            .map_err(|_| StoreError::Join)?;
        answer.await.map_err(|_| StoreError::Join)?
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
    async fn insert(&self, msg: &JobMessage) -> Result<EnqueueOutcome, StoreError> {
        let text = serde_json::to_string(msg)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let insert = Insert {
            sid: msg.callout.stage_instance_id.to_string(),
            rid: msg.callout.request_id.to_string(),
            stage: msg.callout.stage.to_string(),
            text,
            received_at: msg.received_at_ms,
            deadline_at: msg.deadline.unix_ms(),
            reply,
        };
        self.writer
            .send(Command::Insert(insert))
            .await
            .map_err(|_| StoreError::Join)?;
        answer.await.map_err(|_| StoreError::Join)?
    }

    /// Takes the next visible job under a lease. A `running` job whose lease ran out (its worker
    /// died) is visible again, and so is a `waiting` job whose wake-up time has come.
    async fn take(&self, lease: Duration) -> Result<Option<Lease>, StoreError> {
        let token = uuid::Uuid::new_v4().to_string();
        let lease_token = token.clone();
        let row = self.run(move |c| {
            let now = stamp();
            let row = c
                .query_row(
                    "UPDATE jobs SET status='running', attempts=attempts+1, lease=?1, visible_at=?2, updated_at=?3, claimed_at=?3,
                            woken_by = CASE WHEN status='waiting' THEN 'timer' ELSE woken_by END
                     WHERE id = (SELECT id FROM jobs WHERE status IN ('queued','running','waiting') AND visible_at <= ?3
                                 ORDER BY visible_at, id LIMIT 1)
                     RETURNING id, attempts, message, last_error, woken_by",
                    params![token, now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)), now],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?, r.get::<_, Option<String>>(3)?, r.get::<_, Option<String>>(4)?)),
                )
                .optional()?;
            Ok(row)
        })
        .await?;
        let Some((id, attempts, text, last_error, woken_by)) = row else {
            return Ok(None);
        };
        // Decoded here, not on the writer thread, where it would hold up the group commit.
        let job = match serde_json::from_str(&text) {
            Ok(m) => m,
            Err(e) => {
                // Retrying cannot make it readable: dead-letter it now, or it would be claimed
                // again after every lease forever.
                let reason = format!("stored job is unreadable: {e}");
                self.run(move |c| {
                    c.execute(
                        "UPDATE jobs SET status='dead', outcome=?1, last_error=?1, lease=NULL WHERE id=?2",
                        params![reason, id],
                    )?;
                    Ok(())
                })
                .await?;
                return Err(StoreError::Corrupt(format!("job {id}: {e}")));
            }
        };
        let woken_by = match woken_by.as_deref() {
            Some("event") => Some(WokenBy::Event),
            Some("timer") => Some(WokenBy::Timer),
            _ => None,
        };
        Ok(Some(Lease {
            job,
            attempt: u32::try_from(attempts).unwrap_or(u32::MAX),
            last_error,
            woken_by,
            token: LeaseToken::Sqlite {
                id,
                lease: lease_token,
            },
        }))
    }

    async fn finish(
        &self,
        lease: &Lease,
        status: &'static str,
        outcome: Option<String>,
        error: Option<String>,
        visible_at: Option<i64>,
    ) -> Result<Stored, StoreError> {
        let LeaseToken::Sqlite { id, lease } = &lease.token else {
            return Err(StoreError::ForeignLease);
        };
        let (id, lease) = (*id, lease.clone());
        self.run(move |c| {
            let now = now_ms();
            let n = c.execute(
                "UPDATE jobs SET status=?1, outcome=COALESCE(?2, outcome), last_error=COALESCE(?3, last_error),
                        visible_at=COALESCE(?4, visible_at), lease=NULL, updated_at=?5,
                        wait_key=NULL, wait_reason=NULL, woken_by=NULL
                 WHERE id=?6 AND lease=?7",
                params![status, outcome, error, visible_at, now, id, lease],
            )?;
            Ok(if n == 1 { Stored::Yes } else { Stored::LeaseLost })
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
                "SELECT id, stage_instance_id, request_id, stage, status, attempts, received_at, deadline_at, visible_at, outcome, last_error, wait_key, wait_reason
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
                    "SELECT id, stage_instance_id, request_id, stage, status, attempts, received_at, deadline_at, visible_at, outcome, last_error, wait_key, wait_reason, message
                     FROM jobs WHERE stage_instance_id = ?1 OR CAST(id AS TEXT) = ?1",
                    params![key],
                    |r| Ok((row(r)?, r.get::<_, String>(13)?)),
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
    async fn count(&self) -> Result<Vec<(String, i64)>, StoreError> {
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
        wait_key: r.get(11)?,
        wait_reason: r.get(12)?,
    })
}

/// How long a wake event is kept: longer than any wait can last.
const WAKE_EVENT_TTL_MS: i64 = 15 * 24 * 3600 * 1000;

#[async_trait]
impl Settle for SqliteQueue {
    async fn complete(&self, lease: &Lease, outcome: &Outcome) -> Result<Stored, StoreError> {
        self.finish(lease, "done", Some(outcome.to_string()), None, None)
            .await
    }

    async fn retry_at(
        &self,
        lease: &Lease,
        at: Deadline,
        reason: &str,
    ) -> Result<Stored, StoreError> {
        self.finish(
            lease,
            "queued",
            None,
            Some(reason.to_owned()),
            Some(at.unix_ms()),
        )
        .await
    }

    async fn dead(&self, lease: &Lease, reason: &str) -> Result<Stored, StoreError> {
        self.finish(
            lease,
            "dead",
            Some(reason.to_owned()),
            Some(reason.to_owned()),
            None,
        )
        .await
    }

    async fn wait(&self, lease: &Lease, wait: &Wait) -> Result<Stored, StoreError> {
        let LeaseToken::Sqlite { id, lease } = &lease.token else {
            return Err(StoreError::ForeignLease);
        };
        let (id, lease, wait) = (*id, lease.clone(), wait.clone());
        self.run(move |tx| {
            let now = now_ms();
            // A wake that came while this attempt ran (after it was claimed) must not be missed.
            let woken_meanwhile: bool = match &wait.key {
                None => false,
                Some(k) => tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM wake_events e JOIN jobs j ON j.id = ?2
                                    WHERE e.key = ?1 AND e.woken_at >= COALESCE(j.claimed_at, 0))",
                    params![k.as_str(), id],
                    |r| r.get(0),
                )?,
            };
            let n = if woken_meanwhile {
                tx.execute(
                    "UPDATE jobs SET status='queued', visible_at=?1, lease=NULL, updated_at=?1, attempts=0,
                            wait_key=NULL, wait_reason=NULL, woken_by='event'
                     WHERE id=?2 AND lease=?3",
                    params![now, id, lease],
                )?
            } else {
                tx.execute(
                    "UPDATE jobs SET status='waiting', visible_at=?1, lease=NULL, updated_at=?2, attempts=0,
                            wait_key=?3, wait_reason=?4, woken_by=NULL
                     WHERE id=?5 AND lease=?6",
                    params![wait.until.unix_ms(), now, wait.key.as_ref().map(WaitKey::as_str), wait.reason, id, lease],
                )?
            };
            Ok(if n == 1 { Stored::Yes } else { Stored::LeaseLost })
        })
        .await
    }
}

#[async_trait]
impl JobStore for SqliteQueue {
    async fn enqueue(&self, job: &JobMessage) -> Result<EnqueueOutcome, StoreError> {
        self.insert(job).await
    }

    async fn claim(&self, lease: Duration) -> Result<Option<Lease>, StoreError> {
        self.take(lease).await
    }

    async fn wake(&self, key: &WaitKey) -> Result<usize, StoreError> {
        let key = key.as_str().to_owned();
        let n = self
            .run(move |tx| {
                let now = stamp();
                tx.execute(
                    "INSERT INTO wake_events (key, woken_at) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET woken_at = excluded.woken_at",
                    params![key, now],
                )?;
                tx.execute(
                    "DELETE FROM wake_events WHERE woken_at < ?1",
                    params![now - WAKE_EVENT_TTL_MS],
                )?;
                let n = tx.execute(
                "UPDATE jobs SET status='queued', visible_at=?1, updated_at=?1, woken_by='event'
                 WHERE status='waiting' AND wait_key=?2",
                params![now, key],
            )?;
                Ok(n)
            })
            .await?;
        for _ in 0..n.min(256) {
            self.signal.notify_one();
        }
        Ok(n)
    }

    fn work_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.signal.clone())
    }

    async fn waiting(&self, limit: usize) -> Result<Vec<WaitingJob>, StoreError> {
        let rows = self
            .run(move |c| {
                let mut stmt = c.prepare(
                    "SELECT message, visible_at, wait_key, wait_reason FROM jobs
                     WHERE status='waiting' ORDER BY visible_at, id LIMIT ?1",
                )?;
                let rows = stmt
                    .query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, Option<String>>(2)?,
                            r.get::<_, Option<String>>(3)?,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await?;
        // Decoded off the writer thread.
        Ok(rows
            .into_iter()
            .filter_map(|(text, until, key, reason)| {
                let m: JobMessage = serde_json::from_str(&text).ok()?;
                Some(WaitingJob {
                    stage_instance_id: m.callout.stage_instance_id.to_string(),
                    request_id: m.callout.request_id.to_string(),
                    stage: m.callout.stage.to_string(),
                    correlation_id: m.correlation_id.clone(),
                    until: Deadline::from_unix_ms(until),
                    key: key.and_then(|k| WaitKey::parse(&k).ok()),
                    reason: reason.unwrap_or_default(),
                    deadline: m.deadline,
                })
            })
            .collect())
    }

    async fn counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.count().await
    }

    /// A real commit (with its fsync), as an enqueue makes: reads keep working on a read-only or
    /// full disk, so they cannot tell whether a callout would be acknowledged.
    async fn ready(&self) -> Result<(), StoreError> {
        self.run(|c| {
            c.execute(
                "INSERT OR REPLACE INTO readiness (id, at) VALUES (1, ?1)",
                params![now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(c.attempt, 1);
        assert!(
            q.claim(Duration::from_secs(60)).await.unwrap().is_none(),
            "leased job must be invisible"
        );
        let past = Deadline::from_unix_ms(now_ms() - 1);
        assert_eq!(q.retry_at(&c, past, "boom").await.unwrap(), Stored::Yes);
        let c2 = q.claim(Duration::from_secs(60)).await.unwrap().unwrap();
        assert_eq!(c2.attempt, 2);
        assert_eq!(c2.last_error.as_deref(), Some("boom"));
        let stale = Outcome::NotWaiting {
            why: "stale lease".into(),
        };
        assert_eq!(
            q.complete(&c, &stale).await.unwrap(),
            Stored::LeaseLost,
            "old lease must not finish the job"
        );
        assert_eq!(q.dead(&c2, "gave up").await.unwrap(), Stored::Yes);
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
        assert_eq!(again.attempt, 2);
    }

    fn wait_for(key: &str, secs: u64, m: &JobMessage) -> Wait {
        Wait::new(
            Deadline::in_(Duration::from_secs(secs)),
            Some(WaitKey::parse(key).unwrap()),
            format!("ticket {key} to close"),
            m.deadline,
        )
    }

    #[tokio::test]
    async fn a_parked_job_wakes_on_its_key_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let m = msg("w1");
        {
            let q = SqliteQueue::open(dir.path()).unwrap();
            q.enqueue(&m).await.unwrap();
            let l = q.claim(Duration::from_secs(60)).await.unwrap().unwrap();
            let w = wait_for("sn:INC1", 3600, &m);
            assert_eq!(q.wait(&l, &w).await.unwrap(), Stored::Yes);
            assert!(q.claim(Duration::from_secs(60)).await.unwrap().is_none());
            assert_eq!(q.get("w1").unwrap().unwrap().0.status, "waiting");
        }
        // A new process on the same data directory still knows the wait.
        let q = SqliteQueue::open(dir.path()).unwrap();
        let parked = q.waiting(10).await.unwrap();
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0].stage_instance_id, "w1");
        assert_eq!(parked[0].key.as_ref().unwrap().as_str(), "sn:INC1");
        assert_eq!(parked[0].reason, "ticket sn:INC1 to close");
        assert_eq!(
            q.wake(&WaitKey::parse("sn:other").unwrap()).await.unwrap(),
            0
        );
        assert!(q.claim(Duration::from_secs(60)).await.unwrap().is_none());
        assert_eq!(
            q.wake(&WaitKey::parse("sn:INC1").unwrap()).await.unwrap(),
            1
        );
        let l = q.claim(Duration::from_secs(60)).await.unwrap().unwrap();
        assert_eq!(l.woken_by, Some(WokenBy::Event));
        assert_eq!(l.attempt, 1, "a wait is not a failed attempt");
        let done = Outcome::Resumed {
            action: "continue".into(),
        };
        assert_eq!(q.complete(&l, &done).await.unwrap(), Stored::Yes);
        assert!(q.waiting(10).await.unwrap().is_empty());
        assert_eq!(
            q.get("w1").unwrap().unwrap().0.outcome.as_deref(),
            Some("resumed: continue")
        );
    }

    #[tokio::test]
    async fn a_parked_job_wakes_when_its_time_comes() {
        let dir = tempfile::tempdir().unwrap();
        let q = SqliteQueue::open(dir.path()).unwrap();
        let m = msg("w2");
        q.enqueue(&m).await.unwrap();
        let l = q.claim(Duration::from_secs(60)).await.unwrap().unwrap();
        let w = Wait::new(
            Deadline::in_(Duration::from_millis(50)),
            None,
            "timer".into(),
            m.deadline,
        );
        q.wait(&l, &w).await.unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        let l = q.claim(Duration::from_secs(60)).await.unwrap().unwrap();
        assert_eq!(l.woken_by, Some(WokenBy::Timer));
        // A retry after the wake is an ordinary attempt again.
        q.retry_at(&l, Deadline::from_unix_ms(now_ms() - 1), "x")
            .await
            .unwrap();
        let l = q.claim(Duration::from_secs(60)).await.unwrap().unwrap();
        assert_eq!(l.woken_by, None);
    }

    #[tokio::test]
    async fn a_panicking_command_fails_alone_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let q = SqliteQueue::open(dir.path()).unwrap();
        let r: Result<(), StoreError> = q
            .run(|c| {
                c.execute("DELETE FROM readiness", [])?;
                panic!("a bug in a command");
            })
            .await;
        assert!(matches!(r, Err(StoreError::Join)), "{r:?}");
        assert_eq!(
            q.enqueue(&msg("after")).await.unwrap(),
            EnqueueOutcome::Enqueued
        );
        assert!(q.claim(Duration::from_secs(60)).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn an_unreadable_job_is_dead_lettered_at_its_first_claim() {
        let dir = tempfile::tempdir().unwrap();
        let q = SqliteQueue::open(dir.path()).unwrap();
        q.enqueue(&msg("bad")).await.unwrap();
        q.run_sync(|c| Ok(c.execute("UPDATE jobs SET message='{not json'", [])?))
            .unwrap();
        let err = q.claim(Duration::from_secs(60)).await.err().unwrap();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        assert!(q.claim(Duration::from_secs(0)).await.unwrap().is_none());
        let dead = q.list(Some(JobStatus::Dead), 10).unwrap();
        assert_eq!(dead.len(), 1);
        assert!(
            dead[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("unreadable"))
        );
    }

    #[tokio::test]
    async fn a_wake_during_the_attempt_that_parks_is_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let q = SqliteQueue::open(dir.path()).unwrap();
        let m = msg("w3");
        q.enqueue(&m).await.unwrap();
        let l = q.claim(Duration::from_secs(60)).await.unwrap().unwrap();
        // The ticket closes before the job has written down that it waits for it.
        q.wake(&WaitKey::parse("sn:INC3").unwrap()).await.unwrap();
        q.wait(&l, &wait_for("sn:INC3", 3600, &m)).await.unwrap();
        let l = q.claim(Duration::from_secs(60)).await.unwrap().unwrap();
        assert_eq!(l.woken_by, Some(WokenBy::Event));
        // An old wake event does not wake a later wait on the same key.
        q.wait(&l, &wait_for("sn:INC3", 3600, &m)).await.unwrap();
        assert!(q.claim(Duration::from_secs(60)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_version_1_database_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let m = msg("old");
        {
            let c = Connection::open(dir.path().join("queue.db")).unwrap();
            c.execute_batch(
                "CREATE TABLE jobs (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    stage_instance_id TEXT NOT NULL UNIQUE, request_id TEXT NOT NULL, stage TEXT NOT NULL,
                    message TEXT NOT NULL,
                    status TEXT NOT NULL CHECK (status IN ('queued','running','done','dead')),
                    attempts INTEGER NOT NULL DEFAULT 0, received_at INTEGER NOT NULL, deadline_at INTEGER NOT NULL,
                    visible_at INTEGER NOT NULL, lease TEXT, outcome TEXT, last_error TEXT, updated_at INTEGER NOT NULL);
                 CREATE INDEX jobs_ready ON jobs(status, visible_at);",
            )
            .unwrap();
            c.execute(
                "INSERT INTO jobs (stage_instance_id, request_id, stage, message, status, received_at, deadline_at, visible_at, updated_at)
                 VALUES ('old', 'r', 'assignmentRequestCreated', ?1, 'queued', 1, ?2, 1, 1)",
                params![serde_json::to_string(&m).unwrap(), m.deadline.unix_ms()],
            )
            .unwrap();
        }
        let q = SqliteQueue::open(dir.path()).unwrap();
        let l = q.claim(Duration::from_secs(60)).await.unwrap().unwrap();
        assert_eq!(l.job, m);
        q.wait(&l, &wait_for("k", 60, &m)).await.unwrap();
        assert_eq!(q.get("old").unwrap().unwrap().0.status, "waiting");
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
