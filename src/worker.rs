//! Runs jobs: policy → decision → Graph resume, with retries (exponential backoff with jitter,
//! at least `Retry-After`) until the callout's deadline, then a dead letter with the reason.
//!
//! [`process`] is one attempt and is shared by the standalone pool ([`run_pool`]) and the
//! Functions queue trigger.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::directory::Directory;
use crate::graph::{GraphClient, GraphError, ResumeOutcome};
use crate::policy::{DecideEnv, Decision, Mode, Policy};
use crate::queue::azure::QueueError;
use crate::queue::azure_backend::{AzureJobs, Delivery};
use crate::queue::sqlite::SqliteQueue;
use crate::queue::{JobMessage, now_ms};
use crate::tickets::TicketSystem;

pub mod settings;
pub use settings::Settings;

/// What one attempt at a job came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Done(String),
    RetryAt { at_ms: i64, reason: String },
    Dead(String),
}

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

/// One attempt at a job.
pub async fn process(
    ctx: &WorkerCtx,
    msg: &JobMessage,
    attempt: u32,
    last_error: Option<&str>,
) -> Step {
    let c = &msg.callout;
    let policy = ctx.policy_for(msg.extension.as_deref());
    let started = now_ms();
    // The decision gets its own budget, and always leaves time for the resume itself.
    let budget_ms = i64::try_from(ctx.decision_timeout.as_millis()).unwrap_or(i64::MAX);
    let decide_by_ms = started
        .saturating_add(budget_ms)
        .min(msg.deadline_at_ms.saturating_sub(2000))
        .max(started);
    let env = DecideEnv {
        directory: ctx.directory.as_ref(),
        tickets: ctx.tickets.as_ref(),
        now: jiff::Timestamp::now(),
        deadline: std::time::Instant::now()
            + Duration::from_millis(u64::try_from(decide_by_ms - started).unwrap_or(0)),
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
        let at = now_ms().saturating_add(backoff(&ctx.cfg, attempt).as_millis() as i64);
        if at
            < msg
                .deadline_at_ms
                .saturating_sub(budget_ms.saturating_add(2000))
        {
            return Step::RetryAt {
                at_ms: at,
                reason: format!(
                    "checks errored ({why}); deciding again (attempt {attempt} of {})",
                    policy.check_attempts
                ),
            };
        }
    }
    if !c.expects_resume() {
        tracing::info!(decision = verdict, rule = ?decision.rule, "notification only: this stage gets no resume");
        return Step::Done(format!(
            "notified ({verdict}); stage {} gets no resume",
            c.stage
        ));
    }
    let now = now_ms();
    if now >= msg.deadline_at_ms {
        return Step::Dead(format!(
            "deadline passed ({} s after receipt) before a resume was delivered; last error: {}",
            (msg.deadline_at_ms - msg.received_at_ms) / 1000,
            last_error.unwrap_or("none (the job never ran)")
        ));
    }
    match ctx.graph.resume(c, &decision, msg.deadline_at_ms).await {
        Ok(ResumeOutcome::Resumed) => {
            tracing::info!(decision = verdict, rule = ?decision.rule, attempt, "resumed");
            Step::Done(format!("resumed: {verdict}"))
        }
        Ok(ResumeOutcome::NotWaiting(why)) => {
            tracing::info!(%why, "request no longer waiting; nothing to resume");
            Step::Done(format!("not waiting: {why}"))
        }
        Err(GraphError::DeadlinePassed) => Step::Dead(format!(
            "deadline reached before a resume could be delivered; last error: {}",
            last_error.unwrap_or("none")
        )),
        Err(e) if e.is_permanent() => Step::Dead(e.to_string()),
        Err(e) => {
            let delay = backoff(&ctx.cfg, attempt).max(e.retry_after().unwrap_or_default());
            let at = now.saturating_add(delay.as_millis() as i64);
            if at >= msg.deadline_at_ms {
                // One last try just before the deadline rather than giving up early.
                let last = msg.deadline_at_ms - 1000;
                if last > now {
                    return Step::RetryAt {
                        at_ms: last,
                        reason: e.to_string(),
                    };
                }
                return Step::Dead(format!("deadline reached while retrying; last error: {e}"));
            }
            Step::RetryAt {
                at_ms: at,
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
        "decided"
    );
}

/// The standalone worker pool: `concurrency` tasks claiming from SQLite until cancelled. A job
/// in flight at shutdown finishes its attempt; its lease protects it if the process dies.
pub async fn run_pool(ctx: Arc<WorkerCtx>, queue: SqliteQueue, cancel: CancellationToken) {
    let mut tasks = Vec::new();
    for n in 0..ctx.cfg.concurrency {
        let (ctx, queue, cancel) = (ctx.clone(), queue.clone(), cancel.clone());
        tasks.push(tokio::spawn(async move {
            while !cancel.is_cancelled() {
                match queue.claim(ctx.cfg.lease).await {
                    Ok(Some(job)) => run_one(&ctx, &queue, job).await,
                    Ok(None) => {
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(ctx.cfg.poll_interval) => {}
                        }
                    }
                    Err(e) => {
                        tracing::error!(worker = n, error = %e, "cannot claim jobs");
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
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

async fn run_one(ctx: &WorkerCtx, queue: &SqliteQueue, job: crate::queue::sqlite::Claimed) {
    let c = &job.message.callout;
    let span = tracing::info_span!(
        "job",
        correlation_id = %job.message.correlation_id,
        request_id = %c.request_id,
        stage = %c.stage,
        stage_instance_id = %c.stage_instance_id,
        attempt = job.attempts,
    );
    async {
        let step = process(ctx, &job.message, job.attempts, job.last_error.as_deref()).await;
        // Store first, log after: a log line that says "dead letter" must be true when read.
        let stored = match &step {
            Step::Done(o) => queue.complete(&job, o.clone()).await,
            Step::RetryAt { at_ms, reason } => queue.retry_at(&job, *at_ms, reason.clone()).await,
            Step::Dead(reason) => queue.dead(&job, reason.clone()).await,
        };
        log_step(&step);
        match stored {
            Ok(true) => {}
            Ok(false) => tracing::warn!("lease was lost before the outcome was stored"),
            Err(e) => tracing::error!(error = %e, "cannot store job outcome; the lease will expire and it will run again"),
        }
    }
    .instrument(span)
    .await
}

/// Logs an attempt's outcome (after it is stored: a "dead letter" line must be true when read).
fn log_step(step: &Step) {
    match step {
        Step::Done(_) => {}
        Step::RetryAt { at_ms, reason } => {
            tracing::warn!(reason = %reason, retry_in_ms = at_ms - now_ms(), "attempt failed; will retry");
        }
        Step::Dead(reason) => tracing::error!(reason = %reason, "job moved to dead letters"),
    }
}

/// The pool over a shared Azure Storage queue: each task receives one message at a time under a
/// lease (the visibility timeout); several processes may run this against the same queue.
pub async fn run_azure_pool(ctx: Arc<WorkerCtx>, jobs: AzureJobs, cancel: CancellationToken) {
    let mut tasks = Vec::new();
    for n in 0..ctx.cfg.concurrency {
        let (ctx, jobs, cancel) = (ctx.clone(), jobs.clone(), cancel.clone());
        tasks.push(tokio::spawn(async move {
            // An empty queue is polled less and less often (each poll is a billed Storage
            // transaction), up to 2 s or the poll interval if larger; work resets it.
            let idle_cap = ctx.cfg.poll_interval.max(Duration::from_secs(2));
            let mut idle = ctx.cfg.poll_interval;
            while !cancel.is_cancelled() {
                let pause = match jobs.receive(1, ctx.cfg.lease).await {
                    Ok(ds) if ds.is_empty() => {
                        let p = idle;
                        idle = (idle * 2).min(idle_cap);
                        p
                    }
                    Ok(ds) => {
                        idle = ctx.cfg.poll_interval;
                        for d in ds {
                            run_delivery(&ctx, &jobs, d).await;
                        }
                        Duration::ZERO
                    }
                    Err(e) => {
                        tracing::error!(worker = n, error = %e, "cannot receive jobs from the Azure Storage queue");
                        match e {
                            QueueError::Throttled { retry_after } => {
                                retry_after.unwrap_or(Duration::from_secs(1))
                            }
                            _ => Duration::from_secs(1),
                        }
                    }
                };
                if !pause.is_zero() {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn run_delivery(ctx: &WorkerCtx, jobs: &AzureJobs, d: Delivery) {
    let (received, envelope) = match d {
        Delivery::Poison { received, reason } => {
            tracing::error!(message_id = %received.message_id, reason = %reason, "job message moved to the poison queue");
            if let Err(e) = jobs.dead(&received, reason).await {
                tracing::error!(error = %e, "cannot move the message to the poison queue; it will be delivered again");
            }
            return;
        }
        Delivery::Job { received, envelope } => (received, envelope),
    };
    let c = &envelope.job.callout;
    let attempt = envelope.attempts.saturating_add(1);
    let span = tracing::info_span!(
        "job",
        correlation_id = %envelope.job.correlation_id,
        request_id = %c.request_id,
        stage = %c.stage,
        stage_instance_id = %c.stage_instance_id,
        attempt,
        message_id = %received.message_id,
    );
    async {
        let step = process(ctx, &envelope.job, attempt, envelope.last_error.as_deref()).await;
        let stored = match &step {
            Step::Done(_) => jobs.complete(&received).await,
            Step::RetryAt { at_ms, reason } => {
                jobs.retry_at(&received, &envelope, *at_ms, reason.clone()).await
            }
            Step::Dead(reason) => jobs.dead(&received, reason.clone()).await,
        };
        log_step(&step);
        if let Err(e) = stored {
            tracing::warn!(error = %e, "cannot store the job outcome; the message becomes visible again when its lease ends");
        }
    }
    .instrument(span)
    .await
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
