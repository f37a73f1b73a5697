//! Azure Functions custom handler: the host's invocation payload protocol (functions.md §2) mapped
//! onto the same intake and worker code as the standalone server.
//!
//! - `POST /ElmCallout` (HTTP trigger + queue output `job`): admit, answer `res` = 202, and hand
//!   the job to the host as JSON text (never a bare string: the host base64-decodes any output
//!   that happens to be valid base64).
//! - `POST /ProcessJob` (queue trigger `job`): one worker step, with short in-process retries; a
//!   longer wait answers non-2xx so the host makes the message visible again later
//!   (`visibilityTimeout`, `maxDequeueCount` in host.json), which is the queue trigger's only
//!   retry signal.
//! - `POST /PoisonJob` (queue trigger on the `-poison` queue): records a dead letter (blob output
//!   `deadletter`) and logs it.
//!
//! Every answer is JSON (`Content-Type: application/json`); HTTP-trigger answers are always 2xx
//! to the host, with the caller's status inside `res`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use tracing::Instrument as _;

use crate::intake::{self, Admission, CalloutHeaders, CorrelationId, IntakeError, IntakeRequest};
use crate::queue::azure_backend::AzureJobs;
use crate::queue::store::LeaseToken;
use crate::queue::{
    Deadline, JobMessage, Lease, Outcome, Settle, Step, StoreError, Stored, Wait, now_ms,
};
use crate::state::AppState;
use crate::worker;

/// Output binding names, as in function-app/*/function.json.
pub const OUT_HTTP: &str = "res";
pub const OUT_JOB: &str = "job";
pub const OUT_DEAD_LETTER: &str = "deadletter";

/// In-process retries wait at most this long each, and stop after `IN_PROCESS_BUDGET`; past that
/// the host's queue visibility timeout takes over.
const IN_PROCESS_MAX_WAIT: Duration = Duration::from_secs(20);
const IN_PROCESS_BUDGET: Duration = Duration::from_secs(240);

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        // The host probes readiness with GET / every 25 ms until anything answers.
        .route("/", get(|| async { json_response(StatusCode::OK, json!({})) }))
        .route("/ElmCallout", post(elm_callout))
        .route("/ProcessJob", post(process_job))
        .route("/PoisonJob", post(poison_job))
        .route("/ServiceNowEvents", post(servicenow_events))
        .route("/ServiceNowPoll", post(servicenow_poll))
        .route("/PimVerdict", post(pim_verdict))
        .fallback(|| async {
            json_response(StatusCode::NOT_FOUND, json!({"Outputs": {}, "Logs": ["accessgate: no such function"], "ReturnValue": null}))
        })
        // The host wraps the caller's body as a JSON string (escaping can grow it up to 6x) next
        // to the headers: allow that much, so a large callout gets our 413 in `res`, not a 5xx.
        .layer(axum::extract::DefaultBodyLimit::max(state.config.server.max_body_bytes * 6 + 64 * 1024))
        .with_state(state)
}

