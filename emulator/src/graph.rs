//! Microsoft Graph stand-in for entitlement-management assignment requests: the callout state
//! machine (`waitingForCallback` → `callbackReceived` | `callbackTimedOut`), the `resume`
//! action with the validation Graph applies to its body, and `GET` of the request.
//!
//! Why: accessgate's whole job ends in a `resume` call. The emulator rejects what Graph would
//! reject (unknown parameters, wrong `@odata.type`, stage not an enum member or not the
//! callout's, foreign stage instance id, deny on a stage that cannot deny, long detail), so a
//! body that passes here has the shape Graph documents.
//!
//! Emulator choices where Graph documents nothing: a continue moves the request on
//! (`assignmentRequestCreated` → `pendingApproval`, `assignmentRequestApproved` → `delivering`,
//! granted/removed → `delivered`); a deny/cancel sets `denied`/`canceled`; a timeout sets
//! `deliveryFailed` with status `CallbackTimedOut`. Timeouts are evaluated lazily whenever the
//! state is read.
//!
//! The router of a Graph version (`routes`) also takes the routes of `directory`,
//! `lifecycle` and `governance` (catalogs, policies, extensions, catalog role assignments).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use axum::extract::Request;
use axum::middleware::Next;

use crate::approval::APPROVAL_CALLBACK_DATA_TYPE;
use crate::entra::{self, Caller, TokenError};
use crate::faults::{self, FaultTarget};
use crate::principals;
use crate::state::{AppState, Inner, Shared};

/// Members of `microsoft.graph.accessPackageCustomExtensionStage` (v1.0 and beta), in schema
/// order.
pub const STAGES: [&str; 7] = [
    "assignmentRequestCreated",
    "assignmentRequestApproved",
    "assignmentRequestGranted",
    "assignmentRequestRemoved",
    "assignmentFourteenDaysBeforeExpiration",
    "assignmentOneDayBeforeExpiration",
    "unknownFutureValue",
];
/// Dynamic approval's stage. Not in either schema subset's enum (it follows
/// `unknownFutureValue`: an evolvable member), but documented by the dynamic-approval docs;
/// it waits for a callback, and a resume at it carries an approval stage or a deny.
pub const APPROVAL_STAGE: &str = "assignmentRequestDeterminingApprovalRequirements";
/// Stages of request-workflow extensions: the only ones that can "launch and wait".
pub const REQUEST_STAGES: [&str; 4] = [
    "assignmentRequestCreated",
    "assignmentRequestApproved",
    "assignmentRequestGranted",
    "assignmentRequestRemoved",
];
/// Pre-expiration stages (launch and continue; no `CallbackUriPath`).
pub const PRE_EXPIRATION_STAGES: [&str; 2] = [
    "assignmentFourteenDaysBeforeExpiration",
    "assignmentOneDayBeforeExpiration",
];
/// The stage value of Entra's endpoint test call (not a Graph enum member).
pub const CONNECTION_TEST_STAGE: &str = "CustomExtensionConnectionTest";
/// Stages on which a resume may set `state` (deny/cancel).
pub const DENIABLE_STAGES: [&str; 2] = ["assignmentRequestCreated", "assignmentRequestApproved"];
/// Values a resume may put in `data.state` (members of `accessPackageRequestState`).
pub const RESUME_STATES: [&str; 2] = ["denied", "canceled"];
/// Parameters of the `resume` action.
pub const RESUME_PARAMETERS: [&str; 3] = ["source", "type", "data"];
/// Properties of `microsoft.graph.accessPackageAssignmentRequestCallbackData`.
pub const CALLBACK_DATA_PROPERTIES: [&str; 4] = [
    "customExtensionStageInstanceDetail",
    "customExtensionStageInstanceId",
    "stage",
    "state",
];
/// `data.@odata.type` of a resume (also accepted with a leading `#`).
pub const CALLBACK_DATA_ODATA_TYPE: &str =
    "microsoft.graph.accessPackageAssignmentRequestCallbackData";
/// Prefix of the resume `type`; the stage follows.
pub const RESUME_TYPE_PREFIX: &str = "microsoft.graph.accessPackageCustomExtensionStage.";
/// Longest accepted `customExtensionStageInstanceDetail`, in characters.
pub const DETAIL_MAX_CHARS: usize = 1000;
/// Members of `microsoft.graph.customExtensionCalloutInstanceStatus`.
pub const CALLOUT_INSTANCE_STATUSES: [&str; 6] = [
    "calloutSent",
    "callbackReceived",
    "calloutFailed",
    "callbackTimedOut",
    "waitingForCallback",
    "unknownFutureValue",
];

