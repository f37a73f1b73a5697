//! The poll: the fallback for lost webhooks. Open bridged tickets are read in batches (one
//! Table API call of `sys_idIN…` per batch, at most `servicenow.poll_calls_per_minute`), and
//! the job of each one that closed or disappeared is woken to read it and resume. Standalone,
//! a task runs it every `servicenow.poll_interval_seconds`; under Functions a timer trigger
//! runs one round.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Bridge, wait_key};
use crate::policy::ticket::TicketSpec;
use crate::queue::JobStore;
use crate::queue::tickets::TicketRow;

/// Open tickets looked at per round (the rest wait for the next round).
const MAX_PER_ROUND: usize = 10_000;

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Round {
    pub open: usize,
    pub calls: usize,
    pub closed: usize,
    pub missing: usize,
    pub woken: usize,
    /// Batches left for the next round by the per-minute bound.
    pub deferred: usize,
    pub errors: Vec<String>,
}

/// The per-minute bound on Table API calls, shared across rounds.
pub struct Budget {
    per_minute: u32,
    calls: std::sync::Mutex<std::collections::VecDeque<Instant>>,
}

impl Budget {
    pub fn new(per_minute: u32) -> Budget {
        Budget {
            per_minute,
            calls: std::sync::Mutex::default(),
        }
    }

    fn take(&self) -> bool {
        let mut g = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        while g
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            g.pop_front();
        }
        if g.len() >= self.per_minute as usize {
            return false;
        }
        g.push_back(now);
        true
    }
}

/// Whether a read record means the job should look again (closed in the spec's terms, or
/// inactive).
fn looks_closed(spec: Option<&TicketSpec>, rec: &crate::tickets::TicketRecord) -> bool {
    if rec
        .field("active")
        .is_some_and(|a| a.value.eq_ignore_ascii_case("false"))
    {
        return true;
    }
    let Some(state) = rec.field("state") else {
        return false;
    };
    spec.is_some_and(|s| {
        TicketSpec::state_in(&s.continue_states, &state.value, state.display.as_deref())
            || TicketSpec::state_in(&s.deny_states, &state.value, state.display.as_deref())
    })
}

/// One round over the open tickets.
pub async fn round(bridge: &Bridge, store: &dyn JobStore, budget: &Budget) -> Round {
    let mut out = Round::default();
    let rows = match bridge.ledger.list(true, MAX_PER_ROUND).await {
        Ok(r) => r,
        Err(e) => {
            out.errors.push(format!("listing open tickets: {e}"));
            return out;
        }
    };
    out.open = rows.len();
    let mut by_table: BTreeMap<String, Vec<TicketRow>> = BTreeMap::new();
    for r in rows.into_iter().filter(|r| r.sys_id.is_some()) {
        by_table.entry(r.table.clone()).or_default().push(r);
    }
    for (table, rows) in by_table {
        for chunk in rows.chunks(bridge.settings.poll_batch.max(1)) {
            if !budget.take() {
                out.deferred += 1;
                continue;
            }
            out.calls += 1;
            let ids: Vec<String> = chunk.iter().filter_map(|r| r.sys_id.clone()).collect();
            let fields = vec!["number".to_owned(), "state".to_owned(), "active".to_owned()];
            let by = Instant::now() + Duration::from_secs(30);
            let records = match bridge.servicenow.read_many(&table, &ids, &fields, by).await {
                Ok(r) => r,
                Err(e) => {
                    out.errors.push(format!("reading {table}: {e}"));
                    continue;
                }
            };
            for row in chunk {
                let Some(sys_id) = row.sys_id.as_deref() else {
                    continue;
                };
                let rec = records
                    .iter()
                    .find(|r| r.field("sys_id").is_some_and(|f| f.value == sys_id));
                let wake = match rec {
                    None => {
                        out.missing += 1;
                        true
                    }
                    Some(rec) => {
                        let spec = bridge.specs.get(&row.spec).map(|s| s.as_ref());
                        let closed = looks_closed(spec, rec);
                        out.closed += usize::from(closed);
                        closed
                    }
                };
                if !wake {
                    continue;
                }
                let Some(key) = wait_key(sys_id) else {
                    continue;
                };
                match store.wake(&key).await {
                    Ok(n) => out.woken += n,
                    Err(e) => out.errors.push(format!("waking {sys_id}: {e}")),
                }
            }
        }
    }
    out
}

/// Standalone: a round every `poll_interval` (with jitter), backing off to ten intervals while
/// rounds fail, until cancelled.
pub async fn run(
    bridge: std::sync::Arc<Bridge>,
    store: std::sync::Arc<dyn JobStore>,
    cancel: CancellationToken,
) {
    let Some(every) = bridge.settings.poll_interval else {
        return;
    };
    let budget = Budget::new(bridge.settings.poll_calls_per_minute);
    let mut pause = every;
    loop {
        use rand::Rng as _;
        let jitter =
            Duration::from_millis(rand::rng().random_range(0..=pause.as_millis() as u64 / 10));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause + jitter) => {}
        }
        let r = round(&bridge, store.as_ref(), &budget).await;
        if r.errors.is_empty() {
            pause = every;
        } else {
            pause = (pause * 2).min(every * 10);
        }
        if r.woken > 0 || !r.errors.is_empty() || r.deferred > 0 {
            tracing::info!(
                open = r.open,
                calls = r.calls,
                closed = r.closed,
                missing = r.missing,
                woken = r.woken,
                deferred = r.deferred,
                errors = %r.errors.join("; "),
                next_in_s = pause.as_secs(),
                "servicenow poll"
            );
        }
    }
}
