//! The standalone HTTP surface (axum): `POST /api/elm` for callouts, health, and the OpenAPI
//! description. Refusals are answered by [`intake::Refusal`], the same for both hosts.
//!
//! Invariants: the callout handler takes a [`VerifiedCaller`] extractor, so it cannot run
//! unauthenticated, and the body is read only after it; the handler answers after one durable
//! enqueue and never awaits Graph.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tracing::Instrument as _;

use crate::auth::VerifiedCaller;
use crate::intake::{
    self, Admission, CalloutHeaders, CorrelationId, IntakeError, IntakeRequest, Refusal,
};
use crate::queue::EnqueueOutcome;
use crate::state::AppState;

/// Entra gives up after 2 s; a body still arriving after 10 s is stuck or hostile.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A request body of at most `max` bytes within [`BODY_TIMEOUT`] (both POST routes).
async fn read_body(body: Body, max: usize) -> Result<axum::body::Bytes, IntakeError> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, max)).await {
        Err(_) => Err(IntakeError::Timeout),
        Ok(Err(_)) => Err(IntakeError::TooLarge),
        Ok(Ok(b)) => Ok(b),
    }
}

/// The OpenAPI description of this surface, kept true by `tests/openapi.rs`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Every route the standalone server serves, as (method, path): the OpenAPI test checks both ways.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/elm"),
    ("post", "/api/servicenow/events"),
    ("post", "/api/pim"),
    ("post", "/api/pim/{extension}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/openapi.json"),
    ("get", "/"),
];

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/api/elm",
            post(elm_callout).layer(axum::middleware::from_fn(callout_span)),
        )
        .route(
            "/api/servicenow/events",
            post(servicenow_events).layer(axum::extract::DefaultBodyLimit::max(
                crate::bridge::webhook::MAX_BODY * 4,
            )),
        )
        .route("/api/pim", post(pim_default))
        .route("/api/pim/{extension}", post(pim_named))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .route("/", get(healthz))
        .with_state(state)
}