/// Catalog of requests registered without one.
pub const DEFAULT_CATALOG_ID: &str = "cccccccc-0000-0000-0000-000000000001";
/// How many Graph calls `GET /_emulator/graph-calls` keeps (the oldest are dropped).
pub const GRAPH_CALL_LOG_LIMIT: usize = 100_000;

/// One call to a Graph route, as listed by `GET /_emulator/graph-calls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphCall {
    /// Unix milliseconds when the call arrived.
    pub at_ms: i64,
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Status answered; 0 when a `reset` fault dropped the connection.
    pub status: u16,
}

/// Status of one callout of a request (a subset of `customExtensionCalloutInstanceStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CalloutStatus {
    WaitingForCallback,
    CallbackReceived,
    CallbackTimedOut,
}

impl CalloutStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WaitingForCallback => "waitingForCallback",
            Self::CallbackReceived => "callbackReceived",
            Self::CallbackTimedOut => "callbackTimedOut",
        }
    }
}

pub(crate) struct RequestRecord {
    id: String,
    catalog_id: String,
    request_type: String,
    state: String,
    status: String,
    created: jiff::Timestamp,
    completed: Option<jiff::Timestamp>,
    callouts: Vec<CalloutRecord>,
    resume_calls: u64,
}

struct CalloutRecord {
    stage_instance_id: String,
    stage: String,
    status: CalloutStatus,
    decision: Option<String>,
    detail: Option<String>,
    custom_extension_id: String,
    deadline: Instant,
}

/// Body of `POST /_emulator/requests`: registers a request waiting for a callback.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegisterRequest {
    /// Request id; generated when absent.
    pub id: Option<String>,
    /// One of the four request stages; default `assignmentRequestCreated`.
    pub stage: Option<String>,
    /// Generated when absent.
    pub stage_instance_id: Option<String>,
    /// ISO 8601 callback timeout; default `PT1H`.
    pub timeout: Option<String>,
    /// Extension: `requestType` of the request (default `userAdd`).
    pub request_type: Option<String>,
}

/// `GET /_emulator/requests/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestView {
    pub id: String,
    /// Request status: `WaitingForCallback`, `PendingApproval`, `Delivering`, `Delivered`,
    /// `Denied`, `Canceled` or `CallbackTimedOut`.
    pub status: String,
    /// Extension: the Graph `state` (`accessPackageRequestState`).
    pub state: String,
    /// Extension: the Graph `requestType`.
    pub request_type: String,
    /// Extension: the catalog of the request (decides catalog-role authorization).
    pub catalog_id: String,
    pub callouts: Vec<CalloutView>,
    /// Resume calls addressed to this request (accepted or not).
    pub resume_calls: u64,
}

/// One callout of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalloutView {
    pub stage_instance_id: String,
    pub stage: String,
    /// `waitingForCallback` | `callbackReceived` | `callbackTimedOut`.
    pub status: String,
    /// `continue` | `denied` | `canceled`, or `None` while no resume was accepted.
    pub decision: Option<String>,
    pub detail: Option<String>,
}

/// An accepted resume, as listed by `GET /_emulator/resumes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeRecord {
    pub request_id: String,
    pub stage_instance_id: String,
    pub stage: String,
    /// `data.state` of the resume (`denied`/`canceled`) or `None` for continue.
    pub state: Option<String>,
    pub detail: Option<String>,
    /// RFC 3339 time of acceptance.
    pub at: String,
    /// Extension: the `source` parameter.
    pub source: Option<String>,
    /// Extension: `v1.0` or `beta`.
    pub api_version: String,
    /// Extension: client id (`appid`/`azp`) of the token that resumed.
    pub client_id: String,
    /// Dynamic approval: the `approvalStage` accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_stage: Option<Value>,
    /// Extension: the `Prefer` header of the call, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefer: Option<String>,
}

