//! The one answer both hosts give a PIM custom extension call: authenticate (v2 bearer of
//! PIM's app for accessgate's Application ID URI), parse the activation, answer a re-delivery
//! from the ledger, else decide within the extension's budget, **record, then answer**.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::settings::{ExtensionSettings, Settings};
use crate::activation::{self, Activation, EvaluationOutcome};
use crate::auth::{AuthError, Authenticator};
use crate::directory::Directory;
use crate::policy::{DecideEnv, Mode, Policy};
use crate::queue::now_ms;
use crate::queue::verdicts::{VerdictLedger, VerdictRecord};
use crate::tickets::TicketSystem;

/// What a verdict call needs, built once at start.
pub struct PimService {
    pub settings: Settings,
    pub auth: Arc<Authenticator>,
    pub policy: Policy,
    pub directory: Arc<dyn Directory>,
    pub tickets: Arc<dyn TicketSystem>,
    /// `None`: no store to record verdicts in (a Functions host without Storage): every call
    /// is refused rather than answered unrecorded.
    pub ledger: Option<Arc<dyn VerdictLedger>>,
    pub max_body: usize,
}

/// The HTTP answer: status, JSON body, and the `WWW-Authenticate` challenge of a 401.
#[derive(Debug, Clone, PartialEq)]
pub struct PimAnswer {
    pub status: u16,
    pub body: Value,
    pub challenge: Option<&'static str>,
}

impl PimAnswer {
    /// The HTTP response (both hosts): JSON body, `x-correlation-id`, the challenge on a 401.
    pub fn into_response(self, correlation_id: &str) -> axum::response::Response {
        use axum::response::IntoResponse as _;
        let status = axum::http::StatusCode::from_u16(self.status)
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(self.body)).into_response();
        let h = resp.headers_mut();
        if let Ok(v) = axum::http::HeaderValue::from_str(correlation_id) {
            h.insert("x-correlation-id", v);
        }
        if let Some(c) = self.challenge {
            h.insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static(c),
            );
        }
        resp
    }

    /// A refusal before the service sees the call (the host could not read the body).
    pub fn refusal(status: u16, code: &str, message: &str, correlation_id: &str) -> PimAnswer {
        refuse(status, code, message, correlation_id)
    }

    /// The answer when `[pim]` is not configured.
    pub fn not_configured(correlation_id: &str) -> PimAnswer {
        refuse(
            501,
            "pim_not_configured",
            "PIM custom extensions are not configured here ([pim] audiences)",
            correlation_id,
        )
    }
}

/// A call as the host received it.
pub struct PimCall<'a> {
    pub authorization: Option<&'a [u8]>,
    pub duplicate_authorization: bool,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
    /// `/api/pim/NAME`: the `[pim.extensions.NAME]`; `None` for `/api/pim`.
    pub extension: Option<&'a str>,
    pub correlation_id: &'a str,
}

/// Time kept back from the budget for recording and answering.
const ANSWER_RESERVE: Duration = Duration::from_millis(50);

fn refuse(status: u16, code: &str, message: &str, correlation_id: &str) -> PimAnswer {
    PimAnswer {
        status,
        body: json!({"error": {"code": code, "message": message, "correlationId": correlation_id}}),
        challenge: None,
    }
}

fn verdict_body(r: &VerdictRecord) -> Value {
    json!({"evaluationId": r.evaluation_id, "evaluationOutcome": r.outcome, "reason": r.reasons})
}

