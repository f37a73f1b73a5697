//! `POST /api/servicenow/events`: ServiceNow's business rule says a bridged record closed.
//!
//! Authenticated by `X-Accessgate-Signature: v1=<HMAC-SHA256(secret, timestamp + "." + body)>`
//! (hex, or base64 as ServiceNow's `generateMac` writes it) with `X-Accessgate-Timestamp` (Unix
//! seconds; milliseconds accepted) inside a window, each signature accepted once. The event is
//! only a hint: it wakes the job parked on the ticket, and the job reads the record through the
//! Table API and decides from that. Nothing in the body is trusted beyond naming the record.
//!
//! Or, instead of the signature, `Authorization: Bearer <Entra access token>` of ServiceNow's
//! own app registration for accessgate's app (`servicenow.webhook_audiences` and
//! `webhook_caller_ids`), checked like a callout's bearer token. Such a token is reused for an
//! hour by ServiceNow's OAuth profile, so it has no per-event replay key: a repeated event only
//! wakes a job that reads the ticket again and changes nothing.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::{Bridge, wait_key};
use crate::auth::Authenticator;
use crate::auth::replay::{ReplayCache, ReplayError};
use crate::queue::JobStore;
use crate::queue::tickets::TicketPhase;
use crate::secret::Secret;
use crate::tickets::servicenow::SecretSource;

/// The largest event body read (the rule's body is about 250 bytes).
pub const MAX_BODY: usize = 16 * 1024;
/// A Key Vault secret is read again after a signature mismatch at most this often (a rotation
/// needs no restart; a forger cannot make us hammer the vault).
const SECRET_REFRESH: Duration = Duration::from_secs(60);

pub const TIMESTAMP_HEADER: &str = "x-accessgate-timestamp";
pub const SIGNATURE_HEADER: &str = "x-accessgate-signature";

/// Why an event was refused. Each has a reason code, a status and a message that names no
/// secret and echoes no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error(
        "the webhook is not configured (neither servicenow.webhook_secret nor webhook_audiences is set)"
    )]
    NotConfigured,
    #[error(
        "bearer tokens are not accepted: set servicenow.webhook_audiences and webhook_caller_ids, or sign the event"
    )]
    BearerNotAccepted,
    #[error("{0}")]
    BadToken(crate::auth::AuthError),
    #[error("the webhook secret cannot be read: {0}")]
    SecretUnavailable(String),
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("X-Accessgate-Timestamp is not a Unix time in seconds or milliseconds")]
    BadTimestamp,
    #[error("the timestamp is outside the accepted window of {0} s")]
    Stale(u64),
    #[error("X-Accessgate-Signature is not v1=<hex or base64 HMAC-SHA256>")]
    BadSignatureFormat,
    #[error("the signature does not match")]
    BadSignature,
    #[error("this signed event was already received")]
    Replayed,
    #[error("too many recent events to remember; try again")]
    ReplayFull,
    #[error("the body is larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("the body is not what the business rule sends: {0}")]
    Malformed(&'static str),
    #[error("no bridged ticket has this sys_id")]
    UnknownTicket,
    #[error("the ticket is bridged in another table")]
    UnknownTable,
    #[error("accessgate cannot record the event now: {0}")]
    Unavailable(String),
}

/// Every reason code an event refusal can carry (the OpenAPI description lists the same).
pub const CODES: [&str; 16] = [
    "webhook_not_configured",
    "bearer_not_accepted",
    "bad_token",
    "webhook_secret_unavailable",
    "missing_header",
    "bad_timestamp",
    "stale_timestamp",
    "bad_signature_format",
    "bad_signature",
    "replayed",
    "replay_cache_full",
    "body_too_large",
    "malformed_event",
    "unknown_ticket",
    "unknown_table",
    "unavailable",
];