/// Parses an ISO 8601 duration such as `PT1H`, `P14D` or `PT0.5S` (days are 24 hours).
pub fn parse_iso_duration(text: &str) -> anyhow::Result<Duration> {
    let span: jiff::Span = text
        .parse()
        .with_context(|| format!("invalid ISO 8601 duration {text:?}"))?;
    let signed = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .with_context(|| format!("unsupported duration {text:?} (use days or smaller units)"))?;
    if signed.is_negative() {
        bail!("duration {text:?} is negative");
    }
    Duration::try_from(signed).with_context(|| format!("duration {text:?} out of range"))
}

/// `true` for the four stages that wait for a callback.
pub fn is_request_stage(stage: &str) -> bool {
    REQUEST_STAGES.contains(&stage) || stage == APPROVAL_STAGE
}

/// Stages at which a resume may deny: before any approval (the approval stage is read the
/// way accessgate reads it; no source says).
fn is_deniable(stage: &str) -> bool {
    DENIABLE_STAGES.contains(&stage) || stage == APPROVAL_STAGE
}

fn state_while_waiting(stage: &str) -> &'static str {
    match stage {
        "assignmentRequestCreated" | APPROVAL_STAGE => "submitted",
        "assignmentRequestApproved" => "pendingApproval",
        _ => "delivering",
    }
}

fn state_after_continue(stage: &str) -> (&'static str, &'static str) {
    match stage {
        "assignmentRequestCreated" | APPROVAL_STAGE => ("pendingApproval", "PendingApproval"),
        "assignmentRequestApproved" => ("delivering", "Delivering"),
        _ => ("delivered", "Delivered"),
    }
}

/// Marks every waiting callout whose deadline has passed as timed out. Only expired entries of
/// the deadline index are visited, so the cost does not grow with the number of requests.
fn sweep(inner: &mut Inner, now: Instant) {
    while let Some(first) = inner.deadlines.first() {
        if first.0 > now {
            break;
        }
        let Some((_, request_id, stage_instance_id)) = inner.deadlines.pop_first() else {
            break;
        };
        let Some(request) = inner.requests.get_mut(&request_id) else {
            continue;
        };
        let mut timed_out = false;
        for callout in &mut request.callouts {
            if callout.stage_instance_id == stage_instance_id
                && callout.status == CalloutStatus::WaitingForCallback
                && callout.deadline <= now
            {
                callout.status = CalloutStatus::CallbackTimedOut;
                timed_out = true;
            }
        }
        let still_waiting = request
            .callouts
            .iter()
            .any(|c| c.status == CalloutStatus::WaitingForCallback);
        if timed_out && !still_waiting {
            "deliveryFailed".clone_into(&mut request.state);
            "CallbackTimedOut".clone_into(&mut request.status);
            request.completed = Some(jiff::Timestamp::now());
        }
    }
}

pub(crate) fn register(
    state: &Shared,
    reg: &RegisterRequest,
    catalog_id: Option<&str>,
) -> anyhow::Result<RequestView> {
    let stage = reg
        .stage
        .clone()
        .unwrap_or_else(|| "assignmentRequestCreated".to_owned());
    if !is_request_stage(&stage) {
        bail!(
            "stage {stage:?} cannot wait for a callback (request stages: {REQUEST_STAGES:?} and {APPROVAL_STAGE:?})"
        );
    }
    let timeout = parse_iso_duration(reg.timeout.as_deref().unwrap_or("PT1H"))?;
    let id = reg
        .id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let stage_instance_id = reg
        .stage_instance_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let now = Instant::now();
    let mut inner = state.lock();
    sweep(&mut inner, now);
    let request = inner
        .requests
        .entry(id.clone())
        .or_insert_with(|| RequestRecord {
            id: id.clone(),
            catalog_id: catalog_id.unwrap_or(DEFAULT_CATALOG_ID).to_owned(),
            request_type: reg.request_type.clone().unwrap_or_else(|| "userAdd".into()),
            state: String::new(),
            status: String::new(),
            created: jiff::Timestamp::now(),
            completed: None,
            callouts: Vec::new(),
            resume_calls: 0,
        });
    // Entra re-sending the same callout (its one retry) does not reset the request.
    if request
        .callouts
        .iter()
        .any(|c| c.stage_instance_id == stage_instance_id)
    {
        return Ok(view_of(request));
    }
    state_while_waiting(&stage).clone_into(&mut request.state);
    "WaitingForCallback".clone_into(&mut request.status);
    request.completed = None;
    request.callouts.push(CalloutRecord {
        stage_instance_id: stage_instance_id.clone(),
        stage: stage.clone(),
        status: CalloutStatus::WaitingForCallback,
        decision: None,
        detail: None,
        custom_extension_id: uuid::Uuid::new_v4().to_string(),
        deadline: now + timeout,
    });
    let view = view_of(request);
    inner
        .deadlines
        .insert((now + timeout, id.clone(), stage_instance_id.clone()));
    tracing::info!(request_id = %id, %stage, %stage_instance_id, ?timeout, "request waiting for callback");
    Ok(view)
}

