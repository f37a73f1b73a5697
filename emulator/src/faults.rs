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
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::state::Shared;

/// What a fault applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultTarget {
    /// Every Graph route (resume, GET request, role assignments).
    #[default]
    Graph,
    /// The token endpoints.
    Token,
    /// Extension: the JWKS routes.
    Jwks,
    /// Extension: the OpenID metadata routes.
    Metadata,
    /// The Key Vault routes (`/vaults/accessgate/...`).
    Keyvault,
    /// The managed identity endpoint (`GET /msi/token`).
    ManagedIdentity,
    /// The ServiceNow Table API (`/api/now/table/...`).
    #[serde(rename = "servicenow")]
    ServiceNow,
}

/// Body of `POST /_emulator/faults`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Drop the connection instead of answering (the response body fails at once, so the client
    /// sees a transport error).
    #[serde(default)]
    pub reset: bool,
    /// Answer 200 with a truncated JSON body instead of the route's answer.
    #[serde(default)]
    pub malformed: bool,
    /// Probability (0..=1) that a call is faulted; absent = every call. `count` then counts
    /// faulted calls.
    #[serde(default)]
    pub ratio: Option<f64>,
}

impl FaultSpec {
    /// Graph answers 503 until cleared (a starting point for `..` struct updates).
    pub fn graph_unavailable() -> Self {
        Self {
            target: FaultTarget::Graph,
            status: Some(503),
            ..Self::default()
        }
    }
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
    reset: bool,
    malformed: bool,
}

/// Marks a response produced by a `reset` fault (the Graph call log records status 0).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResetMarker;

impl Faults {
    fn take(&mut self, target: FaultTarget) -> Option<Action> {
        let active = self.active.get_mut(&target)?;
        if let Some(ratio) = active.spec.ratio
            && rand::random::<f64>() >= ratio
        {
            return None;
        }
        let action = Action {
            status: active
                .spec
                .status
                .and_then(|s| StatusCode::from_u16(s).ok()),
            retry_after_secs: active.spec.retry_after_secs,
            delay: active.spec.delay_ms.map(Duration::from_millis),
            reset: active.spec.reset,
            malformed: active.spec.malformed,
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
    if spec.status.is_none() && spec.delay_ms.is_none() && !spec.reset && !spec.malformed {
        bail!("a fault needs a status, a delay_ms, reset or malformed");
    }
    if u8::from(spec.status.is_some()) + u8::from(spec.reset) + u8::from(spec.malformed) > 1 {
        bail!("status, reset and malformed exclude each other");
    }
    if let Some(ratio) = spec.ratio
        && !(0.0..=1.0).contains(&ratio)
    {
        bail!("ratio must be within 0..=1, got {ratio}");
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
    tracing::info!(target = ?spec.target, status = ?spec.status, count = ?spec.count, delay_ms = ?spec.delay_ms, reset = spec.reset, malformed = spec.malformed, ratio = ?spec.ratio, "fault installed");
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
    if action.reset {
        let stream = futures_util::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected connection reset",
            ))
        });
        let mut response = Response::new(Body::from_stream(stream));
        response.extensions_mut().insert(ResetMarker);
        return Some(response);
    }
    if action.malformed {
        return Some(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{\"unexpected\":",
            )
                .into_response(),
        );
    }
    let status = action.status?;
    let mut response = match target {
        FaultTarget::Keyvault => {
            let code = match status.as_u16() {
                429 => "Throttled",
                401 => "Unauthorized",
                403 => "Forbidden",
                404 => "NotFound",
                400 => "BadParameter",
                _ => "InternalServerError",
            };
            (
                status,
                Json(json!({"error": {"code": code, "message": format!("Injected fault: {status}")}})),
            )
                .into_response()
        }
        FaultTarget::ServiceNow => (
            status,
            Json(json!({"error": {"message": format!("Injected fault: {status}"), "detail": null}, "status": "failure"})),
        )
            .into_response(),
        FaultTarget::ManagedIdentity => (
            status,
            Json(json!({"statusCode": status.as_u16(), "message": format!("Injected fault: {status}"), "correlationId": uuid::Uuid::new_v4()})),
        )
            .into_response(),
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
