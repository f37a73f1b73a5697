//! Injected failures: the next N calls to a target answer a status (with `Retry-After`) and/or
//! are delayed.
//!
//! Why: Graph throttles (429 with `Retry-After`) and has transient 5xx; the token endpoint can
//! be slow or unavailable. accessgate's retry and back-off paths are only testable if those
//! failures can be produced on demand.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::bail;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::state::Shared;

/// What a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultTarget {
    /// Every Graph route (resume and GET request).
    Graph,
    /// The token endpoints.
    Token,
    /// Extension: the JWKS routes.
    Jwks,
    /// Extension: the OpenID metadata routes.
    Metadata,
}

/// Body of `POST /_emulator/faults`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub target: FaultTarget,
    /// Status to answer instead of the normal response (400..=599).
    #[serde(default)]
    pub status: Option<u16>,
    /// `Retry-After` header value (seconds) sent with `status`.
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
    /// How many calls the fault affects; absent = until cleared.
    #[serde(default)]
    pub count: Option<u32>,
    /// Delay before answering (then the status, or the normal response).
    #[serde(default)]
    pub delay_ms: Option<u64>,
}

#[derive(Default)]
pub(crate) struct Faults {
    active: HashMap<FaultTarget, Active>,
}

struct Active {
    spec: FaultSpec,
    remaining: Option<u32>,
}

/// What to do for one call.
struct Action {
    status: Option<StatusCode>,
    retry_after_secs: Option<u64>,
    delay: Option<Duration>,
}

impl Faults {
    fn take(&mut self, target: FaultTarget) -> Option<Action> {
        let active = self.active.get_mut(&target)?;
        let action = Action {
            status: active
                .spec
                .status
                .and_then(|s| StatusCode::from_u16(s).ok()),
            retry_after_secs: active.spec.retry_after_secs,
            delay: active.spec.delay_ms.map(Duration::from_millis),
        };
        if let Some(remaining) = active.remaining.as_mut() {
            *remaining = remaining.saturating_sub(1);
            if *remaining == 0 {
                self.active.remove(&target);
            }
        }
        Some(action)
    }
}

/// Installs `spec`, replacing any fault on the same target.
pub(crate) fn set(state: &Shared, spec: &FaultSpec) -> anyhow::Result<()> {
    if let Some(status) = spec.status
        && !(400..=599).contains(&status)
    {
        bail!("fault status must be 400..=599, got {status}");
    }
    if spec.status.is_none() && spec.delay_ms.is_none() {
        bail!("a fault needs a status, a delay_ms, or both");
    }
    if spec.count == Some(0) {
        bail!("count must be at least 1 (omit it for 'until cleared')");
    }
    state.lock().faults.active.insert(
        spec.target,
        Active {
            spec: spec.clone(),
            remaining: spec.count,
        },
    );
    tracing::info!(target = ?spec.target, status = ?spec.status, count = ?spec.count, delay_ms = ?spec.delay_ms, "fault installed");
    Ok(())
}

pub(crate) fn clear(state: &Shared) {
    state.lock().faults.active.clear();
}

/// Consumes one call's worth of the fault on `target`: sleeps for its delay, then returns the
/// response to send instead of the normal one (if the fault has a status).
pub(crate) async fn apply(state: &Shared, target: FaultTarget) -> Option<Response> {
    let action = state.lock().faults.take(target)?;
    if let Some(delay) = action.delay {
        tokio::time::sleep(delay).await;
    }
    let status = action.status?;
    let mut response = match target {
        FaultTarget::Graph => {
            let code = match status.as_u16() {
                429 => "TooManyRequests",
                503 => "ServiceUnavailable",
                504 => "GatewayTimeout",
                500 => "InternalServerError",
                400 => "BadRequest",
                401 => "InvalidAuthenticationToken",
                403 => "Authorization_RequestDenied",
                404 => "ResourceNotFound",
                _ => "UnknownError",
            };
            (
                status,
                Json(json!({"error": {
                    "code": code,
                    "message": format!("Injected fault: {status}"),
                    "innerError": {
                        "date": jiff::Timestamp::now().to_string(),
                        "request-id": uuid::Uuid::new_v4(),
                        "client-request-id": uuid::Uuid::new_v4(),
                    }
                }})),
            )
                .into_response()
        }
        FaultTarget::Token | FaultTarget::Jwks | FaultTarget::Metadata => {
            let error = if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                "temporarily_unavailable"
            } else {
                "invalid_request"
            };
            (
                status,
                Json(json!({
                    "error": error,
                    "error_description": format!("AADSTS50000: Injected fault: {status}"),
                    "error_codes": [50000],
                })),
            )
                .into_response()
        }
    };
    if let Some(secs) = action.retry_after_secs
        && let Ok(value) = HeaderValue::from_str(&secs.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    Some(response)
}
