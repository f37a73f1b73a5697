//! The PIM verdict ledger: every verdict is written here **before** it is sent, under the
//! activation's key, insert-if-absent. A re-delivered activation (PIM retries, or two
//! deliveries at once) finds the first verdict and is answered with it, evaluation id and all.
//! SQLite (a table in the queue's database) and Azure Table (partition `pim` of the wait table).

use async_trait::async_trait;
use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::StoreError;
use super::azure_backend::AzureJobs;
use super::sqlite::SqliteQueue;

/// One verdict as recorded: who, what, which rule, every check's outcome, what was sent and
/// (in audit mode) what enforce mode would have sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerdictRecord {
    pub key: String,
    pub evaluation_id: String,
    /// `Approved`, `AutoApproved` or `Denied`: what was answered.
    pub outcome: String,
    pub reasons: Vec<String>,
    /// What enforce mode decided (equal to `outcome` unless in audit mode).
    pub enforce_outcome: String,
    pub mode: String,
    pub rule: Option<String>,
    /// Every check's outcome (the policy's `Outcome`s, as JSON).
    pub checks: Vec<Value>,
    pub principal_id: String,
    /// `group`, `entra_role` or `azure_resource`.
    pub kind: String,
    /// The role or group and scope, as the log names it.
    pub target: String,
    pub ticket: Option<String>,
    /// The `[pim.extensions.NAME]` it came through (`None`: `/api/pim`).
    pub extension: Option<String>,
    /// A post-approval notification (recorded, not decided).
    pub post_approval: bool,
    pub correlation_id: String,
    pub decided_at_ms: i64,
    pub elapsed_ms: u64,
}

#[async_trait]
pub trait VerdictLedger: Send + Sync {
    /// Records `v` unless the key has a verdict already; returns the one that stands.
    async fn record(&self, v: &VerdictRecord) -> Result<VerdictRecord, StoreError>;
    async fn get(&self, key: &str) -> Result<Option<VerdictRecord>, StoreError>;
}

pub(super) const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pim_verdicts (
    key TEXT PRIMARY KEY,
    evaluation_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    decided_at INTEGER NOT NULL,
    row TEXT NOT NULL
);
";

fn decode(text: &str) -> Result<VerdictRecord, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("PIM verdict: {e}")))
}

#[async_trait]
impl VerdictLedger for SqliteQueue {
    async fn record(&self, v: &VerdictRecord) -> Result<VerdictRecord, StoreError> {
        let text = serde_json::to_string(v)?;
        let r = v.clone();
        self.run(move |c| {
            let n = c.execute(
                "INSERT INTO pim_verdicts (key, evaluation_id, outcome, decided_at, row)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(key) DO NOTHING",
                params![r.key, r.evaluation_id, r.outcome, r.decided_at_ms, text],
            )?;
            if n == 1 {
                return Ok(r);
            }
            let existing: String = c.query_row(
                "SELECT row FROM pim_verdicts WHERE key = ?1",
                params![r.key],
                |x| x.get(0),
            )?;
            decode(&existing)
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<VerdictRecord>, StoreError> {
        let key = key.to_owned();
        let text: Option<String> = self
            .run(move |c| {
                let mut st = c.prepare_cached("SELECT row FROM pim_verdicts WHERE key = ?1")?;
                let mut rows = st.query(params![key])?;
                Ok(match rows.next()? {
                    Some(r) => Some(r.get(0)?),
                    None => None,
                })
            })
            .await?;
        text.as_deref().map(decode).transpose()
    }
}

const PIM_PK: &str = "pim";
/// Below the Table service's 64 KiB per string property, with room for the entity's rest.
const MAX_TABLE_ROW: usize = 60_000;

/// Table row keys may not hold `/ \ # ?`: the key is written hex-encoded when it does.
fn row_key(key: &str) -> String {
    if key.contains(['/', '\\', '#', '?']) || key.chars().any(char::is_control) {
        key.bytes().map(|b| format!("{b:02x}")).collect()
    } else {
        key.to_owned()
    }
}

#[async_trait]
impl VerdictLedger for AzureJobs {
    async fn record(&self, v: &VerdictRecord) -> Result<VerdictRecord, StoreError> {
        let mut text = serde_json::to_string(v)?;
        // A Table property holds at most 64 KiB: long check explanations give way first, the
        // outcome and reasons never.
        if text.len() > MAX_TABLE_ROW {
            let mut short = v.clone();
            for c in &mut short.checks {
                if let Value::Object(o) = c {
                    o.retain(|k, _| {
                        ["check", "kind", "verdict", "reason", "elapsed_ms"].contains(&k.as_str())
                    });
                }
            }
            text = serde_json::to_string(&short)?;
        }
        let mut m = Map::new();
        m.insert("row".into(), text.into());
        m.insert("outcome".into(), v.outcome.clone().into());
        let rk = row_key(&v.key);
        if self.waits.insert(PIM_PK, &rk, m).await? {
            return Ok(v.clone());
        }
        self.get(&v.key)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a PIM verdict vanished after its insert".into()))
    }

    async fn get(&self, key: &str) -> Result<Option<VerdictRecord>, StoreError> {
        match self.waits.get(PIM_PK, &row_key(key)).await? {
            None => Ok(None),
            Some(m) => m.get("row").and_then(Value::as_str).map(decode).transpose(),
        }
    }
}