/// Liveness: the process answers. Nothing about the queue or its jobs: the route is
/// unauthenticated (job counts are for `accessgate jobs`).
/// ServiceNow's close webhook (`bridge::webhook`): a hint that wakes the ticket's job.
async fn servicenow_events(
    State(app): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let correlation_id = CorrelationId::from_http(&headers);
    let (status, body) = crate::bridge::webhook::answer(
        app.worker.bridge.as_deref(),
        app.queue.as_deref(),
        &app.auth,
        &headers,
        &body,
        &correlation_id.to_string(),
    )
    .await;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

async fn pim_default(
    State(app): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    pim_verdict(&app, None, &headers, body).await
}

async fn pim_named(
    State(app): State<Arc<AppState>>,
    axum::extract::Path(extension): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    pim_verdict(&app, Some(&extension), &headers, body).await
}

/// A PIM custom extension's synchronous verdict (`pim::service`). The body is read as the
/// callout route reads it: at most `server.max_body_bytes`, within [`BODY_TIMEOUT`].
async fn pim_verdict(
    app: &AppState,
    extension: Option<&str>,
    headers: &axum::http::HeaderMap,
    body: Body,
) -> Response {
    let correlation_id = CorrelationId::from_http(headers);
    let max = app.config.server.max_body_bytes;
    let body = match read_body(body, max).await {
        Ok(b) => b,
        // The callout route's refusal, in the PIM route's answer.
        Err(e) => {
            return crate::pim::service::PimAnswer::refusal(
                e.status(),
                e.code(),
                &e.public_message(),
                correlation_id.as_str(),
            )
            .into_response(correlation_id.as_str());
        }
    };
    let body = &body[..];
    let span = tracing::info_span!("pim", %correlation_id);
    let _enter = span.enter();
    let Some(pim) = &app.pim else {
        return crate::pim::service::PimAnswer::not_configured(correlation_id.as_str())
            .into_response(correlation_id.as_str());
    };
    let mut auth = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    let call = crate::pim::service::PimCall {
        authorization: auth.next().map(axum::http::HeaderValue::as_bytes),
        duplicate_authorization: auth.next().is_some(),
        content_type: headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        body,
        extension,
        correlation_id: correlation_id.as_str(),
    };
    drop(_enter);
    pim.answer(&call)
        .instrument(span)
        .await
        .into_response(correlation_id.as_str())
}

async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

/// Readiness: `503` while the queue cannot commit, when every callout would get `503` too.
async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    if app.ready().await {
        (StatusCode::OK, axum::Json(json!({"status": "ready"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not_ready", "reason": "the job queue cannot commit"})),
        )
            .into_response()
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// One span per callout around the extractors as well as the handler, so a refusal by the
/// [`VerifiedCaller`] extractor is logged under the correlation id its answer names.
async fn callout_span(mut req: Request, next: Next) -> Response {
    let correlation_id = CorrelationId::from_http(req.headers());
    req.extensions_mut().insert(correlation_id.clone());
    let span = tracing::info_span!("callout", %correlation_id, request_id = tracing::field::Empty,
        stage = tracing::field::Empty, stage_instance_id = tracing::field::Empty);
    next.run(req).instrument(span).await
}

/// The caller of a callout, authenticated from the headers alone (size, duplicate
/// `Authorization`, token: [`intake::authenticate`], as under Functions) before anything reads
/// the body.
impl FromRequestParts<Arc<AppState>> for VerifiedCaller {
    type Rejection = Refusal;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let correlation_id = CorrelationId::of_request(&parts.headers, &mut parts.extensions);
        intake::authenticate(
            &app.auth,
            app.config.server.max_body_bytes,
            &CalloutHeaders::from_http(&parts.headers),
        )
        .await
        .map_err(|e| e.refuse(&correlation_id))
    }
}

async fn elm_callout(
    State(app): State<Arc<AppState>>,
    correlation_id: CorrelationId,
    caller: VerifiedCaller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let max = app.config.server.max_body_bytes;
    let bytes = read_body(body, max)
        .await
        .map_err(|e| e.refuse(&correlation_id))?;
    let req = IntakeRequest {
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        body: &bytes,
        correlation_id: correlation_id.as_str(),
    };
    match app.admit_and_enqueue(&caller, &req).await {
        Ok(outcome) => Ok(intake::accepted(outcome, &correlation_id)),
        Err(e) => Err(e.refuse(&correlation_id)),
    }
}

impl AppState {
    /// Standalone: admit, then one durable enqueue (SQLite commit or Azure Storage `201`); the
    /// 202 follows it.
    pub async fn admit_and_enqueue(
        &self,
        caller: &VerifiedCaller,
        req: &IntakeRequest<'_>,
    ) -> Result<&'static str, IntakeError> {
        let admission = intake::admit_verified(
            &self.auth,
            caller,
            self.config.server.max_body_bytes,
            self.capture.as_ref(),
            req,
        )
        .await?;
        let span = tracing::Span::current();
        match admission {
            Admission::ConnectionTest => {
                tracing::info!(caller = %caller.app_id(), "connection test acknowledged");
                Ok("connection-test")
            }
            Admission::Ignored => {
                tracing::warn!("a body with no stage, ids or callback acknowledged and ignored");
                Ok("ignored")
            }
            Admission::Callout(c) => {
                span.record("request_id", c.request_id.as_str());
                span.record("stage", c.stage.as_graph());
                span.record("stage_instance_id", c.stage_instance_id.as_str());
                let job = intake::job_for(
                    *c,
                    req.correlation_id,
                    &self.config.worker,
                    caller.extension().map(str::to_owned),
                );
                let Some(queue) = &self.queue else {
                    return Err(IntakeError::Store(crate::queue::StoreError::NoLocalQueue));
                };
                match queue.enqueue(&job).await? {
                    EnqueueOutcome::Enqueued => {
                        tracing::info!(caller = %caller.app_id(), scheme = caller.scheme().as_str(), extension = caller.extension(), token = %caller.token_hash(), "callout accepted and queued");
                        Ok("accepted")
                    }
                    EnqueueOutcome::Duplicate => {
                        tracing::info!(
                            "duplicate callout (same stage instance id) acknowledged; not queued again"
                        );
                        Ok("duplicate")
                    }
                }
            }
        }
    }
}
