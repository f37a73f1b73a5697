//! The one job runner: policy → decision → Graph resume, with retries (exponential backoff with
//! jitter, at least `Retry-After`) until the callout's deadline, then a dead letter with the
//! reason.
//!
//! [`process`] is one attempt at a leased job and returns a [`Step`]; [`settle`] stores it
//! through the backend's [`Settle`] and then logs it. [`run_pool`] claims from any [`JobStore`]
//! (SQLite, or an Azure Storage queue shared by several processes); the Functions queue trigger
//! calls the same two functions with the host's delivery.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::approval::ApprovalStage;
use crate::bridge::{Bridge, BridgeStep};
use crate::directory::Directory;
use crate::graph::{GraphClient, GraphError, Resume, ResumeOutcome};
use crate::policy::{Action, DecideEnv, Decision, Mode, Policy};
use crate::queue::{Deadline, JobStore, Lease, Outcome, Settle, Step, Stored};
use crate::tickets::TicketSystem;

pub mod settings;
pub use settings::Settings;

pub struct WorkerCtx {
    /// `[policy]`, for callouts of no extension or of one without its own policy file.
    pub policy: Policy,
    /// Extension name → its own policy.
    pub extension_policies: std::collections::HashMap<String, Policy>,
    pub graph: Arc<GraphClient>,
    /// Where checks read directory facts (Graph in service, a world file offline).
    pub directory: Arc<dyn Directory>,
    pub tickets: Arc<dyn TicketSystem>,
    /// `policy.decision_timeout_seconds`.
    pub decision_timeout: Duration,
    pub cfg: Settings,
    /// The ServiceNow ticket bridge, when `[servicenow]` is configured and the host has a
    /// ticket ledger.
    pub bridge: Option<Arc<Bridge>>,
}

impl WorkerCtx {
    pub fn policy_for(&self, extension: Option<&str>) -> &Policy {
        extension
            .and_then(|e| self.extension_policies.get(e))
            .unwrap_or(&self.policy)
    }
}

/// Backoff before attempt `attempt + 1`: exponential, capped, with "equal jitter" (half fixed,
/// half random) so many failing jobs do not retry in lockstep.
pub fn backoff(cfg: &Settings, attempt: u32) -> Duration {
    let exp = cfg
        .retry_base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let cap = exp.min(cfg.retry_max);
    let half = cap / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter)
}