fn json_response(status: StatusCode, v: Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn invocation(outputs: Map<String, Value>, logs: Vec<String>) -> Value {
    json!({"Outputs": outputs, "Logs": logs, "ReturnValue": null})
}

/// Case-insensitive object lookup.
use crate::json_lookup::get_ci_value as get_ci;

/// Values may arrive JSON-encoded once more (`"\"abc\""`); strips that layer.
fn unquote(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => {
            let t = s.trim();
            if t.starts_with('"') {
                serde_json::from_str::<String>(t)
                    .ok()
                    .or_else(|| Some(s.clone()))
            } else {
                Some(s.clone())
            }
        }
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A binding value that may be an object or a JSON string holding one.
fn objectish(v: &Value) -> Option<Value> {
    match v {
        Value::Object(_) => Some(v.clone()),
        Value::String(s) => serde_json::from_str::<Value>(s)
            .ok()
            .filter(Value::is_object),
        _ => None,
    }
}

/// An HTTP trigger's invocation payload and the request in it (`Data.req`, an object or a
/// JSON string holding one); `Null` where the host sent nothing readable.
fn http_request(body: &[u8]) -> (Value, Value) {
    let inv: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let req = get_ci(&inv, "Data")
        .and_then(|d| get_ci(d, "req"))
        .and_then(objectish)
        .unwrap_or(Value::Null);
    (inv, req)
}

/// The request's body as the host passed it (absent for a chunked client request).
fn request_body(req: &Value) -> &[u8] {
    get_ci(req, "Body")
        .and_then(Value::as_str)
        .unwrap_or("")
        .as_bytes()
}

/// The correlation id of a request the host passed: its `client-request-id`, if sane.
fn correlation_of(headers: Option<&Value>) -> CorrelationId {
    CorrelationId::from_client_request_id(
        header(headers, "client-request-id").or_else(|| header(headers, "x-ms-client-request-id")),
    )
}

/// Whether the host passed a header more than once (repeated headers come as an array).
fn repeated(headers: Option<&Value>, name: &str) -> bool {
    headers
        .and_then(|h| get_ci(h, name))
        .and_then(Value::as_array)
        .is_some_and(|a| a.len() > 1)
}

/// First value of a header in the host's `Headers` (name → array of strings, or a string).
fn header<'a>(headers: Option<&'a Value>, name: &str) -> Option<&'a str> {
    match get_ci(headers?, name)? {
        Value::Array(a) => a.first().and_then(Value::as_str),
        Value::String(s) => Some(s.as_str()),
        _ => None,
    }
}

async fn elm_callout(State(app): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let (_, req) = http_request(&body);
    let headers = get_ci(&req, "Headers");
    let correlation_id = correlation_of(headers);
    let span = tracing::info_span!("callout", %correlation_id, host = "functions");
    async {
        let mut outputs = Map::new();
        let mut logs = Vec::new();
        // The same header-level checks as the standalone server's extractor, on the headers the
        // host put in the payload.
        let call = CalloutHeaders {
            authorization: header(headers, "Authorization").map(str::as_bytes),
            duplicate_authorization: repeated(headers, "Authorization"),
            content_length: header(headers, "Content-Length").and_then(|v| v.parse().ok()),
        };
        let ireq = IntakeRequest {
            content_type: header(headers, "Content-Type"),
            body: request_body(&req),
            correlation_id: correlation_id.as_str(),
        };
        let max = app.config.server.max_body_bytes;
        let admitted = async {
            let caller = intake::authenticate(&app.auth, max, &call).await?;
            let admission = intake::admit_verified(&app.auth, &caller, max, app.capture.as_ref(), &ireq).await?;
            Ok::<_, IntakeError>((admission, caller))
        }
        .await;
        let answer = match admitted {
            Ok((Admission::Callout(c), caller)) => {
                let job = intake::job_for(*c, correlation_id.as_str(), &app.config.worker, caller.extension().map(str::to_owned));
                match queue_text(job) {
                    Ok((text, job)) => {
                        tracing::info!(caller = %caller.app_id(), request_id = %job.callout.request_id,
                            stage = %job.callout.stage, stage_instance_id = %job.callout.stage_instance_id, "callout accepted and queued");
                        logs.push(format!("accepted stage instance {}", job.callout.stage_instance_id));
                        outputs.insert(OUT_JOB.into(), Value::String(text));
                        intake::accepted("accepted", &correlation_id)
                    }
                    Err(err) => err.refuse(&correlation_id).into_response(),
                }
            }
            Ok((Admission::ConnectionTest, _)) => {
                tracing::info!("connection test acknowledged");
                intake::accepted("connection-test", &correlation_id)
            }
            Ok((Admission::Ignored, _)) => {
                tracing::warn!("a body with no stage, ids or callback acknowledged and ignored");
                intake::accepted("ignored", &correlation_id)
            }
            Err(e) => {
                logs.push(format!("rejected: {}", e.code()));
                e.refuse(&correlation_id).into_response()
            }
        };
        outputs.insert(OUT_HTTP.into(), http_output(answer).await);
        json_response(StatusCode::OK, invocation(outputs, logs))
    }
    .instrument(span)
    .await
}

