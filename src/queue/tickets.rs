//! The ticket ledger: which ServiceNow record was opened for which stage instance, and where the
//! bridge stands with it. It is what makes "exactly one ticket per stage instance" hold: a
//! worker reserves the stage instance here (insert if absent) before it looks the ticket up in
//! ServiceNow or creates it, and records the ticket before it parks the job. It lives beside the
//! jobs (a SQLite table in the queue's database; rows in the Storage backend's wait table), so
//! it needs no store of its own and survives restarts with them.

use async_trait::async_trait;
use rusqlite::{OptionalExtension as _, params};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::StoreError;
use super::azure_backend::AzureJobs;
use super::job::{Deadline, now_ms};
use super::sqlite::SqliteQueue;

/// Where the bridge stands with a stage instance's ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TicketPhase {
    /// Reserved: a worker is looking the ticket up or creating it.
    Opening,
    /// Open in ServiceNow; Entra waits for it to close.
    Open,
    /// Opened at a stage that does not wait (a de-provisioning ticket): nothing more to do.
    Opened,
    /// Closed; the outcome is recorded (`closed`) and is what is resumed, whatever later edits
    /// of the record say.
    Closed,
    /// The record disappeared from ServiceNow before it closed.
    Deleted,
    /// Entra's deadline passed while the ticket was open: nothing is resumed.
    Expired,
}

impl TicketPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            TicketPhase::Opening => "opening",
            TicketPhase::Open => "open",
            TicketPhase::Opened => "opened",
            TicketPhase::Closed => "closed",
            TicketPhase::Deleted => "deleted",
            TicketPhase::Expired => "expired",
        }
    }

    /// A phase the poll still looks at.
    pub fn is_waiting(self) -> bool {
        matches!(self, TicketPhase::Open)
    }
}

/// How a closed (or deleted) ticket is resumed, fixed when the bridge first saw it closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClosedAs {
    /// The ticket's state as read (stored value, and display value when sent).
    pub state: String,
    pub deny: bool,
    /// The detail text approvers see.
    pub detail: String,
    pub at: Deadline,
}

/// One stage instance's ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketRow {
    pub stage_instance_id: String,
    pub request_id: String,
    pub stage: String,
    /// The callout's correlation id (the job's).
    pub correlation_id: String,
    /// The policy's `[tickets.NAME]`.
    pub spec: String,
    pub table: String,
    /// The value written into the link field (`accessgate:<stageInstanceId>`).
    pub link: String,
    #[serde(default)]
    pub sys_id: Option<String>,
    #[serde(default)]
    pub number: Option<String>,
    /// For a catalog item: the request (REQ) `order_now` made, recorded before its item gets
    /// the link, so a retry does not order again.
    #[serde(default)]
    pub ordered: Option<String>,
    pub phase: TicketPhase,
    /// Who holds the reservation while `Opening` (a random token per attempt).
    pub owner: String,
    pub reserved_at: Deadline,
    pub updated_at: Deadline,
    /// The job's deadline: the ticket must close before it.
    pub deadline: Deadline,
    #[serde(default)]
    pub reminded: bool,
    #[serde(default)]
    pub closed: Option<ClosedAs>,
    /// What happened last, in words (shown by `accessgate tickets`).
    #[serde(default)]
    pub note: String,
}

/// What [`TicketLedger::reserve`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserve {
    /// The row was absent and is now ours.
    Mine,
    /// A row exists (another attempt, or another instance, got there first).
    Existing(Box<TicketRow>),
}

#[async_trait]
pub trait TicketLedger: Send + Sync {
    /// Inserts `row` if the stage instance has none; else returns the one there.
    async fn reserve(&self, row: &TicketRow) -> Result<Reserve, StoreError>;
    /// Replaces the row only while its owner is still `from_owner` (a stale reservation taken
    /// over); `false` when someone else changed it first.
    async fn take_over(&self, row: &TicketRow, from_owner: &str) -> Result<bool, StoreError>;
    /// Writes the row (the caller holds it).
    async fn save(&self, row: &TicketRow) -> Result<(), StoreError>;
    async fn get(&self, stage_instance_id: &str) -> Result<Option<TicketRow>, StoreError>;
    async fn by_sys_id(&self, sys_id: &str) -> Result<Option<TicketRow>, StoreError>;
    /// Rows, newest first; only those still waiting for a close when `open_only`.
    async fn list(&self, open_only: bool, limit: usize) -> Result<Vec<TicketRow>, StoreError>;
}

/// This process's id, the first part of every reservation token it makes.
fn boot_id() -> &'static str {
    use rand::Rng as _;
    static BOOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOT.get_or_init(|| format!("{:08x}", rand::rng().random::<u32>()))
}

