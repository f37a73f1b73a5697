//! Lifecycle Workflows stand-in: custom task extension callouts' processing results
//! (`taskProcessingResult`: `inProgress` → `completed` | `failed`), the task `resume` action
//! with the validation Graph applies to its body, and `GET` of a processing result.
//!
//! Why: a Lifecycle Workflows task waits for exactly one resume within its extension's window
//! (5 minutes to 3 hours); after it the task fails. The emulator holds accessgate to that.
//!
//! Sources: the v1.0 and beta schema subsets (`customTaskExtensionCallbackData{operationStatus}`,
//! `customTaskExtensionOperationStatus` = `completed | failed | unknownFutureValue`, the action's
//! parameters `source`, `type`, `data`), `identitygovernance-taskprocessingresult-resume`
//! (204 No Content; `LifecycleWorkflows.ReadWrite.All`, or an app in the extension's
//! `callbackConfiguration.authorizedApps`).
//!
//! Emulator choices where Graph documents nothing: enum members are read case-insensitively
//! (Microsoft's own template sends `Completed` and works), `unknownFutureValue` is refused; a
//! resume of a result that is no longer `inProgress` is `400 BadRequest`; a result whose window
//! has passed is `failed` with `failureReason` "timed out". Timeouts are evaluated whenever the
//! result is read.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::entra;
use crate::faults::{self, FaultTarget};
use crate::graph::{
    Rejection, auth_error, graph_caller, graph_error, parse_iso_duration, resume_answer,
};
use crate::state::{AppState, Inner, Shared};

/// First-party app id of Lifecycle Workflows (the `appid` of its callout tokens).
pub const LCW_APP_ID: &str = "ce79fdc4-cd1d-4ea5-8139-e74d7dbe0bb7";
/// Members of `customTaskExtensionOperationStatus` (v1.0 and beta), in schema order.
pub const OPERATION_STATUSES: [&str; 3] = ["completed", "failed", "unknownFutureValue"];
/// Parameters of the task `resume` action.
pub const RESUME_PARAMETERS: [&str; 3] = ["source", "type", "data"];
/// The one property of `customTaskExtensionCallbackData`.
pub const CALLBACK_DATA_PROPERTIES: [&str; 1] = ["operationStatus"];
/// Its type name, for an `@odata.type` annotation.
pub const CALLBACK_DATA_TYPE: &str =
    "microsoft.graph.identityGovernance.customTaskExtensionCallbackData";
/// The application permission that allows resuming any task.
pub const RESUME_PERMISSION: &str = "LifecycleWorkflows.ReadWrite.All";
/// Permissions that allow reading workflows and processing results.
pub const READ_PERMISSIONS: [&str; 2] = ["LifecycleWorkflows.Read.All", RESUME_PERMISSION];
/// The documented callback window of a custom task extension.
pub const WINDOW_MIN: Duration = Duration::from_secs(5 * 60);
pub const WINDOW_MAX: Duration = Duration::from_secs(3 * 3600);

/// A task processing result to create (`POST /_emulator/tasks`, [`crate::Emulator::register_task`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegisterTask {
    /// The processing result's id; default a new GUID.
    pub id: Option<String>,
    pub workflow_id: String,
    pub task_id: String,
    pub subject_id: String,
    /// The extension's `timeoutDuration` (ISO 8601); default `PT1H`. Real extensions allow
    /// `PT5M` to `PT3H`; shorter windows are accepted so tests can watch one pass.
    pub timeout: Option<String>,
    /// The extension's `callbackConfiguration.authorizedApps` (client ids); default the
    /// emulator's Graph app and managed identities.
    pub authorized_apps: Option<Vec<String>>,
}

/// A task processing result as served by `GET /_emulator/tasks/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskView {
    pub id: String,
    pub workflow_id: String,
    pub task_id: String,
    pub subject_id: String,
    /// `lifecycleWorkflowProcessingStatus`: `inProgress`, `completed` or `failed`.
    pub processing_status: String,
    pub failure_reason: Option<String>,
    /// Every resume call that reached this result (valid or not).
    pub resume_calls: u32,
    /// The accepted resume's body, verbatim.
    pub resume: Option<Value>,
    /// The API version the accepted resume was posted to.
    pub resume_version: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct TaskRecord {
    view: TaskView,
    created: jiff::Timestamp,
    started: Instant,
    window: Duration,
    authorized_apps: Vec<String>,
}

impl TaskRecord {
    /// A result still in progress past its window fails (evaluated on every read).
    fn settle_timeout(&mut self, now: Instant) {
        if self.view.processing_status == "inProgress" && now >= self.started + self.window {
            self.view.processing_status = "failed".into();
            self.view.failure_reason = Some(
                "The custom task extension did not resume the task within its timeout.".into(),
            );
        }
    }