fn view_of(request: &RequestRecord) -> RequestView {
    RequestView {
        id: request.id.clone(),
        status: request.status.clone(),
        state: request.state.clone(),
        request_type: request.request_type.clone(),
        catalog_id: request.catalog_id.clone(),
        callouts: request
            .callouts
            .iter()
            .map(|c| CalloutView {
                stage_instance_id: c.stage_instance_id.clone(),
                stage: c.stage.clone(),
                status: c.status.as_str().to_owned(),
                decision: c.decision.clone(),
                detail: c.detail.clone(),
            })
            .collect(),
        resume_calls: request.resume_calls,
    }
}

pub(crate) fn view(state: &Shared, id: &str) -> Option<RequestView> {
    let mut inner = state.lock();
    sweep(&mut inner, Instant::now());
    inner.requests.get(id).map(view_of)
}

pub(crate) fn resumes(state: &Shared) -> Vec<ResumeRecord> {
    state.lock().resumes.clone()
}

/// A resume body that passed the schema checks (not yet compared with the waiting callout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeBody {
    pub source: Option<String>,
    pub stage: String,
    pub stage_instance_id: String,
    pub detail: Option<String>,
    pub state: Option<String>,
    /// Dynamic approval: the validated `approvalStage`.
    pub approval_stage: Option<Value>,
}

