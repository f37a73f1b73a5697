//! The acknowledge path shared by the standalone server and the Functions HTTP trigger:
//! [`authenticate`] (size limit, duplicate `Authorization`, token: headers only), then
//! [`admit_verified`] (content type, body hash, parse, capture). Queueing is the caller's,
//! because the two hosts queue differently; nothing here waits on Graph.
//!
//! [`IntakeError`] is the one error enum of this boundary; [`Refusal`] is its one HTTP answer
//! (status, body, challenge, correlation header, log line) and [`accepted`] the one 202, used by
//! both hosts.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::settings::{ExtensionKind, TASK_TIMEOUT_MAX};
use crate::auth::{AuthError, Authenticator, PopFault, VerifiedCaller};
use crate::callout::{self, CalloutError, Parsed};
use crate::capture::Capture;
use crate::queue::{JobMessage, StoreError};

/// The header-level facts of a callout: everything [`authenticate`] looks at, read before any
/// body.
pub struct CalloutHeaders<'a> {
    pub authorization: Option<&'a [u8]>,
    /// The request carried more than one `Authorization` header.
    pub duplicate_authorization: bool,
    pub content_length: Option<u64>,
}

impl<'a> CalloutHeaders<'a> {
    /// From the headers of an HTTP request (the standalone server).
    pub fn from_http(h: &'a HeaderMap) -> Self {
        let mut auth = h.get_all(header::AUTHORIZATION).iter();
        let authorization = auth.next().map(HeaderValue::as_bytes);
        CalloutHeaders {
            authorization,
            duplicate_authorization: auth.next().is_some(),
            content_length: h
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        }
    }
}

/// What the hosts need from an authenticated request.
pub struct IntakeRequest<'a> {
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
    pub correlation_id: &'a str,
}