    /// The Graph `taskProcessingResult` representation.
    fn graph_json(&self) -> Value {
        json!({
            "@odata.type": "#microsoft.graph.identityGovernance.taskProcessingResult",
            "id": self.view.id,
            "createdDateTime": self.created.to_string(),
            "processingStatus": self.view.processing_status,
            "failureReason": self.view.failure_reason,
            "subject": {"id": self.view.subject_id},
            "task": {"id": self.view.task_id},
        })
    }
}

pub(crate) fn register(state: &Shared, reg: &RegisterTask) -> anyhow::Result<TaskView> {
    anyhow::ensure!(
        !reg.workflow_id.is_empty() && !reg.task_id.is_empty() && !reg.subject_id.is_empty(),
        "workflow_id, task_id and subject_id are required"
    );
    let window = parse_iso_duration(reg.timeout.as_deref().unwrap_or("PT1H"))?;
    let id = reg
        .id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let cfg = &state.cfg;
    let authorized_apps = reg.authorized_apps.clone().unwrap_or_else(|| {
        vec![
            cfg.graph_client_id.clone(),
            cfg.managed_identity_client_id.clone(),
            cfg.user_assigned_client_id.clone(),
        ]
    });
    let mut inner = state.lock();
    // Lifecycle Workflows re-sending the callout (its retry) does not reset the result.
    if let Some(existing) = inner.tasks.get(&id) {
        return Ok(existing.view.clone());
    }
    let record = TaskRecord {
        view: TaskView {
            id: id.clone(),
            workflow_id: reg.workflow_id.clone(),
            task_id: reg.task_id.clone(),
            subject_id: reg.subject_id.clone(),
            processing_status: "inProgress".into(),
            failure_reason: None,
            resume_calls: 0,
            resume: None,
            resume_version: None,
        },
        created: jiff::Timestamp::now(),
        started: Instant::now(),
        window,
        authorized_apps,
    };
    let view = record.view.clone();
    inner.tasks.insert(id.clone(), record);
    tracing::info!(task_processing_result = %id, ?window, "task waiting for resume");
    Ok(view)
}

pub(crate) fn view(state: &Shared, id: &str) -> Option<TaskView> {
    let mut inner = state.lock();
    let r = inner.tasks.get_mut(id)?;
    r.settle_timeout(Instant::now());
    Some(r.view.clone())
}

/// A resume body that passed the schema checks; the error is Graph's message.
pub fn validate_resume_body(body: &[u8]) -> Result<&'static str, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("Invalid request body: the payload is not valid JSON ({e})."))?;
    let Value::Object(top) = value else {
        return Err("Invalid request body: expected a JSON object.".into());
    };
    for k in top.keys() {
        if !RESUME_PARAMETERS.contains(&k.as_str()) {
            return Err(format!(
                "The parameter '{k}' in the request payload is not a valid parameter for the operation 'resume'."
            ));
        }
    }
    for k in ["source", "type"] {
        if top.get(k).is_some_and(|v| !v.is_null() && !v.is_string()) {
            return Err(format!("The parameter '{k}' must be a string."));
        }
    }
    let Some(Value::Object(data)) = top.get("data") else {
        return Err("The parameter 'data' is required and must be an object.".into());
    };
    check_data(data)
}

fn check_data(data: &Map<String, Value>) -> Result<&'static str, String> {
    for (k, v) in data {
        if k == "@odata.type" {
            let t = v.as_str().unwrap_or_default().trim_start_matches('#');
            if t != CALLBACK_DATA_TYPE {
                return Err(format!(
                    "The type '{t}' is not {CALLBACK_DATA_TYPE} or a type derived from it."
                ));
            }
        } else if !CALLBACK_DATA_PROPERTIES.contains(&k.as_str()) {
            return Err(format!(
                "The property '{k}' does not exist on type '{CALLBACK_DATA_TYPE}'."
            ));
        }
    }
    let Some(status) = data.get("operationStatus").and_then(Value::as_str) else {
        return Err("The property 'operationStatus' is required.".into());
    };
    match OPERATION_STATUSES
        .iter()
        .find(|m| m.eq_ignore_ascii_case(status))
    {
        Some(&"completed") => Ok("completed"),
        Some(&"failed") => Ok("failed"),
        _ => Err(format!(
            "The value '{status}' is not a valid member of customTaskExtensionOperationStatus (completed, failed)."
        )),
    }
}

async fn resume(
    state: AppState,
    (workflow, task, id): (String, String, String),
    headers: HeaderMap,
    body: Bytes,
    version: &'static str,
) -> Response {
    {
        let mut inner = state.lock();
        inner.stats.resume_calls += 1;
        if let Some(r) = inner.tasks.get_mut(&id) {
            r.view.resume_calls += 1;
        }
    }
    if let Some(resp) = faults::apply(&state, FaultTarget::Graph).await {
        return resp;
    }
    let caller = match entra::verify_graph_token(&state, &headers) {
        Ok(c) => c,
        Err(e) => {
            state.lock().stats.resume_rejected += 1;
            return auth_error(&e, &headers);
        }
    };
    let parsed = validate_resume_body(&body);
    let mut inner = state.lock();
    let outcome = apply(
        &mut inner,
        (&workflow, &task, &id),
        &caller,
        parsed,
        &body,
        version,
    );
    resume_answer(
        inner,
        outcome,
        &headers,
        &format!("task processing result {id}"),
    )
}