/// Validates a resume body against the Graph schema of `resume` and
/// `accessPackageAssignmentRequestCallbackData`. The error is the Graph error message.
pub fn validate_resume_body(body: &[u8]) -> Result<ResumeBody, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|err| format!("Invalid request body: the payload is not valid JSON ({err})."))?;
    let Value::Object(top) = value else {
        return Err("Invalid request body: the payload must be a JSON object.".into());
    };
    for name in top.keys() {
        if !RESUME_PARAMETERS.contains(&name.as_str()) {
            return Err(format!(
                "The parameter '{name}' in the request payload is not a valid parameter for the operation 'resume'."
            ));
        }
    }
    let source = optional_string(&top, "source")?;
    let Some(kind) = optional_string(&top, "type")? else {
        return Err("The parameter 'type' is required for the operation 'resume'.".into());
    };
    let Some(type_stage) = kind.strip_prefix(RESUME_TYPE_PREFIX) else {
        return Err(format!(
            "Invalid value '{kind}' for parameter 'type': expected '{RESUME_TYPE_PREFIX}{{stage}}'."
        ));
    };
    let data = match top.get("data") {
        Some(Value::Object(data)) => data,
        Some(Value::Null) | None => {
            return Err("The parameter 'data' is required for the operation 'resume'.".into());
        }
        Some(_) => {
            return Err("Invalid value for parameter 'data': expected an object.".into());
        }
    };
    let data_type = match data.get("@odata.type").and_then(Value::as_str) {
        Some(t) if t.strip_prefix('#').unwrap_or(t) == CALLBACK_DATA_ODATA_TYPE => {
            CALLBACK_DATA_ODATA_TYPE
        }
        Some(t) if t.strip_prefix('#').unwrap_or(t) == APPROVAL_CALLBACK_DATA_TYPE => {
            APPROVAL_CALLBACK_DATA_TYPE
        }
        Some(t) => {
            return Err(format!(
                "Invalid '@odata.type' '{t}' in 'data': expected '#{CALLBACK_DATA_ODATA_TYPE}' (or '#{APPROVAL_CALLBACK_DATA_TYPE}' at {APPROVAL_STAGE})."
            ));
        }
        None => {
            return Err(format!(
                "'data' must carry '@odata.type' = '#{CALLBACK_DATA_ODATA_TYPE}'."
            ));
        }
    };
    let approval_properties = crate::approval::properties(APPROVAL_CALLBACK_DATA_TYPE);
    for name in data.keys() {
        let known = match data_type {
            APPROVAL_CALLBACK_DATA_TYPE => approval_properties.contains_key(name),
            _ => CALLBACK_DATA_PROPERTIES.contains(&name.as_str()),
        };
        if name != "@odata.type" && !known {
            return Err(format!(
                "The property '{name}' does not exist on type '{data_type}'. Make sure to only use property names that are defined by the type."
            ));
        }
    }
    let Some(stage) = optional_string(data, "stage")? else {
        return Err("'data.stage' is required.".into());
    };
    if !STAGES.contains(&stage.as_str()) && stage != APPROVAL_STAGE {
        return Err(format!(
            "Requested value '{stage}' was not found in enum 'microsoft.graph.accessPackageCustomExtensionStage'."
        ));
    }
    if type_stage != stage {
        return Err(format!(
            "'type' stage '{type_stage}' does not match 'data.stage' '{stage}'."
        ));
    }
    let Some(stage_instance_id) = optional_string(data, "customExtensionStageInstanceId")? else {
        return Err("'data.customExtensionStageInstanceId' is required.".into());
    };
    let detail = optional_string(data, "customExtensionStageInstanceDetail")?;
    if let Some(detail) = &detail {
        let chars = detail.chars().count();
        if chars > DETAIL_MAX_CHARS {
            return Err(format!(
                "'customExtensionStageInstanceDetail' is {chars} characters long; at most {DETAIL_MAX_CHARS} are allowed."
            ));
        }
    }
    let state = optional_string(data, "state")?;
    if let Some(state) = &state {
        if !RESUME_STATES.contains(&state.as_str()) {
            return Err(format!(
                "Invalid 'state' '{state}': a resume can only set 'denied' or 'canceled'."
            ));
        }
        if !is_deniable(&stage) {
            return Err(format!(
                "'state' can only be set for the stages {DENIABLE_STAGES:?} and {APPROVAL_STAGE:?}, not '{stage}'."
            ));
        }
    }
    let approval_stage = data.get("approvalStage").filter(|v| !v.is_null()).cloned();
    if let Some(a) = &approval_stage {
        if stage != APPROVAL_STAGE {
            return Err(format!(
                "'approvalStage' is only taken at the stage '{APPROVAL_STAGE}', not '{stage}'."
            ));
        }
        crate::approval::validate_approval_stage(a)?;
    } else if stage == APPROVAL_STAGE && state.is_none() {
        return Err(format!(
            "A resume at '{APPROVAL_STAGE}' that does not deny must carry '@odata.type' = '#{APPROVAL_CALLBACK_DATA_TYPE}' and an 'approvalStage'."
        ));
    }
    Ok(ResumeBody {
        source,
        stage,
        stage_instance_id,
        detail,
        state,
        approval_stage,
    })
}

fn optional_string(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!(
            "Invalid value for '{name}': a string (or null) is expected."
        )),
    }
}

pub(crate) fn graph_error(
    status: StatusCode,
    code: &str,
    message: &str,
    headers: &HeaderMap,
) -> Response {
    let client_request_id = headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let body = json!({"error": {
        "code": code,
        "message": message,
        "innerError": {
            "date": jiff::Timestamp::now().to_string(),
            "request-id": uuid::Uuid::new_v4(),
            "client-request-id": client_request_id,
        }
    }});
    (status, Json(body)).into_response()
}

pub(crate) fn auth_error(err: &TokenError, headers: &HeaderMap) -> Response {
    let mut resp = graph_error(
        StatusCode::UNAUTHORIZED,
        "InvalidAuthenticationToken",
        &err.to_string(),
        headers,
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(
            "Bearer realm=\"\", client_id=\"00000003-0000-0000-c000-000000000000\"",
        ),
    );
    resp
}

/// Graph routes for one API version (`v1.0` or `beta`), to be nested under `/{version}`.
pub(crate) fn routes(version: &'static str) -> Router<AppState> {
    let base = "/identityGovernance/entitlementManagement";
    let mut collections = vec!["assignmentRequests"];
    if version == "beta" {
        // Older beta collection, "will be retired soon" but still documented.
        collections.push("accessPackageAssignmentRequests");
    }
    let mut router = Router::new();
    for collection in collections {
        let resume_route = move |State(state): State<AppState>,
                                 Path(id): Path<String>,
                                 headers: HeaderMap,
                                 body: Bytes| async move {
            resume(state, id, headers, body, version).await
        };
        router = router
            .route(
                &format!("{base}/{collection}/{{id}}"),
                get(
                    move |State(state): State<AppState>,
                          Path(id): Path<String>,
                          headers: HeaderMap| async move {
                        get_request(state, id, headers, version).await
                    },
                ),
            )
            .route(
                &format!("{base}/{collection}/{{id}}/resume"),
                post(resume_route),
            )
            .route(
                &format!("{base}/{collection}/{{id}}/microsoft.graph.resume"),
                post(resume_route),
            );
    }
    router
        .merge(crate::directory::routes(version))
        .merge(crate::lifecycle::routes(version))
        .merge(crate::governance::routes(version))
}