/// An authenticated, well-formed request.
#[derive(Debug)]
pub enum Admission {
    Callout(Box<callout::Callout>),
    ConnectionTest,
    /// A body that promises no callback (`Parsed::Unrecognized`): acknowledged, logged.
    Ignored,
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("body larger than the configured limit")]
    TooLarge,
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    #[error("unauthenticated: {0}")]
    Auth(#[from] AuthError),
    #[error("bad callout: {0}")]
    Callout(#[from] CalloutError),
    #[error("queue unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("the request body did not arrive in time")]
    Timeout,
    #[error("callout too large for a queue message")]
    TooLargeForQueue,
    #[error("the callout's catalog is not one that extension {0:?} serves")]
    CatalogNotServed(String),
    /// A callout of one product through (or from the caller of) the other product's extension:
    /// a Lifecycle Workflows task via an entitlement-management extension, or the reverse.
    #[error("{what} is a {got} callout, but {via} is {want}")]
    WrongKind {
        what: &'static str,
        got: &'static str,
        via: String,
        want: &'static str,
    },
}

impl IntakeError {
    pub fn status(&self) -> u16 {
        match self {
            IntakeError::TooLarge => 413,
            IntakeError::UnsupportedMediaType => 415,
            IntakeError::Auth(a) if a.is_unavailable() => 503,
            IntakeError::Auth(_) => 401,
            IntakeError::CatalogNotServed(_) | IntakeError::WrongKind { .. } => 403,
            IntakeError::Callout(CalloutError::Unsupported(_)) => 422,
            IntakeError::Callout(_) => 400,
            IntakeError::Store(_) => 503,
            IntakeError::Timeout => 408,
            IntakeError::TooLargeForQueue => 413,
        }
    }

    /// The short reason code for logs. Authentication failures all answer `unauthorized` in the
    /// response body so a caller cannot probe which check failed; the log has the real reason.
    pub fn code(&self) -> &'static str {
        match self {
            IntakeError::TooLarge => "body_too_large",
            IntakeError::UnsupportedMediaType => "unsupported_media_type",
            IntakeError::Auth(a) => a.code(),
            IntakeError::Callout(c) => c.code(),
            IntakeError::Store(_) => "queue_unavailable",
            IntakeError::Timeout => "request_timeout",
            IntakeError::TooLargeForQueue => "body_too_large",
            IntakeError::CatalogNotServed(_) => "catalog_not_served",
            IntakeError::WrongKind { .. } => "callout_kind_mismatch",
        }
    }

    pub fn public_code(&self) -> &'static str {
        match self {
            IntakeError::Auth(a) if a.is_unavailable() => "temporarily_unavailable",
            IntakeError::Auth(_) => "unauthorized",
            IntakeError::CatalogNotServed(_) | IntakeError::WrongKind { .. } => "forbidden",
            other => other.code(),
        }
    }

    /// A short message safe to return: no internals, no token content.
    pub fn public_message(&self) -> String {
        match self {
            IntakeError::Auth(a) if a.is_unavailable() => {
                "the service cannot accept callouts right now; retry later".into()
            }
            IntakeError::Store(_) => {
                "the service cannot accept callouts right now; retry later".into()
            }
            IntakeError::Auth(_) => "the request is not authenticated".into(),
            IntakeError::CatalogNotServed(_) => {
                "this endpoint does not serve callouts for that catalog".into()
            }
            IntakeError::WrongKind { got, .. } => {
                format!("this extension does not serve {got} callouts")
            }
            other => other.to_string(),
        }
    }

    /// The JSON body both hosts answer with: public code, public message, correlation id.
    pub fn body(&self, correlation_id: &str) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.public_code(), "message": self.public_message(), "correlationId": correlation_id}})
    }

    /// The one log line for a refused callout, with its specific reason code: an error when the
    /// fault is ours (5xx), a warning when it is the caller's.
    pub fn log(&self) {
        if self.status() >= 500 {
            tracing::error!(reason = self.code(), error = %self, "callout not accepted");
        } else {
            tracing::warn!(reason = self.code(), error = %self, "callout rejected");
        }
    }

    /// This error as the answer to the request with `correlation_id`.
    pub fn refuse(self, correlation_id: &CorrelationId) -> Refusal {
        Refusal {
            error: self,
            correlation_id: correlation_id.clone(),
        }
    }

    /// The `WWW-Authenticate` challenge for 401s (RFC 6750 §3), in the scheme that was
    /// expected: `PoP` unless the caller presented a bearer token or relay mode refused PoP.
    pub fn challenge(&self) -> Option<&'static str> {
        match self {
            IntakeError::Auth(a) if a.is_unavailable() => None,
            IntakeError::Auth(
                AuthError::Missing
                | AuthError::Malformed
                | AuthError::DuplicateAuthorization
                | AuthError::UnsupportedScheme,
            ) => Some("PoP, Bearer"),
            IntakeError::Auth(AuthError::BearerNotAccepted) => Some("PoP"),
            IntakeError::Auth(AuthError::PopNotAccepted | AuthError::Token(_)) => {
                Some("Bearer error=\"invalid_token\"")
            }
            IntakeError::Auth(_) => Some("PoP error=\"invalid_token\""),
            _ => None,
        }
    }
}