/// One attempt at a leased job.
pub async fn process(ctx: &WorkerCtx, lease: &Lease) -> Step {
    let msg = &lease.job;
    let (attempt, last_error) = (lease.attempt, lease.last_error.as_deref());
    let c = &msg.callout;
    let policy = ctx.policy_for(msg.extension.as_deref());
    // A stage instance with a ticket follows the ticket, not a new decision: the checks ran
    // when it was opened, and what the ticket says now decides. (A reservation still opening
    // goes through the decision, which renders the ticket's fields again.)
    if let Some(bridge) = &ctx.bridge {
        match bridge.ledger.get(c.stage_instance_id.as_str()).await {
            Ok(Some(row)) if row.phase != crate::queue::tickets::TicketPhase::Opening => {
                let spec = policy.ticket_spec(&row.spec);
                let step = bridge.follow(msg, attempt, row, None, spec).await;
                return bridged(ctx, msg, attempt, last_error, step).await;
            }
            Ok(_) => {}
            Err(e) => {
                return Step::RetryAt {
                    at: Deadline::in_(
                        backoff(&ctx.cfg, attempt).max(e.retry_after().unwrap_or_default()),
                    ),
                    reason: format!("the ticket ledger failed: {e}"),
                };
            }
        }
    }
    // The decision gets its own budget, and always leaves time for the resume itself.
    let decide_by =
        Deadline::in_(ctx.decision_timeout).min(msg.deadline.earlier_by(Duration::from_secs(2)));
    let env = DecideEnv {
        directory: ctx.directory.as_ref(),
        tickets: ctx.tickets.as_ref(),
        now: jiff::Timestamp::now(),
        deadline: decide_by.instant(),
    };
    let decision = policy.decide(c, &env).await;
    log_decision(&decision, attempt);
    let verdict = decision.action.word();
    // A check errored and the outcome hangs on it: decide again later, while time allows,
    // before the policy's on_error becomes final.
    if let Some(why) = &decision.incomplete
        && attempt < policy.check_attempts
        && c.expects_resume()
    {
        let at = Deadline::in_(backoff(&ctx.cfg, attempt));
        let latest = msg
            .deadline
            .earlier_by(ctx.decision_timeout + Duration::from_secs(2));
        if at < latest {
            return Step::RetryAt {
                at,
                reason: format!(
                    "checks errored ({why}); deciding again (attempt {attempt} of {})",
                    policy.check_attempts
                ),
            };
        }
    }
    if let Some(order) = &decision.ticket {
        let Some(bridge) = &ctx.bridge else {
            return Step::Dead(format!(
                "rule {:?} opens ticket {:?}, but ServiceNow bridging is not available on this host ([servicenow] and a ticket ledger are needed)",
                decision.rule.as_deref().unwrap_or(""),
                order.spec.name
            ));
        };
        let step = bridge.open(msg, attempt, order).await;
        return bridged(ctx, msg, attempt, last_error, step).await;
    }
    if !c.expects_resume() {
        tracing::info!(decision = verdict, rule = ?decision.rule, "notification only: this stage gets no resume");
        return Step::Done(Outcome::Notified {
            action: verdict.to_owned(),
            stage: c.stage.to_string(),
        });
    }
    resume(
        ctx,
        msg,
        attempt,
        last_error,
        decision.action == Action::Deny,
        &decision.detail,
        decision.approval.as_ref(),
    )
    .await
}

/// What the bridge said, as a step: resume now, or store its step.
async fn bridged(
    ctx: &WorkerCtx,
    msg: &crate::queue::JobMessage,
    attempt: u32,
    last_error: Option<&str>,
    step: BridgeStep,
) -> Step {
    match step {
        BridgeStep::Step(s) => s,
        BridgeStep::Resume { deny, detail } if msg.callout.expects_resume() => {
            resume(ctx, msg, attempt, last_error, deny, &detail, None).await
        }
        BridgeStep::Resume { deny, .. } => Step::Done(Outcome::Notified {
            action: if deny { "deny" } else { "continue" }.to_owned(),
            stage: msg.callout.stage.to_string(),
        }),
    }
}

/// Graph `resume` with continue or deny, retried under the deadline.
async fn resume(
    ctx: &WorkerCtx,
    msg: &crate::queue::JobMessage,
    attempt: u32,
    last_error: Option<&str>,
    deny: bool,
    detail: &str,
    approval: Option<&ApprovalStage>,
) -> Step {
    let c = &msg.callout;
    // Dynamic approval: a continue without an approval stage would send the request on with
    // no approvers, so it is a deny (the policy never decides one; this keeps it so).
    let deny = deny || (c.stage.is_approval() && approval.is_none());
    let verdict = if deny { "deny" } else { "continue" };
    if msg.deadline.has_passed() {
        return Step::Dead(format!(
            "deadline passed ({} s after receipt) before a resume was delivered; last error: {}",
            msg.deadline.unix_ms().saturating_sub(msg.received_at_ms) / 1000,
            last_error.unwrap_or("none (the job never ran)")
        ));
    }
    let resume = Resume {
        deny,
        detail,
        approval,
    };
    match ctx.graph.resume(c, &resume, msg.deadline).await {
        Ok(ResumeOutcome::Resumed) => {
            tracing::info!(decision = verdict, attempt, "resumed");
            Step::Done(Outcome::Resumed {
                action: verdict.to_owned(),
            })
        }
        Ok(ResumeOutcome::NotWaiting(why)) => {
            tracing::info!(%why, "request no longer waiting; nothing to resume");
            Step::Done(Outcome::NotWaiting { why })
        }
        Err(GraphError::DeadlinePassed) => Step::Dead(format!(
            "deadline reached before a resume could be delivered; last error: {}",
            last_error.unwrap_or("none")
        )),
        Err(e) if e.is_permanent() => Step::Dead(e.to_string()),
        Err(e) => {
            // Graph is paused (throttling) or its breaker is open: the job is due when calls may
            // go again, with no backoff of its own; the pool waits on the breaker and the pause
            // (not on this time) and takes it the moment the probe succeeds or the pause ends.
            // Otherwise (a failure while Graph mostly answers) the usual backoff.
            let delay = match ctx.graph.blocked_until() {
                Some(until) => until.saturating_duration_since(std::time::Instant::now()),
                None => backoff(&ctx.cfg, attempt).max(e.retry_after().unwrap_or_default()),
            };
            let at = Deadline::in_(delay);
            if at >= msg.deadline {
                // One last try just before the deadline rather than giving up early.
                let last = msg.deadline.earlier_by(Duration::from_secs(1));
                if !last.has_passed() {
                    return Step::RetryAt {
                        at: last,
                        reason: e.to_string(),
                    };
                }
                return Step::Dead(format!("deadline reached while retrying; last error: {e}"));
            }
            Step::RetryAt {
                at,
                reason: e.to_string(),
            }
        }
    }
}