/// Middleware on the Graph routes: records every call in the Graph call log, stamped when it
/// arrives. A call whose client gave up (the handler future is dropped mid-delay) is recorded
/// too, with status 499, so the log also counts requests that timed out.
pub(crate) async fn record_call(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    state.lock().graph_in_flight += 1;
    let mut guard = CallGuard {
        state: state.clone(),
        call: Some(GraphCall {
            at_ms: jiff::Timestamp::now().as_millisecond(),
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
            status: 499,
        }),
    };
    let resp = next.run(req).await;
    if let Some(c) = guard.call.as_mut() {
        c.status = if resp.extensions().get::<faults::ResetMarker>().is_some() {
            0
        } else {
            resp.status().as_u16()
        };
    }
    drop(guard);
    resp
}

/// Pushes its call into the log when dropped, however the handler ended.
struct CallGuard {
    state: AppState,
    call: Option<GraphCall>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            let mut inner = self.state.lock();
            inner.graph_in_flight = inner.graph_in_flight.saturating_sub(1);
            if inner.graph_calls.len() >= GRAPH_CALL_LOG_LIMIT {
                inner.graph_calls.pop_front();
            }
            inner.graph_calls.push_back(call);
        }
    }
}

/// Graph calls that arrived and have no answer yet.
pub(crate) fn graph_calls_in_flight(state: &Shared) -> u64 {
    state.lock().graph_in_flight
}

pub(crate) fn graph_calls(state: &Shared) -> Vec<GraphCall> {
    state.lock().graph_calls.iter().cloned().collect()
}

fn forbidden(headers: &HeaderMap) -> Response {
    graph_error(
        StatusCode::FORBIDDEN,
        "Authorization_RequestDenied",
        "Insufficient privileges to complete the operation.",
        headers,
    )
}

/// Whether `caller` may act on requests of `catalog_id`: one of `permissions` in its token, or
/// one of `catalog_roles` on the catalog. `None` catalog: whether it may act on any catalog.
fn authorized(
    inner: &Inner,
    caller: &Caller,
    catalog_id: Option<&str>,
    permissions: &[&str],
    catalog_roles: &[&str],
) -> bool {
    if caller
        .roles
        .iter()
        .any(|r| permissions.contains(&r.as_str()))
    {
        return true;
    }
    let Some(principal) = inner.principal_by_oid(&caller.oid) else {
        return false;
    };
    match catalog_id {
        Some(catalog) => principal.has_catalog_role(catalog, catalog_roles),
        None => principal
            .catalog_roles
            .iter()
            .any(|r| catalog_roles.contains(&r.role.as_str())),
    }
}

const GET_PERMISSIONS: [&str; 2] = [principals::READ_WRITE_ALL, principals::READ_ALL];
const GET_CATALOG_ROLES: [&str; 4] = [
    "Access package assignment manager",
    "Access package manager",
    "Catalog owner",
    "Catalog reader",
];

pub(crate) async fn get_request(
    state: AppState,
    id: String,
    headers: HeaderMap,
    version: &'static str,
) -> Response {
    let caller = match graph_caller(&state, &headers).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let (status, body) = get_request_inner(&state, &id, &caller, version);
    if status.is_success() {
        Json(body).into_response()
    } else {
        let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
        let msg = body["error"]["message"].as_str().unwrap_or("").to_owned();
        graph_error(status, &code, &msg, &headers)
    }
}