fn is_json(ct: &str) -> bool {
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// The header-level checks, in the one order both hosts use: the declared size, two
/// `Authorization` headers, then the token. Nothing about the body is looked at before this
/// succeeds, and the standalone server runs it before reading the body, so an anonymous client
/// cannot make it buffer up to `max_body` bytes.
pub async fn authenticate(
    auth: &Authenticator,
    max_body: usize,
    h: &CalloutHeaders<'_>,
) -> Result<VerifiedCaller, IntakeError> {
    if h.content_length.is_some_and(|l| l > max_body as u64) {
        return Err(IntakeError::TooLarge);
    }
    // Two Authorization headers: which one would a proxy in front have checked? Refuse.
    if h.duplicate_authorization {
        return Err(IntakeError::Auth(AuthError::DuplicateAuthorization));
    }
    Ok(auth.verify(h.authorization).await?)
}

/// The checks after [`authenticate`]: size, content type, the PoP body hash, parse, the
/// extension's catalogs, capture.
pub async fn admit_verified(
    auth: &Authenticator,
    caller: &VerifiedCaller,
    max_body: usize,
    capture: Option<&Capture>,
    req: &IntakeRequest<'_>,
) -> Result<Admission, IntakeError> {
    if req.body.len() > max_body {
        return Err(IntakeError::TooLarge);
    }
    // Entra sends `application/json; charset=utf-8`; a missing header is tolerated, a wrong one not.
    if req.content_type.is_some_and(|ct| !is_json(ct)) {
        return Err(IntakeError::UnsupportedMediaType);
    }
    if caller
        .body_hash()
        .is_some_and(|b| b != crate::auth::pop::body_hash(req.body))
    {
        return Err(IntakeError::Auth(AuthError::Pop(
            PopFault::BodyHashMismatch,
        )));
    }
    let mut parsed = callout::parse(req.body)?;
    if let Parsed::Callout(c) = &mut parsed {
        let ext = caller.extension().and_then(|n| auth.extension(n));
        let got = if c.task.is_some() {
            ExtensionKind::LifecycleWorkflows
        } else {
            ExtensionKind::EntitlementManagement
        };
        // The PoP token names the extension; its kind must be the callout's.
        if let Some(e) = ext
            && e.kind != got
        {
            return Err(IntakeError::WrongKind {
                what: "the body",
                got: got.name(),
                via: format!("extension {:?}", e.name),
                want: e.kind.name(),
            });
        }
        // Each product calls with its own first-party app id.
        if let Some(k) = ExtensionKind::of_caller(caller.app_id())
            && k != got
        {
            return Err(IntakeError::WrongKind {
                what: "the body",
                got: got.name(),
                via: "its caller".into(),
                want: k.name(),
            });
        }
        if let Some(e) = ext
            && !e.serves_catalog(c.catalog.id.as_deref())
        {
            return Err(IntakeError::CatalogNotServed(e.name.clone()));
        }
        if c.task.is_some() {
            // A task's callout does not carry its window; the extension's setting does.
            // It runs from the task's start (`createdDateTime`), when that lies in the past.
            let window = ext.map_or(TASK_TIMEOUT_MAX, |e| e.callback_timeout);
            let started = c.task.as_deref().and_then(|t| t.created);
            let elapsed = started
                .and_then(|t| jiff::Timestamp::now().duration_since(t).try_into().ok())
                .unwrap_or(std::time::Duration::ZERO);
            let left = window.saturating_sub(elapsed);
            if left < std::time::Duration::from_secs(60) {
                tracing::warn!(
                    window_s = window.as_secs(),
                    left_s = left.as_secs(),
                    "a Lifecycle Workflows task arrived with under a minute of its window left (createdDateTime, or extensions.NAME.callback_timeout): it will likely not be resumed in time"
                );
            }
            c.callback_timeout_secs = Some(left.as_secs());
        }
    }
    if let Some(cap) = capture {
        cap.record(req.correlation_id, req.body, caller).await;
    }
    Ok(match parsed {
        Parsed::Callout(c) => Admission::Callout(c),
        Parsed::ConnectionTest => Admission::ConnectionTest,
        Parsed::Unrecognized => Admission::Ignored,
    })
}

/// The JSON body of a 202: what became of the callout (`accepted`, `duplicate`,
/// `connection-test`, `ignored`) and the correlation id. A struct rather than a `json!` map:
/// this is written for every callout.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedBody<'a> {
    pub status: &'a str,
    pub correlation_id: &'a str,
}

/// The 202 both hosts answer once a callout is safe (queued, or nothing to queue).
pub fn accepted(status: &str, correlation_id: &CorrelationId) -> Response {
    let mut resp = (
        StatusCode::ACCEPTED,
        axum::Json(AcceptedBody {
            status,
            correlation_id: correlation_id.as_str(),
        }),
    )
        .into_response();
    correlation_id.set_header(&mut resp);
    resp
}

/// A refused callout and the correlation id it is answered under: the one HTTP form of an
/// [`IntakeError`], for both hosts (the Functions host copies its parts into `res`).
#[derive(Debug)]
pub struct Refusal {
    pub error: IntakeError,
    pub correlation_id: CorrelationId,
}