/// ServiceNow's close webhook as its own HTTP function (route `servicenow/events`): the same
/// verification and answer as the standalone route.
async fn servicenow_events(State(app): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let (_, req) = http_request(&body);
    let host_headers = get_ci(&req, "Headers");
    let mut headers = axum::http::HeaderMap::new();
    for name in [
        crate::bridge::webhook::TIMESTAMP_HEADER,
        crate::bridge::webhook::SIGNATURE_HEADER,
        "authorization",
        "client-request-id",
        "x-ms-client-request-id",
    ] {
        if let Some(v) = header(host_headers, name)
            && let Ok(v) = axum::http::HeaderValue::from_str(v)
        {
            headers.insert(name, v);
        }
    }
    let correlation_id = CorrelationId::from_http(&headers);
    let raw = get_ci(&req, "Body").and_then(Value::as_str).unwrap_or("");
    let store = app
        .storage
        .as_ref()
        .map(|s| s as &dyn crate::queue::JobStore);
    let (status, answer) = crate::bridge::webhook::answer(
        app.worker.bridge.as_deref(),
        store,
        &app.auth,
        &headers,
        raw.as_bytes(),
        correlation_id.as_str(),
    )
    .await;
    let res = json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        answer,
    );
    let mut outputs = Map::new();
    outputs.insert(OUT_HTTP.into(), http_output(res).await);
    json_response(
        StatusCode::OK,
        invocation(outputs, vec![format!("servicenow event: HTTP {status}")]),
    )
}

/// A PIM custom extension's verdict as its own HTTP function (route `pim/{extension?}`): the
/// same answer as the standalone routes, synchronous, in `res`.
async fn pim_verdict(State(app): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let (inv, req) = http_request(&body);
    let headers = get_ci(&req, "Headers");
    let correlation_id = correlation_of(headers);
    // The route parameter, from the request's `Params` (or the invocation's `Metadata`).
    let extension = get_ci(&req, "Params")
        .and_then(|p| get_ci(p, "extension"))
        .or_else(|| get_ci(&inv, "Metadata").and_then(|m| get_ci(m, "extension")))
        .and_then(unquote)
        .filter(|e| !e.is_empty());
    let answer = match &app.pim {
        None => crate::pim::service::PimAnswer::not_configured(correlation_id.as_str()),
        Some(pim) => {
            let call = crate::pim::service::PimCall {
                authorization: header(headers, "Authorization").map(str::as_bytes),
                duplicate_authorization: repeated(headers, "Authorization"),
                content_type: header(headers, "Content-Type"),
                body: request_body(&req),
                extension: extension.as_deref(),
                correlation_id: correlation_id.as_str(),
            };
            let span = tracing::info_span!("pim", %correlation_id, host = "functions");
            pim.answer(&call).instrument(span).await
        }
    };
    let status = answer.status;
    let mut outputs = Map::new();
    outputs.insert(
        OUT_HTTP.into(),
        http_output(answer.into_response(correlation_id.as_str())).await,
    );
    json_response(
        StatusCode::OK,
        invocation(outputs, vec![format!("pim verdict: HTTP {status}")]),
    )
}

/// The poll's timer trigger: one round over the open bridged tickets.
async fn servicenow_poll(State(app): State<Arc<AppState>>) -> Response {
    let (Some(bridge), Some(store)) = (app.worker.bridge.as_ref(), app.storage.as_ref()) else {
        return json_response(
            StatusCode::OK,
            invocation(
                Map::new(),
                vec!["servicenow poll: no bridge configured".into()],
            ),
        );
    };
    let budget = crate::bridge::poll::Budget::new(bridge.settings.poll_calls_per_minute);
    let r = crate::bridge::poll::round(bridge, store, &budget).await;
    tracing::info!(open = r.open, calls = r.calls, closed = r.closed, missing = r.missing,
        woken = r.woken, deferred = r.deferred, errors = %r.errors.join("; "), "servicenow poll");
    let line = format!(
        "servicenow poll: {} open, {} call(s), {} woken{}",
        r.open,
        r.calls,
        r.woken,
        if r.errors.is_empty() {
            String::new()
        } else {
            format!("; errors: {}", r.errors.join("; "))
        }
    );
    // A failed round is an error to the host, so it shows in the function's failures.
    let status = if r.errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    json_response(status, invocation(Map::new(), vec![line]))
}