/// GET of a request (also answered inside `$batch`): status and body.
pub(crate) fn get_request_inner(
    state: &Shared,
    id: &str,
    caller: &Caller,
    version: &str,
) -> (StatusCode, Value) {
    let mut inner = state.lock();
    sweep(&mut inner, Instant::now());
    let catalog = inner.requests.get(id).map(|r| r.catalog_id.clone());
    if !authorized(
        &inner,
        caller,
        catalog.as_deref(),
        &GET_PERMISSIONS,
        &GET_CATALOG_ROLES,
    ) {
        return (
            StatusCode::FORBIDDEN,
            json!({"error": {"code": "Authorization_RequestDenied", "message": "Insufficient privileges to complete the operation."}}),
        );
    }
    let Some(request) = inner.requests.get(id) else {
        return (
            StatusCode::NOT_FOUND,
            json!({"error": {"code": "ResourceNotFound", "message": format!(
                "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
            )}}),
        );
    };
    let instances: Vec<Value> = request
        .callouts
        .iter()
        .map(|c| {
            json!({
                "id": c.stage_instance_id,
                "status": c.status.as_str(),
                "detail": c.detail,
                "customExtensionId": c.custom_extension_id,
                "externalCorrelationId": Value::Null,
            })
        })
        .collect();
    let mut body = json!({
        "@odata.context": format!("{}/{version}/$metadata#identityGovernance/entitlementManagement/assignmentRequests/$entity", state.base_url),
        "id": request.id,
        "requestType": request.request_type,
        "state": request.state,
        "status": request.status,
        "createdDateTime": request.created.to_string(),
        "completedDateTime": request.completed.map(|t| t.to_string()),
        "justification": Value::Null,
        "answers": [],
        "customExtensionCalloutInstances": instances,
    });
    // A request of the loaded world carries its justification and answers.
    if let Some(w) = inner
        .world
        .requests
        .iter()
        .find(|r| r.id.eq_ignore_ascii_case(id))
    {
        body["justification"] = json!(w.justification);
        body["answers"] = Value::Array(
            w.answers
                .iter()
                .map(crate::directory::answer_json)
                .collect(),
        );
    }
    (StatusCode::OK, body)
}

async fn resume(
    state: AppState,
    id: String,
    headers: HeaderMap,
    body: Bytes,
    version: &'static str,
) -> Response {
    {
        let mut inner = state.lock();
        inner.stats.resume_calls += 1;
        if let Some(request) = inner.requests.get_mut(&id) {
            request.resume_calls += 1;
        }
    }
    if let Some(resp) = faults::apply(&state, FaultTarget::Graph).await {
        return resp;
    }
    let caller = match entra::verify_graph_token(&state, &headers) {
        Ok(caller) => caller,
        Err(err) => {
            state.lock().stats.resume_rejected += 1;
            tracing::info!(request_id = %id, reason = %err, "resume rejected: authentication");
            return auth_error(&err, &headers);
        }
    };
    let parsed = validate_resume_body(&body);

    let mut inner = state.lock();
    let catalog = inner.requests.get(&id).map(|r| r.catalog_id.clone());
    if !authorized(
        &inner,
        &caller,
        catalog.as_deref(),
        &[principals::READ_WRITE_ALL],
        &principals::RESUME_CATALOG_ROLES,
    ) {
        inner.stats.resume_rejected += 1;
        drop(inner);
        tracing::info!(request_id = %id, client_id = %caller.client_id, "resume rejected: insufficient privileges");
        return forbidden(&headers);
    }
    let prefer = headers
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let outcome = apply_resume(&mut inner, &id, parsed, version, &caller.client_id, prefer);
    resume_answer(inner, outcome, &headers, &format!("request {id}"))
}