/// Every check's outcome and the decision, in the job's span (so with its correlation id).
fn log_decision(d: &Decision, attempt: u32) {
    for o in &d.outcomes {
        tracing::info!(
            check = %o.check,
            kind = %o.kind,
            verdict = o.finding.verdict.word(),
            reason = o.finding.verdict.reason().unwrap_or(""),
            elapsed_ms = o.elapsed_ms,
            "check"
        );
        for line in &o.finding.explanation {
            tracing::debug!(check = %o.check, "{line}");
        }
    }
    let audit = d.mode == Mode::Audit;
    tracing::info!(
        decision = d.action.word(),
        rule = d.rule.as_deref().unwrap_or(""),
        audit,
        can_deny = d.can_deny,
        graph_calls = d.graph_calls,
        incomplete = d.incomplete.as_deref().unwrap_or(""),
        attempt,
        detail = %d.detail,
        approval = d.approval.as_ref().map_or("", |a| a.name.as_str()),
        approvers = %d.approval.as_ref().map(|a| ApprovalStage::describe(&a.primary)).unwrap_or_default(),
        "decided"
    );
}

/// The span every attempt runs in, so each log line carries the job's correlation.
pub fn job_span(lease: &Lease) -> tracing::Span {
    let c = &lease.job.callout;
    tracing::info_span!(
        "job",
        correlation_id = %lease.job.correlation_id,
        request_id = %c.request_id,
        stage = %c.stage,
        stage_instance_id = %c.stage_instance_id,
        attempt = lease.attempt,
        woken_by = lease.woken_by.map(|w| match w {
            crate::queue::WokenBy::Event => "event",
            crate::queue::WokenBy::Timer => "timer",
        }),
    )
}

/// Stores an attempt's outcome through the backend, then logs it: a log line that says "dead
/// letter" must be true when read.
pub async fn settle(store: &dyn Settle, lease: &Lease, step: &Step) {
    let stored = match step {
        Step::Done(o) => store.complete(lease, o).await,
        Step::RetryAt { at, reason } => store.retry_at(lease, *at, reason).await,
        Step::Dead(reason) => store.dead(lease, reason).await,
        Step::Wait(w) => store.wait(lease, w).await,
    };
    log_step(step);
    match stored {
        Ok(Stored::Yes) => {}
        Ok(Stored::LeaseLost) => tracing::warn!("lease was lost before the outcome was stored"),
        Err(e) => {
            tracing::error!(error = %e, "cannot store job outcome; the lease will expire and it will run again")
        }
    }
}