impl WebhookError {
    pub fn code(&self) -> &'static str {
        match self {
            WebhookError::NotConfigured => "webhook_not_configured",
            WebhookError::BearerNotAccepted => "bearer_not_accepted",
            WebhookError::BadToken(_) => "bad_token",
            WebhookError::SecretUnavailable(_) => "webhook_secret_unavailable",
            WebhookError::MissingHeader(_) => "missing_header",
            WebhookError::BadTimestamp => "bad_timestamp",
            WebhookError::Stale(_) => "stale_timestamp",
            WebhookError::BadSignatureFormat => "bad_signature_format",
            WebhookError::BadSignature => "bad_signature",
            WebhookError::Replayed => "replayed",
            WebhookError::ReplayFull => "replay_cache_full",
            WebhookError::TooLarge => "body_too_large",
            WebhookError::Malformed(_) => "malformed_event",
            WebhookError::UnknownTicket => "unknown_ticket",
            WebhookError::UnknownTable => "unknown_table",
            WebhookError::Unavailable(_) => "unavailable",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            WebhookError::NotConfigured
            | WebhookError::SecretUnavailable(_)
            | WebhookError::ReplayFull
            | WebhookError::Unavailable(_) => 503,
            WebhookError::BadToken(e) if e.is_unavailable() => 503,
            WebhookError::MissingHeader(_)
            | WebhookError::BearerNotAccepted
            | WebhookError::BadToken(_)
            | WebhookError::BadTimestamp
            | WebhookError::Stale(_)
            | WebhookError::BadSignatureFormat
            | WebhookError::BadSignature => 401,
            WebhookError::Replayed => 409,
            WebhookError::TooLarge => 413,
            WebhookError::Malformed(_) | WebhookError::UnknownTable => 400,
            WebhookError::UnknownTicket => 404,
        }
    }

    /// What the caller is told (the log line says the same, with the correlation id).
    pub fn public_message(&self) -> String {
        match self {
            // Internals (the vault's answer, the store's error) go to the log only.
            WebhookError::SecretUnavailable(_) => "the webhook secret cannot be read".into(),
            WebhookError::Unavailable(_) => "accessgate cannot record the event now".into(),
            other => other.to_string(),
        }
    }
}

/// What an accepted event did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// `accepted` (the job was woken to read the ticket) or `ignored` (the ticket is already
    /// handled: a duplicate or a later edit).
    pub status: &'static str,
    pub ticket: String,
    pub woken: usize,
}

/// The verifier's memory: accepted signatures and when the vault secret was last re-read.
pub struct Webhook {
    replay: ReplayCache,
    refreshed: Mutex<Option<Instant>>,
}

impl Default for Webhook {
    fn default() -> Self {
        Webhook {
            replay: ReplayCache::new(100_000),
            refreshed: Mutex::new(None),
        }
    }
}

fn header<'h>(
    headers: &'h axum::http::HeaderMap,
    name: &'static str,
) -> Result<&'h str, WebhookError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(WebhookError::MissingHeader(name))
}

/// The signature's bytes: `v1=` then 64 hex digits or 44 characters of standard base64.
fn signature_bytes(h: &str) -> Result<Vec<u8>, WebhookError> {
    let sig = h
        .strip_prefix("v1=")
        .ok_or(WebhookError::BadSignatureFormat)?;
    if sig.len() == 64 && sig.bytes().all(|b| b.is_ascii_hexdigit()) {
        return (0..32)
            .map(|i| u8::from_str_radix(&sig[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| WebhookError::BadSignatureFormat);
    }
    use base64::Engine as _;
    match base64::engine::general_purpose::STANDARD.decode(sig) {
        Ok(b) if b.len() == 32 => Ok(b),
        _ => Err(WebhookError::BadSignatureFormat),
    }
}

/// Unix seconds from the header (a value above 10^11 is milliseconds).
fn timestamp_secs(h: &str) -> Result<i64, WebhookError> {
    if h.is_empty() || h.len() > 16 || !h.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WebhookError::BadTimestamp);
    }
    let v: i64 = h.parse().map_err(|_| WebhookError::BadTimestamp)?;
    Ok(if v > 100_000_000_000 { v / 1000 } else { v })
}

fn verify_mac(secret: &Secret, signed: &[u8], sig: &[u8]) -> bool {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes());
    hmac::verify(&key, signed, sig).is_ok()
}

