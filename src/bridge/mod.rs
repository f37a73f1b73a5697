//! The ServiceNow ticket bridge, worker side: open exactly one ticket per stage instance, park
//! the job until the ticket closes (or the callout's deadline comes), then say how to resume.
//!
//! Exactly one ticket: the stage instance is reserved in the [`TicketLedger`] (insert if
//! absent) before anything is created; the holder looks the ticket up by its link
//! (`accessgate:<stageInstanceId>` in `correlation_id`) before it creates one, so a crash
//! between ServiceNow's create and our record finds the ticket instead of opening another; the
//! ticket is recorded before the job parks. A reservation left by a crashed attempt is taken
//! over (under its owner token) once it is stale.
//!
//! The close is read from ServiceNow itself (the webhook and the poll only wake the job), and
//! the outcome is recorded once: later edits of a closed ticket change nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::callout::Callout;
use crate::policy::ticket::{Create, TicketOrder, TicketSpec};
use crate::policy::{Action, MAX_DETAIL_CHARS};
use crate::queue::tickets::{ClosedAs, Reserve, TicketLedger, TicketPhase, TicketRow, owner_token};
use crate::queue::{Deadline, JobMessage, Outcome, Step, Wait, WaitKey};
use crate::tickets::servicenow::ServiceNow;
use crate::tickets::{TicketError, TicketRecord};

pub mod poll;
pub mod webhook;

pub use crate::tickets::servicenow::BridgeSettings as Settings;

/// A reservation older than this, still without a ticket, belonged to an attempt that died.
const STALE_RESERVATION: Duration = Duration::from_secs(30);
/// Budget of one ServiceNow call from the worker.
const CALL_BUDGET: Duration = Duration::from_secs(30);

/// What the worker needs to bridge.
pub struct Bridge {
    pub servicenow: Arc<ServiceNow>,
    pub ledger: Arc<dyn TicketLedger>,
    pub settings: Settings,
    /// Every policy's `[tickets.NAME]`, for a waiting ticket read without a decision.
    pub specs: std::collections::HashMap<String, Arc<TicketSpec>>,
    /// The webhook verifier's memory.
    pub webhook: webhook::Webhook,
    /// The ledger is this process's alone (SQLite, behind the data-directory lock): a
    /// reservation of an earlier process is stale at once.
    pub single_process: bool,
}

/// What an attempt at a bridged job came to.
#[derive(Debug)]
pub enum BridgeStep {
    /// Resume Entra now with this.
    Resume { deny: bool, detail: String },
    /// Store this step (park, retry, done, dead).
    Step(Step),
}

/// The wait key a ticket's job parks on.
pub fn wait_key(sys_id: &str) -> Option<WaitKey> {
    WaitKey::parse(&format!("snow:{sys_id}")).ok()
}

/// The link value of a stage instance.
pub fn link(c: &Callout) -> String {
    format!("accessgate:{}", c.stage_instance_id)
}

