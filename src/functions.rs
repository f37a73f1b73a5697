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

use crate::app::AppState;
use crate::intake::{self, Admission, IntakeError, IntakeRequest};
use crate::queue::{JobMessage, now_ms};
use crate::worker::{self, Step};

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

/// First value of a header in the host's `Headers` (name → array of strings, or a string).
fn header<'a>(headers: Option<&'a Value>, name: &str) -> Option<&'a str> {
    match get_ci(headers?, name)? {
        Value::Array(a) => a.first().and_then(Value::as_str),
        Value::String(s) => Some(s.as_str()),
        _ => None,
    }
}

async fn elm_callout(State(app): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let inv: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let req = get_ci(&inv, "Data")
        .and_then(|d| get_ci(d, "req"))
        .and_then(objectish)
        .unwrap_or(Value::Null);
    let headers = get_ci(&req, "Headers");
    let correlation_id = intake::correlation_id(
        header(headers, "client-request-id").or_else(|| header(headers, "x-ms-client-request-id")),
    );
    let span = tracing::info_span!("callout", %correlation_id, host = "functions");
    async {
        let body_text = get_ci(&req, "Body").and_then(Value::as_str).unwrap_or("");
        let auth = header(headers, "Authorization").map(str::as_bytes);
        let ireq = IntakeRequest {
            authorization: auth,
            duplicate_authorization: headers
                .and_then(|h| get_ci(h, "Authorization"))
                .and_then(Value::as_array)
                .is_some_and(|a| a.len() > 1),
            content_type: header(headers, "Content-Type"),
            content_length: header(headers, "Content-Length").and_then(|v| v.parse().ok()),
            body: body_text.as_bytes(),
            correlation_id: &correlation_id,
        };
        let mut outputs = Map::new();
        let mut logs = Vec::new();
        let admitted = intake::admit(&app.auth, app.config.server.max_body_bytes, app.capture.as_ref(), &ireq).await;
        let challenge = admitted.as_ref().err().and_then(IntakeError::challenge);
        let (status, body): (u16, Value) = match admitted {
            Ok((Admission::Callout(c), caller)) => {
                let job = intake::job_for(*c, &correlation_id, &app.config.worker, caller.extension.clone());
                match queue_text(job) {
                    Ok((text, job)) => {
                        tracing::info!(caller = %caller.app_id, request_id = %job.callout.request_id,
                            stage = %job.callout.stage, stage_instance_id = %job.callout.stage_instance_id, "callout accepted and queued");
                        logs.push(format!("accepted stage instance {}", job.callout.stage_instance_id));
                        outputs.insert(OUT_JOB.into(), Value::String(text));
                        (202, intake::accepted_body("accepted", &correlation_id))
                    }
                    Err(err) => {
                        err.log();
                        (err.status(), err.body(&correlation_id))
                    }
                }
            }
            Ok((Admission::ConnectionTest, _)) => {
                tracing::info!("connection test acknowledged");
                (202, intake::accepted_body("connection-test", &correlation_id))
            }
            Ok((Admission::UnknownStage(s), _)) => {
                tracing::warn!(stage = %s, "unknown stage acknowledged and ignored");
                (202, intake::accepted_body("ignored", &correlation_id))
            }
            Err(e) => {
                e.log();
                logs.push(format!("rejected: {}", e.code()));
                (e.status(), e.body(&correlation_id))
            }
        };
        let mut res_headers = json!({"Content-Type": "application/json", "x-correlation-id": correlation_id});
        if let Some(ch) = challenge {
            res_headers["WWW-Authenticate"] = json!(ch);
        }
        outputs.insert(
            OUT_HTTP.into(),
            json!({"statusCode": status, "headers": res_headers, "body": body.to_string()}),
        );
        json_response(StatusCode::OK, invocation(outputs, logs))
    }
    .instrument(span)
    .await
}

/// Azure Storage queue messages hold 64 KiB, base64-encoded by the host: about 48 KiB of text.
const MAX_QUEUE_TEXT: usize = 48 * 1024;

/// The job as queue text. A callout too large for a message first loses its verbatim copy
/// (`raw`; the parsed fields stay); if it is still too large it is refused with a 413.
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
    let msg = match JobMessage::from_queue_text(&text) {
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
    let c = &msg.callout;
    let span = tracing::info_span!("job", correlation_id = %msg.correlation_id, request_id = %c.request_id,
        stage = %c.stage, stage_instance_id = %c.stage_instance_id, dequeue_count = count, host = "functions");
    async {
        let started = Instant::now();
        let mut attempt = count;
        let mut last_error: Option<String> = None;
        loop {
            match worker::process(&app.worker, &msg, attempt, last_error.as_deref()).await {
                Step::Done(outcome) => {
                    return json_response(StatusCode::OK, invocation(Map::new(), vec![outcome]));
                }
                Step::Dead(reason) => {
                    tracing::error!(reason = %reason, "job moved to dead letters");
                    let mut out = Map::new();
                    let m = serde_json::to_value(&msg).unwrap_or(Value::Null);
                    out.insert(OUT_DEAD_LETTER.into(), dead_letter(&reason, m, count));
                    return json_response(StatusCode::OK, invocation(out, vec![format!("dead letter: {reason}")]));
                }
                Step::RetryAt { at_ms, reason } => {
                    let wait = Duration::from_millis((at_ms - now_ms()).max(0) as u64);
                    if wait <= IN_PROCESS_MAX_WAIT && started.elapsed() + wait < IN_PROCESS_BUDGET {
                        tracing::warn!(reason = %reason, wait_ms = wait.as_millis() as u64, "resume failed; retrying in process");
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                        last_error = Some(reason);
                        continue;
                    }
                    tracing::warn!(reason = %reason, "resume failed; leaving the message for the host to retry");
                    return json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        invocation(Map::new(), vec![format!("retry later: {reason}")]),
                    );
                }
            }
        }
    }
    .instrument(span)
    .await
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