/// The HTTP output binding (`res`) for an answer built as for the standalone server: the same
/// status, headers and body bytes, so the two hosts cannot drift apart.
async fn http_output(resp: Response) -> Value {
    let (parts, body) = resp.into_parts();
    // Our own answers are small, in-memory bodies: this cannot fail or wait.
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let headers: Map<String, Value> = parts
        .headers
        .iter()
        .filter_map(|(name, value)| {
            let value = value.to_str().ok()?;
            Some((
                output_header_name(name.as_str()),
                Value::String(value.into()),
            ))
        })
        .collect();
    json!({
        "statusCode": parts.status.as_u16(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    })
}

/// HTTP header names are case-insensitive, but `res.headers` is a JSON object: keep the spelling
/// this output has always used (`Content-Type`, `WWW-Authenticate`, `x-correlation-id`).
fn output_header_name(lower: &str) -> String {
    match lower {
        "content-type" => "Content-Type".into(),
        "www-authenticate" => "WWW-Authenticate".into(),
        other => other.into(),
    }
}

/// Azure Storage queue messages hold 64 KiB, base64-encoded by the host: about 48 KiB of text.
const MAX_QUEUE_TEXT: usize = 48 * 1024;

/// The job as queue text. A callout too large for a message is stored without its verbatim
/// copy, as the parsed fields alone (the v1 form, with no `raw`); if that is still too large it
/// is refused with a 413.
fn queue_text(mut job: JobMessage) -> Result<(String, JobMessage), IntakeError> {
    let text = serde_json::to_string(&job).map_err(|_| IntakeError::TooLargeForQueue)?;
    if text.len() <= MAX_QUEUE_TEXT {
        return Ok((text, job));
    }
    tracing::warn!(
        bytes = text.len(),
        "callout too large for a queue message; dropping its verbatim copy"
    );
    job.callout.raw = Value::Null;
    job.callout.verbatim = None;
    let text = serde_json::to_string(&job).map_err(|_| IntakeError::TooLargeForQueue)?;
    if text.len() <= MAX_QUEUE_TEXT {
        Ok((text, job))
    } else {
        Err(IntakeError::TooLargeForQueue)
    }
}

/// `DequeueCount` arrives as `"1"`, `1` or `"\"1\""`.
fn dequeue_count(inv: &Value) -> u32 {
    get_ci(&inv["Metadata"], "DequeueCount")
        .or_else(|| get_ci(&inv["metadata"], "DequeueCount"))
        .and_then(unquote)
        .and_then(|s| s.trim().trim_matches('"').parse().ok())
        .unwrap_or(1)
}

fn dead_letter(reason: &str, message: Value, dequeue_count: u32) -> Value {
    Value::String(
        json!({
            "reason": reason,
            "deadLetteredAt": jiff::Timestamp::now().to_string(),
            "dequeueCount": dequeue_count,
            "message": message,
        })
        .to_string(),
    )
}

/// How the queue trigger answers the host once the job's step is stored.
enum HostAnswer {
    /// 200: the host deletes the message.
    Finished(String),
    /// 200 with a dead letter in the blob output.
    DeadLetter(String),
    /// Non-2xx: the host makes the message visible again later.
    RetryLater(String),
}

/// [`Settle`] for a message the Functions host delivered: finishing is answering the host;
/// parking puts a new, hidden message on the same queue (the host deletes the one it gave us).
struct HostSettle<'a> {
    storage: Option<&'a AzureJobs>,
    dequeue_count: u32,
    claimed_at: Deadline,
    answer: std::sync::Mutex<Option<HostAnswer>>,
}