fn call_deadline(job_deadline: Deadline) -> Instant {
    // Past the job's deadline only the expiry note is written; give it a short budget.
    let left = job_deadline.remaining().max(Duration::from_secs(10));
    Instant::now() + left.min(CALL_BUDGET)
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Fields read from a ticket.
fn read_fields(spec_link: &str) -> Vec<String> {
    ["number", "state", "active", "close_notes", spec_link]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

fn step_reason(step: &BridgeStep) -> &str {
    match step {
        BridgeStep::Step(Step::RetryAt { reason, .. } | Step::Dead(reason)) => reason,
        _ => "",
    }
}

impl Bridge {
    /// A failed ServiceNow call: retried with backoff while the deadline allows; a permanent
    /// refusal (a missing table, a rejected field) is a dead letter with the reason.
    fn failed(&self, msg: &JobMessage, attempt: u32, what: &str, e: &TicketError) -> BridgeStep {
        let reason = format!("{what}: {e}");
        // A garbled answer is not permanent here: every attempt looks the ticket up by its link
        // first, so trying again cannot open a second one, and the deadline bounds it.
        if e.is_permanent() && !matches!(e, TicketError::Malformed(_)) {
            return BridgeStep::Step(Step::Dead(reason));
        }
        let wait = self
            .settings
            .backoff(attempt)
            .max(e.retry_after().unwrap_or_default());
        let at = Deadline::in_(wait);
        if at >= msg.deadline {
            return BridgeStep::Step(Step::Dead(format!(
                "deadline reached while ServiceNow failed; last error: {reason}"
            )));
        }
        BridgeStep::Step(Step::RetryAt { at, reason })
    }

    /// First attempt for a decision that opens a ticket.
    pub async fn open(&self, msg: &JobMessage, attempt: u32, order: &TicketOrder) -> BridgeStep {
        let c = &msg.callout;
        let now = Deadline::from_unix_ms(crate::queue::now_ms());
        let row = TicketRow {
            stage_instance_id: c.stage_instance_id.to_string(),
            request_id: c.request_id.to_string(),
            stage: c.stage.to_string(),
            correlation_id: msg.correlation_id.clone(),
            spec: order.spec.name.clone(),
            table: order.spec.table.clone(),
            link: link(c),
            sys_id: None,
            number: None,
            ordered: None,
            phase: TicketPhase::Opening,
            owner: owner_token(),
            reserved_at: now,
            updated_at: now,
            deadline: msg.deadline,
            reminded: false,
            closed: None,
            note: "reserved; looking the ticket up before creating it".into(),
        };
        let row = match self.ledger.reserve(&row).await {
            Ok(Reserve::Mine) => row,
            Ok(Reserve::Existing(existing)) => {
                return Box::pin(self.follow(msg, attempt, *existing, Some(order), None)).await;
            }
            Err(e) => return self.store_failed(msg, attempt, &e),
        };
        self.create_or_find(msg, attempt, row, order, true).await
    }

    fn store_failed(
        &self,
        msg: &JobMessage,
        attempt: u32,
        e: &crate::queue::StoreError,
    ) -> BridgeStep {
        let at = Deadline::in_(
            self.settings
                .backoff(attempt)
                .max(e.retry_after().unwrap_or_default()),
        );
        let reason = format!("the ticket ledger failed: {e}");
        if at >= msg.deadline {
            return BridgeStep::Step(Step::Dead(reason));
        }
        BridgeStep::Step(Step::RetryAt { at, reason })
    }

    /// Holding the reservation: find the ticket by its link, or create it; record it. An
    /// attempt that fails before the ticket is recorded releases the reservation, so its own
    /// retry (or a duplicate delivery) takes it over at once instead of waiting for it to go
    /// stale; the lookup by link first keeps that to one ticket. `fresh`: this attempt made the
    /// reservation (no earlier attempt can have written anything).
    async fn create_or_find(
        &self,
        msg: &JobMessage,
        attempt: u32,
        row: TicketRow,
        order: &TicketOrder,
        fresh: bool,
    ) -> BridgeStep {
        let owner = row.owner.clone();
        let sid = row.stage_instance_id.clone();
        let step = self.create_or_record(msg, attempt, row, order, fresh).await;
        if matches!(step, BridgeStep::Step(Step::RetryAt { .. } | Step::Dead(_)))
            && let Ok(Some(mut now)) = self.ledger.get(&sid).await
            && now.phase == TicketPhase::Opening
            && now.owner == owner
        {
            now.owner = crate::queue::tickets::RELEASED.to_owned();
            now.touch(format!(
                "released after a failed attempt: {}",
                step_reason(&step)
            ));
            if let Err(e) = self.ledger.take_over(&now, &owner).await {
                tracing::warn!(error = %e, "cannot release the ticket reservation; it goes stale instead");
            }
        }
        step
    }

    async fn create_or_record(
        &self,
        msg: &JobMessage,
        attempt: u32,
        mut row: TicketRow,
        order: &TicketOrder,
        fresh: bool,
    ) -> BridgeStep {
        let spec = &order.spec;
        let by = call_deadline(msg.deadline);
        let fields = read_fields(&spec.link_field);
        let found = match self
            .servicenow
            .find_linked(&spec.table, &spec.link_field, &row.link, &fields, by)
            .await
        {
            Ok(f) => f,
            Err(e) => return self.failed(msg, attempt, "looking the ticket up", &e),
        };
        let record = match found.into_iter().next() {
            Some(r) => {
                tracing::info!(link = %row.link, "ticket already exists in ServiceNow; recording it instead of creating another");
                r
            }
            None => match self.create(msg, attempt, &mut row, order, by, fresh).await {
                Ok(r) => r,
                Err(step) => return step,
            },
        };
        let Some(sys_id) = record.field("sys_id").map(|f| f.value) else {
            return BridgeStep::Step(Step::Dead(
                "ServiceNow answered the create without a sys_id".into(),
            ));
        };
        let number = record
            .field("number")
            .map(|f| f.value)
            .unwrap_or_else(|| sys_id.clone());
        row.sys_id = Some(sys_id);
        row.number = Some(number.clone());
        let waits = spec.waits_at(msg.callout.stage) && msg.callout.expects_resume();
        row.phase = if waits {
            TicketPhase::Open
        } else {
            TicketPhase::Opened
        };
        row.touch(format!("opened {number} in {}", spec.table));
        if let Err(e) = self.ledger.save(&row).await {
            // The ticket exists and is linked: the next attempt finds it by its link.
            return self.store_failed(msg, attempt, &e);
        }
        tracing::info!(ticket = %number, table = %spec.table, waits, "ticket opened");
        if !waits {
            if msg.callout.expects_resume() {
                return BridgeStep::Resume {
                    deny: false,
                    detail: cut(
                        &format!("accessgate opened ServiceNow {number} for this request."),
                        MAX_DETAIL_CHARS,
                    ),
                };
            }
            return BridgeStep::Step(Step::Done(Outcome::Notified {
                action: format!("ticket {number} opened"),
                stage: msg.callout.stage.to_string(),
            }));
        }
        self.judge(msg, attempt, row, Some(spec.clone()), Some(record))
            .await
    }

    /// The REQ of an earlier attempt's order whose answer was lost (so it was never recorded):
    /// an unlinked item of this catalog item for this user, ordered since the reservation (2
    /// min of clock skew allowed).
    async fn earlier_order(
        &self,
        msg: &JobMessage,
        attempt: u32,
        row: &TicketRow,
        order: &TicketOrder,
        item: &str,
        by: Instant,
    ) -> Result<Option<String>, BridgeStep> {
        let since = row.reserved_at.unix_ms() - 120_000;
        let found = self
            .servicenow
            .find_unlinked_items(
                item,
                &order.spec.link_field,
                order.requested_for.as_deref(),
                since,
                &["request".to_owned()],
                by,
            )
            .await
            .map_err(|e| self.failed(msg, attempt, "looking for an earlier order", &e))?;
        let req = found
            .first()
            .and_then(|r| r.field("request"))
            .map(|f| f.value)
            .filter(|r| !r.is_empty());
        if let Some(req) = &req {
            tracing::info!(request = %req, "an earlier attempt's order was found; linking it instead of ordering again");
        }
        Ok(req)
    }

    /// Creates the record (table insert, or catalog order then the link on its RITM).
    async fn create(
        &self,
        msg: &JobMessage,
        attempt: u32,
        row: &mut TicketRow,
        order: &TicketOrder,
        by: Instant,
        fresh: bool,
    ) -> Result<TicketRecord, BridgeStep> {
        let spec = &order.spec;
        let mut fields = order.fields.clone();
        fields.insert(spec.link_field.clone(), row.link.clone().into());
        match &spec.create {
            Create::Table => self
                .servicenow
                .create(&spec.table, &fields, by)
                .await
                .map_err(|e| self.failed(msg, attempt, "creating the ticket", &e)),
            Create::CatalogItem { item, .. } => {
                // order_now cannot set the item's fields; the REQ is recorded first, so a crash
                // before the RITM gets its link does not order a second one.
                if row.ordered.is_none() && !fresh {
                    row.ordered = self
                        .earlier_order(msg, attempt, row, order, item, by)
                        .await?;
                }
                let req = match &row.ordered {
                    Some(req) => req.clone(),
                    None => {
                        let (req, number) = self
                            .servicenow
                            .order_now(item, order.requested_for.as_deref(), &order.variables, by)
                            .await
                            .map_err(|e| {
                                self.failed(msg, attempt, "ordering the catalog item", &e)
                            })?;
                        row.ordered = Some(req.clone());
                        row.touch(format!("ordered {number}; linking its item"));
                        self.ledger
                            .save(row)
                            .await
                            .map_err(|e| self.store_failed(msg, attempt, &e))?;
                        req
                    }
                };
                let items = self
                    .servicenow
                    .find_linked(
                        "sc_req_item",
                        "request",
                        &req,
                        // `request` too: the answer is checked against the value asked for.
                        &[read_fields(&spec.link_field), vec!["request".to_owned()]].concat(),
                        by,
                    )
                    .await
                    .map_err(|e| self.failed(msg, attempt, "finding the ordered item", &e))?;
                let Some(item) = items.into_iter().next() else {
                    return Err(self.failed(
                        msg,
                        attempt,
                        "finding the ordered item",
                        &TicketError::Unavailable(format!("request {req} has no sc_req_item yet")),
                    ));
                };
                let sys_id = item.field("sys_id").map(|f| f.value).unwrap_or_default();
                match self
                    .servicenow
                    .update("sc_req_item", &sys_id, &fields, by)
                    .await
                {
                    Ok(true) => Ok(item),
                    Ok(false) => Err(self.failed(
                        msg,
                        attempt,
                        "linking the ordered item",
                        &TicketError::Unavailable(format!("item {sys_id} disappeared")),
                    )),
                    Err(e) => Err(self.failed(msg, attempt, "linking the ordered item", &e)),
                }
            }
        }
    }

    /// An attempt for a stage instance the ledger already has a row for.
    pub async fn follow(
        &self,
        msg: &JobMessage,
        attempt: u32,
        row: TicketRow,
        order: Option<&TicketOrder>,
        spec: Option<Arc<TicketSpec>>,
    ) -> BridgeStep {
        match row.phase {
            TicketPhase::Closed | TicketPhase::Deleted => match &row.closed {
                Some(cl) => BridgeStep::Resume {
                    deny: cl.deny,
                    detail: cl.detail.clone(),
                },
                None => BridgeStep::Step(Step::Dead(
                    "the ticket ledger says closed but holds no outcome".into(),
                )),
            },
            TicketPhase::Expired => BridgeStep::Step(Step::Done(Outcome::Expired {
                why: row.note.clone(),
            })),
            TicketPhase::Opened => BridgeStep::Step(Step::Done(Outcome::Notified {
                action: format!(
                    "ticket {} opened",
                    row.number.as_deref().unwrap_or("(unknown)")
                ),
                stage: row.stage.clone(),
            })),
            TicketPhase::Opening => {
                let stale = row.owner == crate::queue::tickets::RELEASED
                    || row.updated_at.later_by(STALE_RESERVATION).has_passed()
                    || (self.single_process
                        && !crate::queue::tickets::owned_by_this_process(&row.owner));
                let Some(order) = order.filter(|_| stale) else {
                    if stale {
                        // A restart lost the rendered fields: decide again to render them.
                        return BridgeStep::Step(Step::RetryAt {
                            at: Deadline::in_(Duration::from_millis(100)),
                            reason: "a stale ticket reservation; deciding again to open it".into(),
                        });
                    }
                    let at = row.updated_at.later_by(STALE_RESERVATION);
                    return BridgeStep::Step(Step::RetryAt {
                        at: at.min(Deadline::in_(Duration::from_secs(2))),
                        reason: "another attempt is opening this ticket".into(),
                    });
                };
                let mut mine = row.clone();
                mine.owner = owner_token();
                mine.touch("took over a stale reservation");
                match self.ledger.take_over(&mine, &row.owner).await {
                    Ok(true) => self.create_or_find(msg, attempt, mine, order, false).await,
                    Ok(false) => BridgeStep::Step(Step::RetryAt {
                        at: Deadline::in_(Duration::from_secs(1)),
                        reason: "another attempt took the ticket reservation over first".into(),
                    }),
                    Err(e) => self.store_failed(msg, attempt, &e),
                }
            }
            TicketPhase::Open => {
                let spec = order
                    .map(|o| o.spec.clone())
                    .or(spec)
                    .or_else(|| self.specs.get(&row.spec).cloned());
                self.judge(msg, attempt, row, spec, None).await
            }
        }
    }

    /// An open ticket: read it (unless just read), then resume, remind, expire or park.
    pub async fn judge(
        &self,
        msg: &JobMessage,
        attempt: u32,
        mut row: TicketRow,
        spec: Option<Arc<TicketSpec>>,
        fresh: Option<TicketRecord>,
    ) -> BridgeStep {
        let spec = spec.unwrap_or_else(|| Arc::new(TicketSpec::defaults_for(&row.table)));
        let number = row.number.clone().unwrap_or_default();
        let Some(sys_id) = row.sys_id.clone() else {
            return BridgeStep::Step(Step::Dead("an open ticket row without a sys_id".into()));
        };
        let by = call_deadline(msg.deadline);
        let record = match fresh {
            Some(r) => Some(r),
            None => match self
                .servicenow
                .read(&row.table, &sys_id, &read_fields(&spec.link_field), by)
                .await
            {
                Ok(r) => r,
                Err(e) if msg.deadline.has_passed() => {
                    return self
                        .expire(msg, &mut row, &format!(" (ServiceNow unreadable: {e})"))
                        .await;
                }
                Err(e) => return self.failed(msg, attempt, "reading the ticket", &e),
            },
        };
        let can_deny = msg.callout.stage.can_deny();
        let Some(record) = record else {
            let deny = spec.on_deleted == Action::Deny && can_deny;
            let detail = format!(
                "ServiceNow {number} was deleted before it closed; by policy the request is {}.",
                if deny { "denied" } else { "continued" }
            );
            return self
                .close(
                    msg,
                    attempt,
                    row,
                    TicketPhase::Deleted,
                    "deleted",
                    deny,
                    detail,
                )
                .await;
        };
        let state = record.field("state");
        let (value, display) = match &state {
            Some(s) => (s.value.clone(), s.display.clone()),
            None => (String::new(), None),
        };
        let shown = display.clone().unwrap_or_else(|| value.clone());
        let notes = record
            .field("close_notes")
            .map(|f| f.value)
            .unwrap_or_default();
        let notes = if notes.trim().is_empty() {
            String::new()
        } else {
            format!(": {}", notes.trim())
        };
        let inactive = record
            .field("active")
            .is_some_and(|a| a.value.eq_ignore_ascii_case("false"));
        let state_label = format!(
            "{value}{}",
            display
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        );
        if TicketSpec::state_in(&spec.continue_states, &value, display.as_deref()) {
            let detail = format!("ServiceNow {number} closed ({shown}){notes}");
            return self
                .close(
                    msg,
                    attempt,
                    row,
                    TicketPhase::Closed,
                    &state_label,
                    false,
                    detail,
                )
                .await;
        }
        let denied_state = TicketSpec::state_in(&spec.deny_states, &value, display.as_deref());
        if denied_state || inactive {
            let why = if denied_state {
                String::new()
            } else {
                format!(" (state {shown} is in neither continue_states nor deny_states)")
            };
            let (deny, detail) = if can_deny {
                (
                    true,
                    format!(
                        "ServiceNow {number} closed ({shown}){why}; the request is denied{notes}"
                    ),
                )
            } else {
                (
                    false,
                    format!(
                        "ServiceNow {number} closed ({shown}){why}; Entra cannot deny at {}, so the request continues{notes}",
                        msg.callout.stage
                    ),
                )
            };
            return self
                .close(
                    msg,
                    attempt,
                    row,
                    TicketPhase::Closed,
                    &state_label,
                    deny,
                    detail,
                )
                .await;
        }
        // Still open.
        if msg.deadline.has_passed() {
            return self.expire(msg, &mut row, "").await;
        }
        let reminder_at = spec.reminder_before.map(|d| msg.deadline.earlier_by(d));
        if let Some(at) = reminder_at
            && !row.reminded
            && at.has_passed()
        {
            let note = format!(
                "accessgate: Entra stops waiting for this ticket at {} (the access request then fails). Close it before then.",
                msg.deadline
            );
            match self.work_note(&row, &note, by).await {
                Ok(()) => {
                    row.reminded = true;
                    row.touch("reminder work note added");
                    if let Err(e) = self.ledger.save(&row).await {
                        return self.store_failed(msg, attempt, &e);
                    }
                    tracing::info!(ticket = %number, "reminder work note added");
                }
                Err(e) => return self.failed(msg, attempt, "adding the reminder work note", &e),
            }
        }
        let until = match reminder_at {
            Some(at) if !row.reminded => at,
            _ => msg.deadline,
        };
        let Some(key) = wait_key(&sys_id) else {
            return BridgeStep::Step(Step::Dead(format!("sys_id {sys_id} cannot be a wait key")));
        };
        BridgeStep::Step(Step::Wait(Wait::new(
            until,
            Some(key),
            format!("ServiceNow {number} is open ({shown}); waiting for it to close"),
            msg.deadline,
        )))
    }

    #[allow(clippy::too_many_arguments)]
    async fn close(
        &self,
        msg: &JobMessage,
        attempt: u32,
        mut row: TicketRow,
        phase: TicketPhase,
        state: &str,
        deny: bool,
        detail: String,
    ) -> BridgeStep {
        let detail = cut(&detail, MAX_DETAIL_CHARS);
        row.phase = phase;
        row.closed = Some(ClosedAs {
            state: state.to_owned(),
            deny,
            detail: detail.clone(),
            at: Deadline::from_unix_ms(crate::queue::now_ms()),
        });
        row.touch(format!(
            "{} ({state}); resuming with {}",
            if phase == TicketPhase::Deleted {
                "deleted"
            } else {
                "closed"
            },
            if deny { "deny" } else { "continue" }
        ));
        if let Err(e) = self.ledger.save(&row).await {
            return self.store_failed(msg, attempt, &e);
        }
        tracing::info!(
            ticket = row.number.as_deref().unwrap_or(""),
            state,
            deny,
            "ticket closed"
        );
        BridgeStep::Resume { deny, detail }
    }

    /// The deadline passed with the ticket open: say so on the ticket, record, never resume.
    async fn expire(&self, msg: &JobMessage, row: &mut TicketRow, extra: &str) -> BridgeStep {
        let note = format!(
            "accessgate: the Entra access request expired at {} while this ticket was open; Entra no longer waits (the requestor sees \"assignment failed\"). Nothing will be resumed.",
            msg.deadline
        );
        let noted = self
            .work_note(row, &note, Instant::now() + Duration::from_secs(10))
            .await;
        let why = format!(
            "the callout's deadline passed while ServiceNow {} was open{extra}{}",
            row.number.as_deref().unwrap_or(""),
            match &noted {
                Ok(()) => "; expiry work note added".to_owned(),
                Err(e) => format!("; the expiry work note failed: {e}"),
            }
        );
        row.phase = TicketPhase::Expired;
        row.touch(why.clone());
        if let Err(e) = self.ledger.save(row).await {
            tracing::error!(error = %e, "cannot record the expired ticket");
        }
        tracing::warn!(ticket = row.number.as_deref().unwrap_or(""), "{why}");
        BridgeStep::Step(Step::Done(Outcome::Expired { why }))
    }

    async fn work_note(&self, row: &TicketRow, note: &str, by: Instant) -> Result<(), TicketError> {
        let Some(sys_id) = &row.sys_id else {
            return Ok(());
        };
        let mut f = serde_json::Map::new();
        f.insert("work_notes".into(), note.into());
        match self.servicenow.update(&row.table, sys_id, &f, by).await? {
            true => Ok(()),
            false => Err(TicketError::Refused("the ticket no longer exists".into())),
        }
    }
}