/// A reservation token: `<process id>.<random>`.
pub fn owner_token() -> String {
    use rand::Rng as _;
    format!("{}.{:016x}", boot_id(), rand::rng().random::<u64>())
}

/// The owner of a reservation whose attempt failed and let it go: any attempt may take it
/// over at once (it looks the ticket up by its link before creating one).
pub const RELEASED: &str = "released";

/// Whether a token was made by this process (a token of an earlier process on the same
/// single-process store belongs to an attempt that died with it).
pub fn owned_by_this_process(token: &str) -> bool {
    token.split('.').next() == Some(boot_id())
}

impl TicketRow {
    /// Marks the row changed now.
    pub fn touch(&mut self, note: impl Into<String>) {
        self.updated_at = Deadline::from_unix_ms(now_ms());
        self.note = note.into();
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite: a table in the queue's database, written through its writer thread.

pub(super) const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tickets (
    stage_instance_id TEXT PRIMARY KEY,
    sys_id TEXT,
    phase TEXT NOT NULL,
    owner TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    row TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tickets_sys_id ON tickets(sys_id);
CREATE INDEX IF NOT EXISTS tickets_phase ON tickets(phase, updated_at);
";

fn decode(text: &str) -> Result<TicketRow, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("ticket row: {e}")))
}

#[async_trait]
impl TicketLedger for SqliteQueue {
    async fn reserve(&self, row: &TicketRow) -> Result<Reserve, StoreError> {
        let text = serde_json::to_string(row)?;
        let r = row.clone();
        self.run(move |c| {
            let n = c.execute(
                "INSERT INTO tickets (stage_instance_id, sys_id, phase, owner, updated_at, row)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(stage_instance_id) DO NOTHING",
                params![
                    r.stage_instance_id,
                    r.sys_id,
                    r.phase.as_str(),
                    r.owner,
                    r.updated_at.unix_ms(),
                    text
                ],
            )?;
            if n == 1 {
                return Ok(Reserve::Mine);
            }
            let existing: String = c.query_row(
                "SELECT row FROM tickets WHERE stage_instance_id = ?1",
                params![r.stage_instance_id],
                |x| x.get(0),
            )?;
            Ok(Reserve::Existing(Box::new(decode(&existing)?)))
        })
        .await
    }

