//! The standalone HTTP surface (axum): `POST /api/elm` for callouts, health, and the OpenAPI
//! description. Errors become responses in one place, [`error_response`].
//!
//! Invariant: the callout handler answers after one durable enqueue and never awaits Graph.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tracing::Instrument as _;

use crate::app::AppState;
use crate::intake::{self, Admission, IntakeError, IntakeRequest};
use crate::queue::EnqueueOutcome;

/// Entra gives up after 2 s; a body still arriving after 10 s is stuck or hostile.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The OpenAPI description of this surface, kept true by `tests/openapi.rs`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Every route the standalone server serves, as (method, path): the OpenAPI test checks both ways.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/elm"),
    ("get", "/healthz"),
    ("get", "/openapi.json"),
    ("get", "/"),
];

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/elm", post(elm_callout))
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .route("/", get(healthz))
        .with_state(state)
}

async fn healthz(State(app): State<Arc<AppState>>) -> Response {
    let counts = app.queue_counts().await;
    (
        StatusCode::OK,
        axum::Json(json!({"status": "ok", "jobs": counts})),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Turns an intake error into the response: status, reason code, correlation id; a
/// `WWW-Authenticate` challenge on 401. Logs the specific reason.
pub fn error_response(e: &IntakeError, correlation_id: &str) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    e.log();
    let mut resp = (status, axum::Json(e.body(correlation_id))).into_response();
    if let Some(ch) = e.challenge() {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(ch));
    }
    resp
}

fn accepted(correlation_id: &str, what: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        axum::Json(intake::accepted_body(what, correlation_id)),
    )
        .into_response()
}

async fn elm_callout(State(app): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let correlation_id = intake::correlation_id(
        header_str(&headers, "client-request-id")
            .or_else(|| header_str(&headers, "x-ms-client-request-id")),
    );
    let span = tracing::info_span!("callout", %correlation_id, request_id = tracing::field::Empty,
        stage = tracing::field::Empty, stage_instance_id = tracing::field::Empty);
    let resp = async {
        let max = app.config.server.max_body_bytes;
        let content_length =
            header_str(&headers, "content-length").and_then(|v| v.parse::<u64>().ok());
        if content_length.is_some_and(|l| l > max as u64) {
            return error_response(&IntakeError::TooLarge, &correlation_id);
        }
        // Two Authorization headers: which one would a proxy in front have checked? Refuse.
        if headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .nth(1)
            .is_some()
        {
            let e = IntakeError::Auth(crate::auth::AuthError::DuplicateAuthorization);
            return error_response(&e, &correlation_id);
        }
        // Authenticate from the headers before reading the body: an anonymous client cannot make
        // us buffer up to max_body_bytes.
        let caller = match app
            .auth
            .verify(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()))
            .await
        {
            Ok(c) => c,
            Err(e) => return error_response(&IntakeError::Auth(e), &correlation_id),
        };
        let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, max)).await
        {
            Err(_) => return error_response(&IntakeError::Timeout, &correlation_id),
            Ok(Err(_)) => return error_response(&IntakeError::TooLarge, &correlation_id),
            Ok(Ok(b)) => b,
        };
        let req = IntakeRequest {
            authorization: None,
            duplicate_authorization: false,
            content_type: header_str(&headers, "content-type"),
            content_length,
            body: &bytes,
            correlation_id: &correlation_id,
        };
        match app.admit_and_enqueue(&caller, &req).await {
            Ok(outcome) => accepted(&correlation_id, outcome),
            Err(e) => error_response(&e, &correlation_id),
        }
    }
    .instrument(span)
    .await;
    let mut resp = resp;
    if let Ok(v) = HeaderValue::from_str(&correlation_id) {
        resp.headers_mut().insert("x-correlation-id", v);
    }
    resp
}

impl AppState {
    /// Standalone: admit, then one durable enqueue (SQLite commit or Azure Storage `201`); the
    /// 202 follows it.
    pub async fn admit_and_enqueue(
        &self,
        caller: &crate::auth::VerifiedCaller,
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
                tracing::info!(caller = %caller.app_id, "connection test acknowledged");
                Ok("connection-test")
            }
            Admission::UnknownStage(s) => {
                tracing::warn!(stage = %s, "unknown stage acknowledged and ignored");
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
                    caller.extension.clone(),
                );
                let Some(queue) = &self.queue else {
                    return Err(IntakeError::Store(crate::queue::StoreError::NoLocalQueue));
                };
                match queue.enqueue(&job).await? {
                    EnqueueOutcome::Enqueued => {
                        tracing::info!(caller = %caller.app_id, scheme = caller.scheme.as_str(), extension = caller.extension.as_deref(), token = %caller.token_hash, "callout accepted and queued");
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