pub(crate) type Rejection = (StatusCode, &'static str, String);

/// The caller of a Graph route: an injected fault first, then the token; `Err` is the answer.
pub(crate) async fn graph_caller(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Caller, Response> {
    if let Some(resp) = faults::apply(state, FaultTarget::Graph).await {
        return Err(resp);
    }
    entra::verify_graph_token(state, headers).map_err(|e| auth_error(&e, headers))
}

/// A resume's answer once the request (or task) state has taken it: 204 and counted as
/// accepted, or Graph's error and counted as rejected. `what` names the resumed object.
pub(crate) fn resume_answer(
    mut inner: std::sync::MutexGuard<'_, Inner>,
    outcome: Result<(), Rejection>,
    headers: &HeaderMap,
    what: &str,
) -> Response {
    match outcome {
        Ok(()) => {
            inner.stats.resume_accepted += 1;
            drop(inner);
            tracing::info!(resumed = %what, "resume accepted");
            StatusCode::NO_CONTENT.into_response()
        }
        Err((status, code, message)) => {
            inner.stats.resume_rejected += 1;
            drop(inner);
            tracing::info!(resumed = %what, %status, %message, "resume rejected");
            graph_error(status, code, &message, headers)
        }
    }
}

fn apply_resume(
    inner: &mut Inner,
    id: &str,
    parsed: Result<ResumeBody, String>,
    version: &str,
    client_id: &str,
    prefer: Option<String>,
) -> Result<(), Rejection> {
    let bad = |message: String| (StatusCode::BAD_REQUEST, "BadRequest", message);
    sweep(inner, Instant::now());
    let Some(request) = inner.requests.get_mut(id) else {
        return Err((
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            format!(
                "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
            ),
        ));
    };
    let body = parsed.map_err(bad)?;
    // The approval-stage callback type is in v1.0's schema only.
    if body.approval_stage.is_some() && version != "v1.0" {
        return Err(bad(format!(
            "Resource type '{APPROVAL_CALLBACK_DATA_TYPE}' was not found in the {version} schema."
        )));
    }
    let status = request.status.clone();
    let mut waiting = request
        .callouts
        .iter_mut()
        .filter(|c| c.status == CalloutStatus::WaitingForCallback)
        .peekable();
    if waiting.peek().is_none() {
        return Err(bad(format!(
            "The access package assignment request '{id}' is not waiting for callback. Current status: {status}."
        )));
    }
    let Some(callout) = waiting.find(|c| c.stage_instance_id == body.stage_instance_id) else {
        return Err(bad(format!(
            "customExtensionStageInstanceId '{}' does not match the stage instance the request is waiting for.",
            body.stage_instance_id
        )));
    };
    if callout.stage != body.stage {
        return Err(bad(format!(
            "Stage '{}' does not match the stage '{}' of the waiting callout.",
            body.stage, callout.stage
        )));
    }
    callout.status = CalloutStatus::CallbackReceived;
    let deadline_key = (
        callout.deadline,
        id.to_owned(),
        callout.stage_instance_id.clone(),
    );
    callout.decision = Some(body.state.clone().unwrap_or_else(|| "continue".into()));
    callout.detail.clone_from(&body.detail);
    let (new_state, new_status) = match body.state.as_deref() {
        Some("denied") => ("denied", "Denied"),
        Some("canceled") => ("canceled", "Canceled"),
        _ => state_after_continue(&body.stage),
    };
    new_state.clone_into(&mut request.state);
    new_status.clone_into(&mut request.status);
    if body.state.is_some() || new_state == "delivered" {
        request.completed = Some(jiff::Timestamp::now());
    }
    inner.resumes.push(ResumeRecord {
        request_id: id.to_owned(),
        stage_instance_id: body.stage_instance_id,
        stage: body.stage,
        state: body.state,
        detail: body.detail,
        at: jiff::Timestamp::now().to_string(),
        source: body.source,
        api_version: version.to_owned(),
        client_id: client_id.to_owned(),
        approval_stage: body.approval_stage,
        prefer,
    });
    inner.deadlines.remove(&deadline_key);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: Value) -> Vec<u8> {
        serde_json::to_vec(&value).unwrap_or_default()
    }

    fn valid() -> Value {
        json!({
            "source": "accessgate",
            "type": "microsoft.graph.accessPackageCustomExtensionStage.assignmentRequestCreated",
            "data": {
                "@odata.type": "#microsoft.graph.accessPackageAssignmentRequestCallbackData",
                "stage": "assignmentRequestCreated",
                "customExtensionStageInstanceId": "957d0c50-466b-4840-bb5b-c92cea7141ff",
                "customExtensionStageInstanceDetail": "ok",
            }
        })
    }

    #[test]
    fn the_documented_example_is_valid() {
        assert!(validate_resume_body(&body(valid())).is_ok());
    }

    #[test]
    fn odata_type_without_hash_is_valid() {
        let mut v = valid();
        v["data"]["@odata.type"] = json!(CALLBACK_DATA_ODATA_TYPE);
        assert!(validate_resume_body(&body(v)).is_ok());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(
            parse_iso_duration("PT1H").ok(),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            parse_iso_duration("P14D").ok(),
            Some(Duration::from_secs(14 * 86400))
        );
        assert_eq!(
            parse_iso_duration("PT0.5S").ok(),
            Some(Duration::from_millis(500))
        );
        assert!(parse_iso_duration("soon").is_err());
    }
}