impl HostSettle<'_> {
    fn answer(&self, a: HostAnswer) -> Result<Stored, StoreError> {
        if let Ok(mut slot) = self.answer.lock() {
            *slot = Some(a);
        }
        Ok(Stored::Yes)
    }

    fn take(&self) -> Option<HostAnswer> {
        self.answer.lock().ok().and_then(|mut s| s.take())
    }
}

#[async_trait::async_trait]
impl Settle for HostSettle<'_> {
    async fn complete(&self, _lease: &Lease, outcome: &Outcome) -> Result<Stored, StoreError> {
        self.answer(HostAnswer::Finished(outcome.to_string()))
    }

    async fn retry_at(
        &self,
        _l: &Lease,
        _at: Deadline,
        reason: &str,
    ) -> Result<Stored, StoreError> {
        tracing::warn!(reason = %reason, "attempt failed; leaving the message for the host to retry");
        self.answer(HostAnswer::RetryLater(reason.to_owned()))
    }

    async fn dead(&self, _lease: &Lease, reason: &str) -> Result<Stored, StoreError> {
        self.answer(HostAnswer::DeadLetter(reason.to_owned()))
    }

    async fn wait(&self, lease: &Lease, wait: &Wait) -> Result<Stored, StoreError> {
        let Some(storage) = self.storage else {
            let e = StoreError::WaitNeedsStorage;
            self.answer(HostAnswer::RetryLater(e.to_string()))?;
            return Err(e);
        };
        match storage.park_new(&lease.job, wait, self.claimed_at).await {
            Ok(()) => self.answer(HostAnswer::Finished(format!(
                "parked until {} ({}); dequeue count {}",
                wait.until, wait.reason, self.dequeue_count
            ))),
            Err(e) => {
                self.answer(HostAnswer::RetryLater(format!("cannot park the job: {e}")))?;
                Err(e)
            }
        }
    }
}

async fn process_job(State(app): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let inv: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let count = dequeue_count(&inv);
    let raw = get_ci(&inv, "Data")
        .and_then(|d| get_ci(d, "job"))
        .cloned()
        .unwrap_or(Value::Null);
    let text = match &raw {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    // The host's message is a job as the HTTP function wrote it, or an envelope this handler
    // parked (with its wait); both read as an envelope.
    let envelope = match crate::queue::azure_backend::Envelope::from_queue_text(&text) {
        Ok(m) => m,
        Err(e) => {
            // Retrying cannot fix an unreadable message: dead-letter it now.
            tracing::error!(error = %e, "queue message is not a job; dead-lettered");
            let mut out = Map::new();
            out.insert(
                OUT_DEAD_LETTER.into(),
                dead_letter(&format!("unreadable job message: {e}"), raw, count),
            );
            return json_response(
                StatusCode::OK,
                invocation(out, vec!["unreadable job message dead-lettered".into()]),
            );
        }
    };
    let settle = HostSettle {
        storage: app.storage.as_ref(),
        dequeue_count: count,
        claimed_at: Deadline::from_unix_ms(now_ms()),
        answer: std::sync::Mutex::new(None),
    };
    let woken_by = match &envelope.parked {
        None => None,
        Some(p) => match app.storage.as_ref() {
            Some(s) => match s.woken_check(p).await {
                Ok(Some(w)) => Some(w),
                // Delivered early (a recheck): park it again, unchanged.
                Ok(None) => {
                    let lease = host_lease(&envelope, count, None);
                    worker::settle(&settle, &lease, &Step::Wait(p.wait.clone())).await;
                    return host_response(&settle, &envelope.job, count);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the wait index; the host will deliver the job again");
                    return json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        invocation(Map::new(), vec![format!("retry later: {e}")]),
                    );
                }
            },
            None => Some(crate::queue::WokenBy::Timer),
        },
    };
    let mut lease = host_lease(&envelope, count, woken_by);
    let span = worker::job_span(&lease);
    async {
        let started = Instant::now();
        loop {
            let step = worker::process(&app.worker, &lease).await;
            // Short waits are retried here; a longer one goes back to the host's queue.
            if let Step::RetryAt { at, reason } = &step {
                let wait = at.remaining();
                if wait <= IN_PROCESS_MAX_WAIT && started.elapsed() + wait < IN_PROCESS_BUDGET {
                    tracing::warn!(reason = %reason, wait_ms = wait.as_millis() as u64, "attempt failed; retrying in process");
                    tokio::time::sleep(wait).await;
                    lease.attempt += 1;
                    lease.last_error = Some(reason.clone());
                    lease.woken_by = None;
                    continue;
                }
            }
            worker::settle(&settle, &lease, &step).await;
            return host_response(&settle, &lease.job, count);
        }
    }
    .instrument(span)
    .await
}

