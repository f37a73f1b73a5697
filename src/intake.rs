//! The acknowledge path shared by the standalone server and the Functions HTTP trigger:
//! size limit → authentication → content type → parse → (capture). Queueing is the caller's,
//! because the two hosts queue differently; nothing here waits on Graph.
//!
//! [`IntakeError`] is the one error enum of this boundary; [`IntakeError::status`] and
//! [`IntakeError::code`] are the single mapping to HTTP used by both hosts.

use crate::auth::{AuthError, Authenticator, PopFault, VerifiedCaller};
use crate::callout::{self, CalloutError, Parsed};
use crate::capture::Capture;
use crate::queue::{JobMessage, StoreError};

/// What the hosts need from a request.
pub struct IntakeRequest<'a> {
    pub authorization: Option<&'a [u8]>,
    /// The request carried more than one `Authorization` header.
    pub duplicate_authorization: bool,
    pub content_type: Option<&'a str>,
    pub content_length: Option<u64>,
    pub body: &'a [u8],
    pub correlation_id: &'a str,
}

/// An authenticated, well-formed request.
#[derive(Debug)]
pub enum Admission {
    Callout(Box<callout::Callout>),
    ConnectionTest,
    UnknownStage(String),
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
}

impl IntakeError {
    pub fn status(&self) -> u16 {
        match self {
            IntakeError::TooLarge => 413,
            IntakeError::UnsupportedMediaType => 415,
            IntakeError::Auth(a) if a.is_unavailable() => 503,
            IntakeError::Auth(_) => 401,
            IntakeError::CatalogNotServed(_) => 403,
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
        }
    }

    pub fn public_code(&self) -> &'static str {
        match self {
            IntakeError::Auth(a) if a.is_unavailable() => "temporarily_unavailable",
            IntakeError::Auth(_) => "unauthorized",
            IntakeError::CatalogNotServed(_) => "forbidden",
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

/// Runs the acknowledge-path checks. The order matters: nothing about the body is looked at
/// before the caller is authenticated.
pub async fn admit(
    auth: &Authenticator,
    max_body: usize,
    capture: Option<&Capture>,
    req: &IntakeRequest<'_>,
) -> Result<(Admission, VerifiedCaller), IntakeError> {
    if req.content_length.is_some_and(|l| l > max_body as u64) {
        return Err(IntakeError::TooLarge);
    }
    if req.duplicate_authorization {
        return Err(IntakeError::Auth(AuthError::DuplicateAuthorization));
    }
    let caller = auth.verify(req.authorization).await?;
    let admission = admit_verified(auth, &caller, max_body, capture, req).await?;
    Ok((admission, caller))
}

/// The checks after authentication: size, content type, the PoP body hash, parse, the
/// extension's catalogs, capture. The standalone server authenticates from the headers first so
/// an anonymous client cannot make it buffer a body.
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
        .body_hash
        .as_deref()
        .is_some_and(|b| b != crate::auth::pop::body_hash(req.body))
    {
        return Err(IntakeError::Auth(AuthError::Pop(
            PopFault::BodyHashMismatch,
        )));
    }
    let parsed = callout::parse(req.body)?;
    if let (Parsed::Callout(c), Some(name)) = (&parsed, &caller.extension)
        && auth
            .extension(name)
            .is_some_and(|e| !e.serves_catalog(c.catalog.id.as_deref()))
    {
        return Err(IntakeError::CatalogNotServed(name.clone()));
    }
    if let Some(cap) = capture {
        cap.record(req.correlation_id, req.body, caller).await;
    }
    Ok(match parsed {
        Parsed::Callout(c) => Admission::Callout(c),
        Parsed::ConnectionTest => Admission::ConnectionTest,
        Parsed::UnknownStage(s) => Admission::UnknownStage(s),
        Parsed::Unrecognized => Admission::UnknownStage("(none)".into()),
    })
}

/// The JSON body of a 202: what became of the callout (`accepted`, `duplicate`,
/// `connection-test`, `ignored`) and the correlation id.
pub fn accepted_body(status: &str, correlation_id: &str) -> serde_json::Value {
    serde_json::json!({"status": status, "correlationId": correlation_id})
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
    fn correlation_ids_are_sanitized() {
        assert_eq!(correlation_id(Some("abc-123")), "abc-123");
        assert_ne!(correlation_id(Some("a\nb")), "a\nb");
        assert_eq!(correlation_id(None).len(), 36);
    }
}