/// Logs an attempt's outcome (after it is stored).
fn log_step(step: &Step) {
    match step {
        Step::Done(_) => {}
        Step::RetryAt { at, reason } => {
            tracing::warn!(reason = %reason, retry_in_ms = at.remaining().as_millis() as u64, "attempt failed; will retry");
        }
        Step::Dead(reason) => tracing::error!(reason = %reason, "job moved to dead letters"),
        Step::Wait(w) => tracing::info!(
            until = %w.until,
            key = w.key.as_ref().map(|k| k.as_str()),
            reason = %w.reason,
            "job parked"
        ),
    }
}

/// The worker pool: `concurrency` tasks claiming from the store until cancelled. A job in flight
/// at shutdown finishes its attempt; its lease protects it if the process dies.
///
/// An idle task sleeps for the poll interval, but wakes at once when the store signals new work
/// (an enqueue in this process) or when Graph becomes callable again. While Graph calls are
/// held back (throttling pause, open circuit breaker) no task claims: a claimed job could only
/// be put back. A backend whose polls are billed (Azure Storage) is polled less and less often
/// while empty, up to 2 s or the poll interval if larger; work resets it.
pub async fn run_pool(ctx: Arc<WorkerCtx>, store: Arc<dyn JobStore>, cancel: CancellationToken) {
    let mut tasks = Vec::new();
    let signal = store.work_signal();
    for n in 0..ctx.cfg.concurrency {
        let (ctx, store, cancel, signal) =
            (ctx.clone(), store.clone(), cancel.clone(), signal.clone());
        tasks.push(tokio::spawn(async move {
            let idle_cap = if store.billed_polls() {
                ctx.cfg.poll_interval.max(Duration::from_secs(2))
            } else {
                ctx.cfg.poll_interval
            };
            let mut idle = ctx.cfg.poll_interval;
            while !cancel.is_cancelled() {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = ctx.graph.callable() => {}
                }
                let pause = match store.claim(ctx.cfg.lease).await {
                    Ok(Some(lease)) => {
                        idle = ctx.cfg.poll_interval;
                        let span = job_span(&lease);
                        async {
                            let step = process(&ctx, &lease).await;
                            settle(store.as_ref(), &lease, &step).await;
                        }
                        .instrument(span)
                        .await;
                        continue;
                    }
                    Ok(None) => {
                        let p = idle;
                        idle = (idle * 2).min(idle_cap);
                        Idle::Empty(p)
                    }
                    Err(e) => {
                        tracing::error!(worker = n, backend = store.backend(), error = %e, "cannot claim jobs");
                        Idle::Failed(e.retry_after().unwrap_or(Duration::from_secs(1)))
                    }
                };
                match pause {
                    Idle::Empty(p) => {
                        let mut graph = ctx.graph.subscribe();
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(p) => {}
                            // A job enqueued here: go now (the poll stays for other sources).
                            _ = async {
                                match &signal {
                                    Some(s) => s.notified().await,
                                    None => std::future::pending().await,
                                }
                            } => idle = ctx.cfg.poll_interval,
                            // The breaker changed: jobs due but held back may go.
                            _ = graph.changed() => {}
                        }
                    }
                    Idle::Failed(p) => {
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(p) => {}
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Why a pool task sleeps.
enum Idle {
    /// The store had nothing due: until the poll interval, new work or a breaker change.
    Empty(Duration),
    /// The store failed: a fixed pause.
    Failed(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Settings {
        Settings {
            concurrency: 1,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            deadline_margin: Duration::from_secs(1),
            default_callback_timeout: Duration::from_secs(60),
            lease: Duration::from_secs(10),
            poll_interval: Duration::from_millis(10),
        }
    }

    #[test]
    fn backoff_grows_and_is_capped_with_jitter() {
        let c = cfg();
        for attempt in 1..40 {
            let d = backoff(&c, attempt);
            let cap = c
                .retry_base
                .saturating_mul(1 << (attempt - 1).min(20))
                .min(c.retry_max);
            assert!(
                d >= cap / 2 && d <= cap,
                "attempt {attempt}: {d:?} vs cap {cap:?}"
            );
        }
    }
}