fn apply(
    inner: &mut Inner,
    (workflow, task, id): (&str, &str, &str),
    caller: &entra::Caller,
    parsed: Result<&'static str, String>,
    body: &[u8],
    version: &str,
) -> Result<(), Rejection> {
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            format!(
                "taskProcessingResult {id} of task {task} of workflow {workflow} was not found."
            ),
        )
    };
    let record = inner.tasks.get_mut(id).ok_or_else(not_found)?;
    if !record.view.workflow_id.eq_ignore_ascii_case(workflow)
        || !record.view.task_id.eq_ignore_ascii_case(task)
    {
        return Err(not_found());
    }
    let allowed = caller.roles.iter().any(|r| r == RESUME_PERMISSION)
        || record
            .authorized_apps
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&caller.client_id));
    if !allowed {
        return Err((
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.".into(),
        ));
    }
    let status = parsed.map_err(|m| (StatusCode::BAD_REQUEST, "BadRequest", m))?;
    record.settle_timeout(Instant::now());
    if record.view.processing_status != "inProgress" {
        return Err((
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "The taskProcessingResult is {}, not inProgress; it cannot be resumed.",
                record.view.processing_status
            ),
        ));
    }
    record.view.processing_status = status.into();
    record.view.resume = serde_json::from_slice(body).ok();
    record.view.resume_version = Some(version.to_owned());
    Ok(())
}

async fn get_result(
    state: AppState,
    (workflow, task, id): (String, String, String),
    headers: HeaderMap,
) -> Response {
    let caller = match graph_caller(&state, &headers).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    if !caller
        .roles
        .iter()
        .any(|r| READ_PERMISSIONS.contains(&r.as_str()))
    {
        return graph_error(
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
            &headers,
        );
    }
    let mut inner = state.lock();
    match inner.tasks.get_mut(&id) {
        Some(r)
            if r.view.workflow_id.eq_ignore_ascii_case(&workflow)
                && r.view.task_id.eq_ignore_ascii_case(&task) =>
        {
            r.settle_timeout(Instant::now());
            Json(r.graph_json()).into_response()
        }
        _ => graph_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "The taskProcessingResult was not found.",
            &headers,
        ),
    }
}

/// The task routes of one Graph version.
pub(crate) fn routes(version: &'static str) -> Router<AppState> {
    let base = "/identityGovernance/lifecycleWorkflows/workflows/{wf}/tasks/{task}/taskProcessingResults/{id}";
    let resume_route =
        move |State(state): State<AppState>,
              Path(ids): Path<(String, String, String)>,
              headers: HeaderMap,
              body: Bytes| async move { resume(state, ids, headers, body, version).await };
    Router::new()
        .route(
            base,
            get(
                move |State(state): State<AppState>,
                      Path(ids): Path<(String, String, String)>,
                      headers: HeaderMap| async move {
                    get_result(state, ids, headers).await
                },
            ),
        )
        .route(&format!("{base}/resume"), post(resume_route))
        .route(
            &format!("{base}/microsoft.graph.identityGovernance.resume"),
            post(resume_route),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(v: Value) -> Result<&'static str, String> {
        validate_resume_body(v.to_string().as_bytes())
    }

    #[test]
    fn the_documented_example_is_valid() {
        // identitygovernance-taskprocessingresult-resume, and Microsoft's LCW Logic App.
        let doc = json!({"data": {"operationStatus": "Completed"}, "source": "sample", "type": "lifecycleEvent"});
        assert_eq!(check(doc), Ok("completed"));
        let failed = json!({"data": {"@odata.type": "#microsoft.graph.identityGovernance.customTaskExtensionCallbackData", "operationStatus": "failed"}});
        assert_eq!(check(failed), Ok("failed"));
    }

    #[test]
    fn graph_refuses_what_the_schema_does_not_name() {
        for bad in [
            json!({"data": {"operationStatus": "unknownFutureValue"}}),
            json!({"data": {"operationStatus": "done"}}),
            json!({"data": {}}),
            json!({"data": {"operationStatus": "completed", "statusReasons": []}}),
            json!({"data": {"@odata.type": "#microsoft.graph.accessPackageAssignmentRequestCallbackData", "operationStatus": "completed"}}),
            json!({"data": {"operationStatus": "completed"}, "extra": 1}),
            json!({"data": {"operationStatus": "completed"}, "source": 5}),
            json!({"operationStatus": "completed"}),
        ] {
            assert!(check(bad.clone()).is_err(), "{bad}");
        }
    }
}