impl PimService {
    pub async fn answer(&self, call: &PimCall<'_>) -> PimAnswer {
        // PIM's client timeout runs from the moment the call arrives.
        let started = Instant::now();
        let cid = call.correlation_id;
        if call.body.len() > self.max_body {
            return refuse(
                413,
                "body_too_large",
                "body larger than the configured limit",
                cid,
            );
        }
        if call.duplicate_authorization {
            return self.unauthenticated(AuthError::DuplicateAuthorization, cid);
        }
        if let Err(e) = self
            .auth
            .verify_v2_bearer(
                call.authorization,
                &self.settings.audiences,
                &self.settings.callers,
            )
            .await
        {
            return self.unauthenticated(e, cid);
        }
        // Only an authenticated caller learns which extensions exist.
        let Some(ext) = self.settings.extension(call.extension) else {
            tracing::warn!(extension = ?call.extension, reason = "unknown_extension", "PIM call rejected");
            return refuse(
                404,
                "unknown_extension",
                "no PIM custom extension is configured at this path",
                cid,
            );
        };
        if call.content_type.is_some_and(|ct| {
            !ct.to_ascii_lowercase()
                .trim_start()
                .starts_with("application/json")
        }) {
            return refuse(
                415,
                "unsupported_media_type",
                "content type must be application/json",
                cid,
            );
        }
        let a = match activation::parse(call.body) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(reason = e.code(), error = %e, "PIM call rejected");
                return refuse(400, e.code(), &e.to_string(), cid);
            }
        };
        let Some(ledger) = &self.ledger else {
            tracing::error!(
                reason = "no_verdict_ledger",
                "PIM call not answered: no store to record verdicts in (queue.backend = \"azure_storage\" under Functions)"
            );
            return refuse(
                503,
                "temporarily_unavailable",
                "the service cannot record verdicts right now; retry later",
                cid,
            );
        };
        let route = (call.extension.unwrap_or("-"), ext.post_approval);
        let (key, lookups) = a.ledger_keys(route, now_ms());
        let mut earlier = None;
        for k in &lookups {
            match ledger.get(k).await {
                Ok(Some(r)) => {
                    earlier = Some(r);
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "PIM call not answered: the verdict ledger is unreadable");
                    return refuse(
                        503,
                        "temporarily_unavailable",
                        "the service cannot record verdicts right now; retry later",
                        cid,
                    );
                }
            }
        }
        if let Some(r) = earlier {
            tracing::info!(evaluation_id = %r.evaluation_id, outcome = %r.outcome, principal = %a.principal_id,
                target = %a.target(), "PIM re-delivery answered with its recorded verdict");
            return PimAnswer {
                status: 200,
                body: verdict_body(&r),
                challenge: None,
            };
        }
        let mut record = if ext.post_approval {
            notification(&a, call, &key)
        } else {
            self.decide(&a, ext, call, &key, started).await
        };
        record.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Recorded before it is sent: what PIM is told is always what the ledger says.
        let stands = match ledger.record(&record).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "PIM verdict not sent: it could not be recorded");
                return refuse(
                    503,
                    "temporarily_unavailable",
                    "the service cannot record verdicts right now; retry later",
                    cid,
                );
            }
        };
        tracing::info!(
            evaluation_id = %stands.evaluation_id, outcome = %stands.outcome, enforce_outcome = %stands.enforce_outcome,
            mode = %stands.mode, rule = stands.rule.as_deref().unwrap_or(""), principal = %a.principal_id,
            kind = a.kind.name(), target = %a.target(), reasons = %stands.reasons.join("; "),
            elapsed_ms = stands.elapsed_ms, post_approval = stands.post_approval, "PIM verdict"
        );
        PimAnswer {
            status: 200,
            body: verdict_body(&stands),
            challenge: None,
        }
    }

    fn unauthenticated(&self, e: AuthError, cid: &str) -> PimAnswer {
        if e.is_unavailable() {
            tracing::error!(reason = e.code(), error = %e, "PIM call not answered");
            return refuse(
                503,
                "temporarily_unavailable",
                "the service cannot verify tokens right now; retry later",
                cid,
            );
        }
        tracing::warn!(reason = e.code(), error = %e, "PIM call rejected");
        PimAnswer {
            challenge: Some("Bearer error=\"invalid_token\""),
            ..refuse(401, "unauthorized", "the request is not authenticated", cid)
        }
    }

    async fn decide(
        &self,
        a: &Activation,
        ext: &ExtensionSettings,
        call: &PimCall<'_>,
        key: &str,
        started: Instant,
    ) -> VerdictRecord {
        // What is kept for recording and answering: a tenth of the budget, at least 50 ms
        // (an Azure Table insert takes tens of milliseconds).
        let reserve = (ext.budget / 10).max(ANSWER_RESERVE);
        let budget = ext.budget.saturating_sub(reserve);
        let deadline = started + budget;
        let env = DecideEnv {
            directory: self.directory.as_ref(),
            tickets: self.tickets.as_ref(),
            now: jiff::Timestamp::now(),
            deadline,
        };
        let mut r = base_record(a, call, key);
        let decided = tokio::time::timeout_at(
            deadline.into(),
            self.policy
                .decide_activation(a, &self.settings.never_auto_approve, &env),
        )
        .await;
        let (enforce, reasons, mode) = match decided {
            Ok(d) => {
                r.rule = d.rule.clone();
                r.checks = d
                    .outcomes
                    .iter()
                    .filter_map(|o| serde_json::to_value(o).ok())
                    .collect();
                (d.outcome, d.reasons, d.mode.unwrap_or(ext.mode))
            }
            // Checks are cut to the budget themselves; this is the last line.
            Err(_) => (
                EvaluationOutcome::Denied,
                vec![format!(
                    "accessgate could not decide within {} ms; try the activation again in a minute, and if it keeps failing contact your identity team.",
                    budget.as_millis()
                )],
                ext.mode,
            ),
        };
        r.enforce_outcome = enforce.as_str().into();
        match mode {
            Mode::Enforce => {
                r.mode = "enforce".into();
                r.outcome = enforce.as_str().into();
                r.reasons = reasons;
            }
            Mode::Audit => {
                r.mode = "audit".into();
                r.outcome = EvaluationOutcome::Approved.as_str().into();
                r.reasons = vec![format!(
                    "accessgate audit mode (no effect): enforce mode would answer {}: {}",
                    enforce.as_str(),
                    reasons.join("; ")
                )];
            }
        }
        r
    }
}

/// A post-approval extension's call: recorded, answered at once (nothing to decide).
fn notification(a: &Activation, call: &PimCall<'_>, key: &str) -> VerdictRecord {
    let mut r = base_record(a, call, key);
    r.post_approval = true;
    r.outcome = EvaluationOutcome::Approved.as_str().into();
    r.enforce_outcome = r.outcome.clone();
    r.reasons = vec!["accessgate recorded the approved activation".into()];
    r
}

fn base_record(a: &Activation, call: &PimCall<'_>, key: &str) -> VerdictRecord {
    VerdictRecord {
        key: key.to_owned(),
        evaluation_id: activation::evaluation_id(key),
        outcome: String::new(),
        reasons: Vec::new(),
        enforce_outcome: String::new(),
        mode: "enforce".into(),
        rule: None,
        checks: Vec::new(),
        principal_id: a.principal_id.to_string(),
        kind: a.kind.name().into(),
        target: a.target(),
        ticket: a.ticket_number.clone(),
        extension: call.extension.map(str::to_owned),
        post_approval: false,
        correlation_id: call.correlation_id.to_owned(),
        decided_at_ms: now_ms(),
        elapsed_ms: 0,
    }
}