fn host_lease(
    envelope: &crate::queue::azure_backend::Envelope,
    dequeue_count: u32,
    woken_by: Option<crate::queue::WokenBy>,
) -> Lease {
    Lease {
        job: envelope.job.clone(),
        // The host's dequeue count counts attempts; a parked job starts again at 1.
        attempt: if envelope.parked.is_some() {
            1
        } else {
            dequeue_count.max(1)
        },
        last_error: envelope.last_error.clone(),
        woken_by,
        token: LeaseToken::Host,
    }
}

fn host_response(settle: &HostSettle<'_>, job: &JobMessage, count: u32) -> Response {
    match settle.take() {
        Some(HostAnswer::Finished(note)) => {
            json_response(StatusCode::OK, invocation(Map::new(), vec![note]))
        }
        Some(HostAnswer::DeadLetter(reason)) => {
            let mut out = Map::new();
            let m = serde_json::to_value(job).unwrap_or(Value::Null);
            out.insert(OUT_DEAD_LETTER.into(), dead_letter(&reason, m, count));
            json_response(
                StatusCode::OK,
                invocation(out, vec![format!("dead letter: {reason}")]),
            )
        }
        Some(HostAnswer::RetryLater(reason)) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            invocation(Map::new(), vec![format!("retry later: {reason}")]),
        ),
        None => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            invocation(
                Map::new(),
                vec!["retry later: the outcome was not stored".into()],
            ),
        ),
    }
}

async fn poison_job(body: axum::body::Bytes) -> Response {
    let inv: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let count = dequeue_count(&inv);
    let raw = get_ci(&inv, "Data")
        .and_then(|d| get_ci(d, "poison"))
        .cloned()
        .unwrap_or(Value::Null);
    let text = match &raw {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let (reason, message) = match JobMessage::from_queue_text(&text) {
        Ok(m) => {
            tracing::error!(correlation_id = %m.correlation_id, request_id = %m.callout.request_id,
                stage = %m.callout.stage, stage_instance_id = %m.callout.stage_instance_id,
                "job exhausted its retries (poison queue); dead-lettered");
            (
                "exhausted the host's retries (maxDequeueCount) without a resume".to_string(),
                serde_json::to_value(&m).unwrap_or(Value::Null),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "unreadable poison message dead-lettered");
            (format!("unreadable poison message: {e}"), raw)
        }
    };
    let mut out = Map::new();
    out.insert(OUT_DEAD_LETTER.into(), dead_letter(&reason, message, count));
    json_response(
        StatusCode::OK,
        invocation(out, vec![format!("dead letter: {reason}")]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dequeue_count_is_read_in_every_encoding() {
        assert_eq!(
            dequeue_count(&json!({"Metadata": {"DequeueCount": "3"}})),
            3
        );
        assert_eq!(dequeue_count(&json!({"Metadata": {"DequeueCount": 4}})), 4);
        assert_eq!(
            dequeue_count(&json!({"Metadata": {"dequeueCount": "\"5\""}})),
            5
        );
        assert_eq!(dequeue_count(&json!({})), 1);
    }

    #[test]
    fn headers_are_read_as_arrays_or_strings() {
        let h = json!({"Authorization": ["Bearer x"], "content-type": "application/json"});
        assert_eq!(header(Some(&h), "authorization"), Some("Bearer x"));
        assert_eq!(header(Some(&h), "Content-Type"), Some("application/json"));
        assert_eq!(header(Some(&h), "x"), None);
    }
}