    async fn take_over(&self, row: &TicketRow, from_owner: &str) -> Result<bool, StoreError> {
        let text = serde_json::to_string(row)?;
        let (r, from) = (row.clone(), from_owner.to_owned());
        self.run(move |c| {
            let n = c.execute(
                "UPDATE tickets SET sys_id = ?2, phase = ?3, owner = ?4, updated_at = ?5, row = ?6
                 WHERE stage_instance_id = ?1 AND owner = ?7",
                params![
                    r.stage_instance_id,
                    r.sys_id,
                    r.phase.as_str(),
                    r.owner,
                    r.updated_at.unix_ms(),
                    text,
                    from
                ],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn save(&self, row: &TicketRow) -> Result<(), StoreError> {
        let text = serde_json::to_string(row)?;
        let r = row.clone();
        self.run(move |c| {
            c.execute(
                "INSERT INTO tickets (stage_instance_id, sys_id, phase, owner, updated_at, row)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(stage_instance_id) DO UPDATE SET sys_id = excluded.sys_id,
                   phase = excluded.phase, owner = excluded.owner,
                   updated_at = excluded.updated_at, row = excluded.row",
                params![
                    r.stage_instance_id,
                    r.sys_id,
                    r.phase.as_str(),
                    r.owner,
                    r.updated_at.unix_ms(),
                    text
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn get(&self, stage_instance_id: &str) -> Result<Option<TicketRow>, StoreError> {
        let sid = stage_instance_id.to_owned();
        let text: Option<String> = self
            .run(move |c| {
                Ok(c.query_row(
                    "SELECT row FROM tickets WHERE stage_instance_id = ?1",
                    params![sid],
                    |x| x.get(0),
                )
                .optional()?)
            })
            .await?;
        text.as_deref().map(decode).transpose()
    }

    async fn by_sys_id(&self, sys_id: &str) -> Result<Option<TicketRow>, StoreError> {
        let id = sys_id.to_owned();
        let text: Option<String> = self
            .run(move |c| {
                Ok(c.query_row(
                    "SELECT row FROM tickets WHERE sys_id = ?1 ORDER BY updated_at DESC LIMIT 1",
                    params![id],
                    |x| x.get(0),
                )
                .optional()?)
            })
            .await?;
        text.as_deref().map(decode).transpose()
    }

    async fn list(&self, open_only: bool, limit: usize) -> Result<Vec<TicketRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let texts: Vec<String> = self
            .run(move |c| {
                let sql = if open_only {
                    "SELECT row FROM tickets WHERE phase = 'open' ORDER BY updated_at DESC LIMIT ?1"
                } else {
                    "SELECT row FROM tickets ORDER BY updated_at DESC LIMIT ?1"
                };
                let mut stmt = c.prepare(sql)?;
                let rows = stmt
                    .query_map(params![limit], |x| x.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await?;
        texts.iter().map(|t| decode(t)).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Azure Storage: rows in the wait table (partition `ticket`, row key the stage instance id),
// with an index row per ServiceNow record (partition `ticketsys`, row key its sys_id). The
// reservation is an insert (409 when it exists); a take-over replaces under the row's ETag.

const TICKET_PK: &str = "ticket";
const SYS_PK: &str = "ticketsys";

fn entity(row: &TicketRow) -> Result<Map<String, Value>, StoreError> {
    let mut m = Map::new();
    m.insert("row".into(), serde_json::to_string(row)?.into());
    m.insert("phase".into(), row.phase.as_str().into());
    m.insert("owner".into(), row.owner.clone().into());
    m.insert("updatedAt".into(), row.updated_at.unix_ms().into());
    Ok(m)
}

fn from_entity(m: &Map<String, Value>) -> Result<TicketRow, StoreError> {
    let text = m
        .get("row")
        .and_then(Value::as_str)
        .ok_or_else(|| StoreError::Corrupt("ticket entity has no row".into()))?;
    decode(text)
}

impl AzureJobs {
    async fn index_sys_id(&self, row: &TicketRow) -> Result<(), StoreError> {
        if let Some(sys) = &row.sys_id {
            let mut m = Map::new();
            m.insert("sid".into(), row.stage_instance_id.clone().into());
            self.waits.upsert(SYS_PK, sys, m).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl TicketLedger for AzureJobs {
    async fn reserve(&self, row: &TicketRow) -> Result<Reserve, StoreError> {
        // Bounded: a row deleted between the insert and the read is inserted again.
        for _ in 0..3 {
            if self
                .waits
                .insert(TICKET_PK, &row.stage_instance_id, entity(row)?)
                .await?
            {
                self.index_sys_id(row).await?;
                return Ok(Reserve::Mine);
            }
            if let Some(m) = self.waits.get(TICKET_PK, &row.stage_instance_id).await? {
                return Ok(Reserve::Existing(Box::new(from_entity(&m)?)));
            }
        }
        Err(StoreError::Corrupt(
            "the ticket row keeps appearing and disappearing".into(),
        ))
    }

    async fn take_over(&self, row: &TicketRow, from_owner: &str) -> Result<bool, StoreError> {
        let Some((m, etag)) = self
            .waits
            .get_tagged(TICKET_PK, &row.stage_instance_id)
            .await?
        else {
            return Ok(false);
        };
        if from_entity(&m)?.owner != from_owner {
            return Ok(false);
        }
        let done = self
            .waits
            .replace_if(TICKET_PK, &row.stage_instance_id, entity(row)?, &etag)
            .await?;
        if done {
            self.index_sys_id(row).await?;
        }
        Ok(done)
    }

    async fn save(&self, row: &TicketRow) -> Result<(), StoreError> {
        // The index first: a row that names a sys_id can always be found by it.
        self.index_sys_id(row).await?;
        self.waits
            .upsert(TICKET_PK, &row.stage_instance_id, entity(row)?)
            .await?;
        Ok(())
    }

    async fn get(&self, stage_instance_id: &str) -> Result<Option<TicketRow>, StoreError> {
        match self.waits.get(TICKET_PK, stage_instance_id).await? {
            Some(m) => from_entity(&m).map(Some),
            None => Ok(None),
        }
    }

    async fn by_sys_id(&self, sys_id: &str) -> Result<Option<TicketRow>, StoreError> {
        let Some(ix) = self.waits.get(SYS_PK, sys_id).await? else {
            return Ok(None);
        };
        let Some(sid) = ix.get("sid").and_then(Value::as_str) else {
            return Err(StoreError::Corrupt("ticket index entity has no sid".into()));
        };
        let row = self.get(sid).await?;
        Ok(row.filter(|r| r.sys_id.as_deref() == Some(sys_id)))
    }

    async fn list(&self, open_only: bool, limit: usize) -> Result<Vec<TicketRow>, StoreError> {
        let filter = open_only.then_some(("phase", "open"));
        let mut rows = self
            .waits
            .query(TICKET_PK, filter, limit.max(1))
            .await?
            .iter()
            .map(from_entity)
            .collect::<Result<Vec<_>, _>>()?;
        rows.sort_by_key(|r| std::cmp::Reverse(r.updated_at));
        Ok(rows)
    }
}