impl IntoResponse for Refusal {
    /// Status, JSON body (public code, message, correlation id), `WWW-Authenticate` on 401,
    /// `x-correlation-id`; and the one log line with the specific reason.
    fn into_response(self) -> Response {
        let e = &self.error;
        e.log();
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
        let mut resp = (status, axum::Json(e.body(self.correlation_id.as_str()))).into_response();
        if let Some(ch) = e.challenge() {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(ch));
        }
        self.correlation_id.set_header(&mut resp);
        resp
    }
}

/// Builds the durable job for an admitted callout.
pub fn job_for(
    c: callout::Callout,
    correlation_id: &str,
    cfg: &crate::worker::Settings,
    extension: Option<String>,
) -> JobMessage {
    JobMessage::new(
        c,
        correlation_id.to_owned(),
        extension,
        cfg.default_callback_timeout,
        cfg.deadline_margin,
    )
}

/// The id a callout's logs and answer carry. Decided once per request: the standalone server's
/// extractor keeps it in the request extensions so refusals and the handler agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationId(String);

impl CorrelationId {
    /// From the `client-request-id` (or `x-ms-client-request-id`) the caller sent, if sane.
    pub fn from_client_request_id(client_request_id: Option<&str>) -> Self {
        CorrelationId(correlation_id(client_request_id))
    }

    /// From HTTP request headers.
    pub fn from_http(h: &HeaderMap) -> Self {
        let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        Self::from_client_request_id(
            get("client-request-id").or_else(|| get("x-ms-client-request-id")),
        )
    }

    /// The id already decided for this request, or a new one remembered in `extensions`.
    pub fn of_request(h: &HeaderMap, extensions: &mut axum::http::Extensions) -> Self {
        if let Some(id) = extensions.get::<CorrelationId>() {
            return id.clone();
        }
        let id = Self::from_http(h);
        extensions.insert(id.clone());
        id
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn set_header(&self, resp: &mut Response) {
        // Always a valid header value: sanitized or a UUID.
        if let Ok(v) = HeaderValue::from_str(&self.0) {
            resp.headers_mut().insert("x-correlation-id", v);
        }
    }
}

impl std::fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for CorrelationId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self::of_request(&parts.headers, &mut parts.extensions))
    }
}

/// Entra sends `client-request-id`; use it as our correlation id when it is a sane token, so an
/// admin can match our logs to Entra's. Anything else gets a fresh id (no log injection).
pub fn correlation_id(from_header: Option<&str>) -> String {
    match from_header {
        Some(h)
            if !h.is_empty()
                && h.len() <= 64
                && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            h.to_owned()
        }
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/cloudevents+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
    }

    #[test]
    fn callout_headers_see_a_second_authorization_and_the_declared_length() {
        let mut h = HeaderMap::new();
        h.append(header::AUTHORIZATION, HeaderValue::from_static("PoP a"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        let c = CalloutHeaders::from_http(&h);
        assert_eq!(c.authorization, Some(&b"PoP a"[..]));
        assert!(!c.duplicate_authorization);
        assert_eq!(c.content_length, Some(12));
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert!(CalloutHeaders::from_http(&h).duplicate_authorization);
        assert!(
            CalloutHeaders::from_http(&HeaderMap::new())
                .authorization
                .is_none()
        );
    }

    #[test]
    fn a_request_keeps_the_correlation_id_it_was_first_given() {
        let h = HeaderMap::new();
        let mut ext = axum::http::Extensions::new();
        let first = CorrelationId::of_request(&h, &mut ext);
        assert_eq!(CorrelationId::of_request(&h, &mut ext), first);
    }

    #[test]
    fn a_refusal_names_its_correlation_id_in_the_body_and_header() {
        let id = CorrelationId::from_client_request_id(Some("cid-1"));
        let resp = IntakeError::Auth(AuthError::Missing)
            .refuse(&id)
            .into_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resp.headers()["x-correlation-id"], "cid-1");
        assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "PoP, Bearer");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn correlation_ids_are_sanitized() {
        assert_eq!(correlation_id(Some("abc-123")), "abc-123");
        assert_ne!(correlation_id(Some("a\nb")), "a\nb");
        assert_eq!(correlation_id(None).len(), 36);
    }
}