impl Webhook {
    /// Checks the signature, window and replay; then wakes the ticket's job. `now` is Unix
    /// seconds.
    pub async fn handle(
        &self,
        bridge: &Bridge,
        store: &dyn JobStore,
        auth: &Authenticator,
        headers: &axum::http::HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Accepted, WebhookError> {
        let settings = &bridge.settings;
        if settings.webhook_secret.is_none() && settings.webhook_bearer.is_none() {
            return Err(WebhookError::NotConfigured);
        }
        if body.len() > MAX_BODY {
            return Err(WebhookError::TooLarge);
        }
        let authorization = headers.get(axum::http::header::AUTHORIZATION);
        match (
            authorization,
            &settings.webhook_bearer,
            &settings.webhook_secret,
        ) {
            (Some(value), Some(bearer), _) => {
                let caller = auth
                    .verify_service_bearer(
                        Some(value.as_bytes()),
                        &bearer.audiences,
                        &bearer.callers,
                    )
                    .await
                    .map_err(WebhookError::BadToken)?;
                tracing::debug!(
                    caller = caller.app_id(),
                    token = caller.token_hash(),
                    "servicenow event bearer token"
                );
            }
            (Some(_), None, _) => return Err(WebhookError::BearerNotAccepted),
            (None, _, Some(source)) => {
                self.check_signature(bridge, source, headers, body, now)
                    .await?
            }
            (None, _, None) => return Err(WebhookError::MissingHeader("authorization")),
        }
        self.wake(bridge, store, body).await
    }

    /// The HMAC path: signature, timestamp window and replay.
    async fn check_signature(
        &self,
        bridge: &Bridge,
        source: &SecretSource,
        headers: &axum::http::HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<(), WebhookError> {
        let ts_raw = header(headers, TIMESTAMP_HEADER)?;
        let sig = signature_bytes(header(headers, SIGNATURE_HEADER)?)?;
        let ts = timestamp_secs(ts_raw)?;
        let window = bridge.settings.webhook_window.as_secs();
        if ts.abs_diff(now) > window {
            return Err(WebhookError::Stale(window));
        }
        let mut signed = Vec::with_capacity(ts_raw.len() + 1 + body.len());
        signed.extend_from_slice(ts_raw.as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(body);
        let secret = bridge
            .servicenow
            .secret(source, false)
            .await
            .map_err(|e| WebhookError::SecretUnavailable(e.to_string()))?;
        if !verify_mac(&secret, &signed, &sig) {
            // A rotated Key Vault secret: read it again, at most once a minute.
            let may_refresh = matches!(source, SecretSource::KeyVault(_)) && {
                let mut g = self.refreshed.lock().unwrap_or_else(|p| p.into_inner());
                let due = g.is_none_or(|at| at.elapsed() >= SECRET_REFRESH);
                if due {
                    *g = Some(Instant::now());
                }
                due
            };
            let fresh = match may_refresh {
                true => bridge.servicenow.secret(source, true).await.ok(),
                false => None,
            };
            if !fresh.is_some_and(|s| verify_mac(&s, &signed, &sig)) {
                return Err(WebhookError::BadSignature);
            }
        }
        // Only a verified event takes a replay slot; it is remembered past the window's end.
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &signed);
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        let expires = ts.saturating_add(i64::try_from(window).unwrap_or(i64::MAX));
        match self.replay.check_and_insert(key, expires, now) {
            Ok(()) => {}
            Err(ReplayError::Seen) => return Err(WebhookError::Replayed),
            Err(ReplayError::Full) => return Err(WebhookError::ReplayFull),
        }
        Ok(())
    }

    /// An authenticated event: find the bridged ticket it names and wake its job.
    async fn wake(
        &self,
        bridge: &Bridge,
        store: &dyn JobStore,
        body: &[u8],
    ) -> Result<Accepted, WebhookError> {
        let obj = crate::strict_json::parse_object(body)
            .map_err(|_| WebhookError::Malformed("not a JSON object without duplicate members"))?;
        let obj = &obj;
        let text = |k: &str| {
            crate::json_lookup::get_ci(obj, k)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        let sys_id = text("sys_id").ok_or(WebhookError::Malformed("no sys_id"))?;
        let table = text("table").ok_or(WebhookError::Malformed("no table"))?;
        if sys_id.len() > 64 || !sys_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(WebhookError::Malformed("sys_id is not letters and digits"));
        }
        let row = bridge
            .ledger
            .by_sys_id(sys_id)
            .await
            .map_err(|e| WebhookError::Unavailable(e.to_string()))?
            .ok_or(WebhookError::UnknownTicket)?;
        if !row.table.eq_ignore_ascii_case(table) {
            return Err(WebhookError::UnknownTable);
        }
        let ticket = row.number.clone().unwrap_or_else(|| sys_id.to_owned());
        if row.phase != TicketPhase::Open {
            return Ok(Accepted {
                status: "ignored",
                ticket,
                woken: 0,
            });
        }
        let key = wait_key(sys_id).ok_or(WebhookError::Malformed("sys_id"))?;
        let woken = store
            .wake(&key)
            .await
            .map_err(|e| WebhookError::Unavailable(e.to_string()))?;
        Ok(Accepted {
            status: "accepted",
            ticket,
            woken,
        })
    }
}

/// The answer both hosts give: status and JSON body, with one log line carrying the
/// correlation id (the reason in full; the body never carries internals).
pub async fn answer(
    bridge: Option<&Bridge>,
    store: Option<&dyn JobStore>,
    auth: &Authenticator,
    headers: &axum::http::HeaderMap,
    body: &[u8],
    correlation_id: &str,
) -> (u16, Value) {
    let now = crate::queue::now_ms() / 1000;
    let result = match (bridge, store) {
        (Some(b), Some(s)) => b.webhook.handle(b, s, auth, headers, body, now).await,
        _ => Err(WebhookError::NotConfigured),
    };
    match result {
        Ok(a) => {
            tracing::info!(correlation_id, ticket = %a.ticket, status = a.status, woken = a.woken, "servicenow event");
            let code = if a.status == "accepted" { 202 } else { 200 };
            (
                code,
                serde_json::json!({"status": a.status, "ticket": a.ticket, "woken": a.woken, "correlationId": correlation_id}),
            )
        }
        Err(e) => {
            let detail = match &e {
                WebhookError::BadToken(a) => a.code(),
                other => other.code(),
            };
            tracing::warn!(correlation_id, reason = e.code(), detail, error = %e, "servicenow event refused");
            (
                e.status(),
                serde_json::json!({"error": {"code": e.code(), "message": e.public_message(), "correlationId": correlation_id}}),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_read_as_hex_or_base64() {
        let hex = format!("v1={}", "ab".repeat(32));
        assert_eq!(signature_bytes(&hex).unwrap(), vec![0xab; 32]);
        use base64::Engine as _;
        let b64 = format!(
            "v1={}",
            base64::engine::general_purpose::STANDARD.encode([7u8; 32])
        );
        assert_eq!(signature_bytes(&b64).unwrap(), vec![7u8; 32]);
        for bad in [
            "ab".repeat(32),
            "v2=00".into(),
            format!("v1={}", "ab".repeat(31)),
            format!("v1={}", "zz".repeat(32)),
            "v1=".into(),
        ] {
            assert_eq!(
                signature_bytes(&bad),
                Err(WebhookError::BadSignatureFormat),
                "{bad}"
            );
        }
    }

    #[test]
    fn timestamps_are_seconds_or_milliseconds() {
        assert_eq!(timestamp_secs("1700000000"), Ok(1_700_000_000));
        assert_eq!(timestamp_secs("1700000000123"), Ok(1_700_000_000));
        for bad in ["", "-1", "1.5", "12a", "99999999999999999"] {
            assert_eq!(
                timestamp_secs(bad),
                Err(WebhookError::BadTimestamp),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_mac_is_over_timestamp_dot_body() {
        use aws_lc_rs::hmac;
        let secret = Secret::new("s3cret");
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"s3cret");
        let tag = hmac::sign(&key, b"1700000000.{}");
        assert!(verify_mac(&secret, b"1700000000.{}", tag.as_ref()));
        assert!(!verify_mac(&secret, b"1700000000{}", tag.as_ref()));
        assert!(!verify_mac(
            &Secret::new("other"),
            b"1700000000.{}",
            tag.as_ref()
        ));
    }
}
