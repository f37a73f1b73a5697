//! Callout payloads from entitlement management, normalized into one [`Callout`].
//!
//! The docs disagree on the wire shape (protocol.md §1.3): the sample Logic App trigger schema is
//! flat PascalCase, Graph documents a camelCase `{source,type,data}` envelope. Both are accepted,
//! field names are matched case-insensitively, and the original object is kept verbatim in
//! [`Callout::raw`] so nothing the tenant sends is lost.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::json_lookup::{get_ci, get_ci_value, take_ci};

/// An entitlement-management custom extension stage (`accessPackageCustomExtensionStage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    AssignmentRequestCreated,
    AssignmentRequestApproved,
    AssignmentRequestGranted,
    AssignmentRequestRemoved,
    AssignmentFourteenDaysBeforeExpiration,
    AssignmentOneDayBeforeExpiration,
    /// Dynamic approval: the extension returns the approval stage Entra should use. Not in the
    /// enum of either Graph subset (it follows `unknownFutureValue`, an evolvable member).
    AssignmentRequestDeterminingApprovalRequirements,
    /// A Lifecycle Workflows custom task extension callout. Not a Graph stage (LCW has one
    /// point per task): the name policy rules and logs use for it. Never read from a callout's
    /// `stage` field; the parser sets it for the LCW shape, with [`Callout::task`].
    LifecycleWorkflowTask,
    /// A PIM activation being evaluated (never queued, never resumed): the stage of the
    /// callout the PIM verdict builds so that the same checks can read it.
    PimActivation,
}

impl Stage {
    /// The entitlement-management stages (what a callout's `stage` field may name).
    pub const ALL: [Stage; 7] = [
        Stage::AssignmentRequestCreated,
        Stage::AssignmentRequestApproved,
        Stage::AssignmentRequestGranted,
        Stage::AssignmentRequestRemoved,
        Stage::AssignmentFourteenDaysBeforeExpiration,
        Stage::AssignmentOneDayBeforeExpiration,
        Stage::AssignmentRequestDeterminingApprovalRequirements,
    ];

    /// The exact Graph enum member.
    pub fn as_graph(self) -> &'static str {
        match self {
            Stage::AssignmentRequestCreated => "assignmentRequestCreated",
            Stage::AssignmentRequestApproved => "assignmentRequestApproved",
            Stage::AssignmentRequestGranted => "assignmentRequestGranted",
            Stage::AssignmentRequestRemoved => "assignmentRequestRemoved",
            Stage::AssignmentFourteenDaysBeforeExpiration => {
                "assignmentFourteenDaysBeforeExpiration"
            }
            Stage::AssignmentOneDayBeforeExpiration => "assignmentOneDayBeforeExpiration",
            Stage::AssignmentRequestDeterminingApprovalRequirements => {
                "assignmentRequestDeterminingApprovalRequirements"
            }
            Stage::LifecycleWorkflowTask => "lifecycleWorkflowTask",
            Stage::PimActivation => "pimActivation",
        }
    }

    /// An entitlement-management stage named in a callout, case-insensitively, as tenants and
    /// docs vary the casing (protocol.md §1.3).
    pub fn parse(s: &str) -> Option<Stage> {
        let s = s.trim();
        Stage::ALL
            .into_iter()
            .find(|st| st.as_graph().eq_ignore_ascii_case(s))
    }

    /// A stage named in a policy rule: the entitlement-management stages and
    /// `lifecycleWorkflowTask`.
    pub fn parse_in_policy(s: &str) -> Option<Stage> {
        Stage::parse(s).or_else(|| {
            Stage::LifecycleWorkflowTask
                .as_graph()
                .eq_ignore_ascii_case(s.trim())
                .then_some(Stage::LifecycleWorkflowTask)
        })
    }

    /// Whether this is a Lifecycle Workflows task rather than an entitlement-management stage.
    pub fn is_lifecycle(self) -> bool {
        self == Stage::LifecycleWorkflowTask
    }

    /// Only request-workflow stages support "launch and wait"; pre-expiration is
    /// launch-and-continue only (protocol.md §1.1).
    pub fn can_wait(self) -> bool {
        matches!(
            self,
            Stage::AssignmentRequestCreated
                | Stage::AssignmentRequestApproved
                | Stage::AssignmentRequestGranted
                | Stage::AssignmentRequestRemoved
                | Stage::AssignmentRequestDeterminingApprovalRequirements
                | Stage::LifecycleWorkflowTask
        )
    }

    /// The dynamic-approval stage, whose resume carries an approval stage.
    pub fn is_approval(self) -> bool {
        self == Stage::AssignmentRequestDeterminingApprovalRequirements
    }

    /// Entra accepts `state: denied` only before the assignment exists (protocol.md §3.3: the docs
    /// contradict each other; created and approved is the reading the ELM how-to gives). The
    /// dynamic-approval stage comes before any approval, so it is read the same way (no source
    /// says; its callback data derives the type that carries `state`). A Lifecycle Workflows
    /// task can always fail (`operationStatus: failed`).
    pub fn can_deny(self) -> bool {
        matches!(
            self,
            Stage::AssignmentRequestCreated
                | Stage::AssignmentRequestApproved
                | Stage::AssignmentRequestDeterminingApprovalRequirements
                | Stage::LifecycleWorkflowTask
                | Stage::PimActivation
        )
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_graph())
    }
}

/// The one rule for an identifier that goes into a Graph URL (a path segment or an OData
/// string literal) or a database key: non-empty, at most 128 characters of `[A-Za-z0-9._@-]`,
/// not `.` or `..`. Object ids and UPNs (at most 113 characters) fit; anything else is refused
/// rather than escaped. `@` is a plain path character (RFC 3986 `pchar`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Id(String);

/// What [`Id::parse`] accepts, for error messages.
pub const ID_RULE: &str = "must be 1-128 characters of A-Z a-z 0-9 . _ - @";

impl Id {
    /// The id in `s` (surrounding whitespace trimmed), or `None` when it breaks the rule.
    pub fn parse(s: &str) -> Option<Id> {
        let s = s.trim();
        let ok = !s.is_empty()
            && s.len() <= 128
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
        ok.then(|| Id(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Id {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Id::parse(&s).ok_or_else(|| format!("invalid id {s:?}"))
    }
}

impl From<Id> for String {
    fn from(i: Id) -> String {
        i.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which of the documented wire shapes the callout came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WireShape {
    /// Flat PascalCase body of the portal-generated Logic App trigger schema.
    Flat,
    /// Graph's `customExtensionCalloutRequest` `{source,type,data}` envelope.
    Envelope,
}

/// An object named by id and display name (access package, catalog, policy).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Named {
    pub id: Option<String>,
    pub display_name: Option<String>,
}

/// A user or service principal (target, requestor).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    pub id: Option<String>,
    pub object_id: Option<String>,
    pub display_name: Option<String>,
}

/// What a Lifecycle Workflows task callout names (`customTaskExtensionCalloutData`): the
/// workflow, the task and its processing result (the three ids of the resume URL), and the
/// subject's mail, UPN and manager. The subject itself is the callout's `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleTask {
    pub workflow_id: Id,
    pub workflow_name: Option<String>,
    pub workflow_version: Option<i64>,
    pub task_id: Id,
    pub task_name: Option<String>,
    pub task_processing_result_id: Id,
    /// `taskProcessingResult.createdDateTime`: when the task started (its window runs from here).
    pub created: Option<jiff::Timestamp>,
    pub subject_upn: Option<String>,
    pub subject_email: Option<String>,
    pub manager: Subject,
}

impl LifecycleTask {
    /// The workflow as texts name it: its display name, else its id.
    pub fn workflow_shown(&self) -> String {
        self.workflow_name
            .clone()
            .unwrap_or_else(|| self.workflow_id.to_string())
    }

    /// The task as texts name it: its display name, else its id.
    pub fn task_shown(&self) -> String {
        self.task_name
            .clone()
            .unwrap_or_else(|| self.task_id.to_string())
    }

    /// The documented resume path (v1.0 and beta serve it).
    pub fn resume_path(&self) -> String {
        format!(
            "/identityGovernance/lifecycleWorkflows/workflows/{}/tasks/{}/taskProcessingResults/{}/resume",
            self.workflow_id, self.task_id, self.task_processing_result_id
        )
    }

    /// Whether a `callbackUriPath` names this task's resume: the documented path, with or
    /// without `/v1.0|/beta` and with the namespaced action name the OpenAPI uses.
    pub fn names_resume(&self, path: &str) -> bool {
        let p = path.trim();
        let p = p
            .strip_prefix("/v1.0")
            .or_else(|| p.strip_prefix("/beta"))
            .unwrap_or(p);
        let segs: Vec<&str> = p.split('/').collect();
        let want = [
            "",
            "identityGovernance",
            "lifecycleWorkflows",
            "workflows",
            self.workflow_id.as_str(),
            "tasks",
            self.task_id.as_str(),
            "taskProcessingResults",
            self.task_processing_result_id.as_str(),
        ];
        segs.len() == 10
            && segs
                .iter()
                .zip(want)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
            && (segs[9].eq_ignore_ascii_case("resume")
                || segs[9].eq_ignore_ascii_case("microsoft.graph.identityGovernance.resume"))
    }
}

/// One answer the requestor gave, from the callout's `answers` or Graph's request object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    pub question_id: Option<String>,
    /// The question's text as the requestor saw it.
    pub question: Option<String>,
    pub value: String,
}

impl Answer {
    /// An `accessPackageAnswer` in Graph's camelCase or the callout's PascalCase
    /// (`value`, `answeredQuestion.{id,text}`). `None` when it has no value.
    pub fn from_json(v: &Value) -> Option<Answer> {
        let text = |o: &Value, k: &str| {
            get_ci_value(o, k)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let value = match get_ci_value(v, "value")? {
            Value::String(s) => s.clone(),
            Value::Null => return None,
            other => other.to_string(),
        };
        let q = get_ci_value(v, "answeredQuestion").unwrap_or(&Value::Null);
        Some(Answer {
            question_id: text(q, "id"),
            question: text(q, "text"),
            value,
        })
    }

    /// Whether this answers `question`, named by its text or its id (trimmed, any ASCII case).
    pub fn answers(&self, question: &str) -> bool {
        let want = question.trim();
        [&self.question_id, &self.question]
            .into_iter()
            .flatten()
            .any(|v| v.trim().eq_ignore_ascii_case(want))
    }
}

/// The callout's `answers`: kept as sent (queue messages carry them so) and parsed once into
/// [`Answer`]s, on parse and on every deserialization.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "Vec<Value>", into = "Vec<Value>")]
pub struct Answers {
    raw: Vec<Value>,
    parsed: Vec<Answer>,
}

impl Answers {
    /// The answers as received, including any that carry no value.
    pub fn raw(&self) -> &[Value] {
        &self.raw
    }
    /// The answers that carry a value.
    pub fn parsed(&self) -> &[Answer] {
        &self.parsed
    }
}

impl From<Vec<Value>> for Answers {
    fn from(raw: Vec<Value>) -> Answers {
        let parsed = raw.iter().filter_map(Answer::from_json).collect();
        Answers { raw, parsed }
    }
}

impl From<Answers> for Vec<Value> {
    fn from(a: Answers) -> Vec<Value> {
        a.raw
    }
}

/// The normalized callout: everything the worker needs, plus the original object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Callout {
    pub request_id: Id,
    pub stage: Stage,
    pub stage_instance_id: Id,
    /// `callbackConfiguration.durationBeforeTimeout` / `timeoutDuration`, in seconds.
    pub callback_timeout_secs: Option<u64>,
    pub callback_uri_path: Option<String>,
    pub request_type: Option<String>,
    pub access_package: Named,
    pub catalog: Named,
    pub assignment_policy: Named,
    pub target: Subject,
    pub requestor: Subject,
    pub answers: Answers,
    pub shape: WireShape,
    /// Set exactly when `stage` is [`Stage::LifecycleWorkflowTask`] (only [`parse`] builds one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Box<LifecycleTask>>,
    /// The callout object exactly as received (the `data` object for the envelope shape).
    pub raw: Value,
    /// The whole body as received. A job stores this rather than the fields above and parses it
    /// again when it is claimed; `None` for a callout read from an old (v1) job message.
    #[serde(skip)]
    pub verbatim: Option<Arc<str>>,
}

impl Callout {
    /// Launch-and-wait: Entra waits for a resume. Pre-expiration stages and extensions without a
    /// callback configuration are launch-and-continue and get no resume.
    pub fn expects_resume(&self) -> bool {
        // A task's callout has no callback configuration; its extension's window applies.
        self.task.is_some()
            || self.stage.can_wait()
                && (self.callback_timeout_secs.is_some() || self.callback_uri_path.is_some())
    }

    pub fn callback_timeout(&self) -> Option<Duration> {
        self.callback_timeout_secs.map(Duration::from_secs)
    }
}

/// What a body turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Callout(Box<Callout>),
    /// Entra's endpoint check when an extension is saved (`CustomExtensionConnectionTest`).
    ConnectionTest,
    /// An object with no stage, no ids and no callback path: perhaps Entra's undocumented V2
    /// endpoint test (protocol.md §2 recommends a 2xx for it). It promises no callback, so it
    /// is acknowledged and logged; anything that does promise one and is not handled is an
    /// [`CalloutError::Unsupported`] instead, never a `202` that nobody answers.
    Unrecognized,
}

/// Why a body is not a callout. Each variant has a short reason code for logs and responses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalloutError {
    #[error("body is not valid JSON")]
    NotJson,
    #[error("body is not a JSON object")]
    NotObject,
    /// Two parsers (ours, and whatever logged or forwarded the body) could read different values.
    #[error("body has a member that appears twice in one object")]
    Duplicate,
    /// Members are read whatever their case (`Stage` or `stage`); two spellings in one object
    /// would be read as one by us and perhaps as the other by another parser.
    #[error("body has two members in one object whose names differ only in case")]
    Ambiguous,
    #[error("required field {0} is missing")]
    Missing(&'static str),
    #[error("field {0} is invalid: {1}")]
    Invalid(&'static str, String),
    /// A well-formed callout this deployment does not handle (a stage it does not know, a
    /// Lifecycle Workflows task): refused, so the caller fails it now instead of waiting for a
    /// callback that would never come.
    #[error("unsupported callout: {0}")]
    Unsupported(String),
}

impl CalloutError {
    pub fn code(&self) -> &'static str {
        match self {
            CalloutError::NotJson => "malformed_json",
            CalloutError::NotObject => "not_an_object",
            CalloutError::Duplicate => "duplicate_member",
            CalloutError::Ambiguous => "ambiguous_member",
            CalloutError::Missing(_) => "missing_field",
            CalloutError::Invalid(_, _) => "invalid_field",
            CalloutError::Unsupported(_) => "unsupported_callout",
        }
    }
}

/// Case-insensitive lookup of a key in an object; a `null` counts as absent.
fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    get_ci(obj, key).filter(|v| !v.is_null())
}

fn get_obj<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Map<String, Value>> {
    get(obj, key).and_then(Value::as_object)
}

fn get_str(obj: &Map<String, Value>, key: &str) -> Option<String> {
    match get(obj, key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A field the OpenAPI description types as a string (the stage and the two ids): absent, null or
/// blank is `None` (the field is missing); any other type is refused rather than coerced.
fn get_text(obj: &Map<String, Value>, key: &'static str) -> Result<Option<String>, CalloutError> {
    match get(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim()).filter(|t| !t.is_empty()).map(str::to_owned)),
        Some(_) => Err(CalloutError::Invalid(key, "must be a string".into())),
    }
}

fn named(obj: Option<&Map<String, Value>>) -> Named {
    obj.map(|o| Named {
        id: get_str(o, "id"),
        display_name: get_str(o, "displayName"),
    })
    .unwrap_or_default()
}

fn subject(obj: Option<&Map<String, Value>>) -> Subject {
    obj.map(|o| Subject {
        id: get_str(o, "id"),
        object_id: get_str(o, "objectId"),
        display_name: get_str(o, "displayName"),
    })
    .unwrap_or_default()
}

/// Parses an ISO 8601 duration such as `PT1H`, `P3D` or `P1DT2H` (days are 24 hours; years and
/// months are refused because their length depends on a date).
pub fn parse_iso_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    // jiff also reads its "friendly" format (`1h`); Entra sends ISO 8601 only.
    if !s.starts_with(['P', 'p']) {
        return None;
    }
    let span: jiff::Span = s.parse().ok()?;
    let d = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .ok()?;
    if d.is_negative() {
        return None;
    }
    d.try_into().ok()
}

/// Whether a `callbackUriPath` names this request's resume:
/// `[/v1.0|/beta]/identityGovernance/entitlementManagement/{assignmentRequests|accessPackageAssignmentRequests}/{requestId}/resume`.
pub fn callback_path_names_request(path: &str, request_id: &Id) -> bool {
    let p = path.trim();
    let p = p
        .strip_prefix("/v1.0")
        .or_else(|| p.strip_prefix("/beta"))
        .unwrap_or(p);
    let segs: Vec<&str> = p.split('/').collect();
    segs.len() == 6
        && segs[0].is_empty()
        && segs[1].eq_ignore_ascii_case("identityGovernance")
        && segs[2].eq_ignore_ascii_case("entitlementManagement")
        && (segs[3].eq_ignore_ascii_case("assignmentRequests")
            || segs[3].eq_ignore_ascii_case("accessPackageAssignmentRequests"))
        && segs[4].eq_ignore_ascii_case(request_id.as_str())
        && segs[5].eq_ignore_ascii_case("resume")
}

/// Parses a request body into a callout, a connection test, or an unknown stage.
pub fn parse(body: &[u8]) -> Result<Parsed, CalloutError> {
    let mut top = crate::strict_json::parse_object(body).map_err(|e| match e {
        crate::strict_json::StrictError::NotJson => CalloutError::NotJson,
        crate::strict_json::StrictError::NotAnObject => CalloutError::NotObject,
        crate::strict_json::StrictError::Duplicate => CalloutError::Duplicate,
    })?;
    if crate::strict_json::has_case_variants(&top) {
        return Err(CalloutError::Ambiguous);
    }
    if let Some(data) = get_obj(&top, "data")
        && is_lifecycle(data)
    {
        let mut c = parse_lifecycle(data)?;
        c.raw = take_ci(&mut top, "data").unwrap_or(Value::Null);
        c.verbatim = std::str::from_utf8(body).ok().map(Arc::from);
        return Ok(Parsed::Callout(Box::new(c)));
    }
    // The envelope carries the callout in `data`; the flat shape carries it at the top.
    let shape = match get_obj(&top, "data") {
        Some(data)
            if get(data, "stage").is_some()
                || get(data, "customExtensionStageInstanceId").is_some()
                || get(data, "@odata.type").is_some() =>
        {
            WireShape::Envelope
        }
        _ => WireShape::Flat,
    };
    let obj = match shape {
        WireShape::Envelope => get_obj(&top, "data").unwrap_or(&top),
        WireShape::Flat => &top,
    };
    let mut parsed = parse_fields(obj, shape)?;
    if let Parsed::Callout(c) = &mut parsed {
        // The parsed tree becomes the verbatim copy: moved, not cloned.
        c.raw = match shape {
            WireShape::Envelope => take_ci(&mut top, "data").unwrap_or(Value::Null),
            WireShape::Flat => Value::Object(top),
        };
        // Valid JSON is valid UTF-8; should that ever fail, the job keeps the parsed fields (v1).
        c.verbatim = std::str::from_utf8(body).ok().map(Arc::from);
    }
    Ok(parsed)
}

/// The Lifecycle Workflows shape: `data` names a task and its processing result (the CSDL spells
/// it `taskProcessingresult`, the Logic App schema `taskProcessingResult`: both are read).
fn is_lifecycle(data: &Map<String, Value>) -> bool {
    get(data, "taskProcessingResult").is_some()
        || (get(data, "task").is_some() && get(data, "workflow").is_some())
}

/// A required id of an object in an LCW callout (`data.workflow.id`, ...).
fn lifecycle_id(
    data: &Map<String, Value>,
    object: &str,
    field: &'static str,
) -> Result<Id, CalloutError> {
    let o = get_obj(data, object).ok_or(CalloutError::Missing(field))?;
    match get_text(o, "id").map_err(|_| CalloutError::Invalid(field, "must be a string".into()))? {
        None => Err(CalloutError::Missing(field)),
        Some(s) => Id::parse(&s).ok_or_else(|| CalloutError::Invalid(field, ID_RULE.into())),
    }
}

/// A Lifecycle Workflows custom task extension callout (`customTaskExtensionCalloutData`).
fn parse_lifecycle(data: &Map<String, Value>) -> Result<Callout, CalloutError> {
    let workflow_id = lifecycle_id(data, "workflow", "data.workflow.id")?;
    let task_id = lifecycle_id(data, "task", "data.task.id")?;
    let result_id = lifecycle_id(data, "taskProcessingResult", "data.taskProcessingResult.id")?;
    let subject_id = lifecycle_id(data, "subject", "data.subject.id")?;
    let subject = get_obj(data, "subject");
    let workflow = get_obj(data, "workflow");
    let task = get_obj(data, "task");
    let result = get_obj(data, "taskProcessingResult");
    let created = match result.and_then(|r| get_str(r, "createdDateTime")) {
        None => None,
        Some(t) => Some(t.parse::<jiff::Timestamp>().map_err(|_| {
            CalloutError::Invalid(
                "data.taskProcessingResult.createdDateTime",
                "is not an ISO 8601 date and time".into(),
            )
        })?),
    };
    let workflow_version = match workflow.and_then(|w| get(w, "workflowVersion")) {
        None => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| {
            CalloutError::Invalid("data.workflow.workflowVersion", "must be an integer".into())
        })?),
    };
    let manager = subject.and_then(|s| get_obj(s, "manager"));
    let task_ref = LifecycleTask {
        workflow_id,
        workflow_name: workflow.and_then(|w| get_str(w, "displayName")),
        workflow_version,
        task_id,
        task_name: task.and_then(|t| get_str(t, "displayName")),
        task_processing_result_id: result_id.clone(),
        created,
        subject_upn: subject.and_then(|s| get_str(s, "userPrincipalName")),
        subject_email: subject.and_then(|s| get_str(s, "email")),
        manager: Subject {
            id: manager.and_then(|m| get_str(m, "id")),
            object_id: manager.and_then(|m| get_str(m, "id")),
            display_name: manager.and_then(|m| get_str(m, "displayName")),
        },
    };
    Ok(Callout {
        // The processing result is what is resumed, and it is unique per task and subject run:
        // it is both the "request" and the idempotency key.
        request_id: result_id.clone(),
        stage: Stage::LifecycleWorkflowTask,
        stage_instance_id: result_id,
        callback_timeout_secs: None,
        callback_uri_path: get_str(data, "callbackUriPath"),
        request_type: None,
        access_package: Named::default(),
        catalog: Named::default(),
        assignment_policy: Named::default(),
        target: Subject {
            id: Some(subject_id.to_string()),
            object_id: Some(subject_id.to_string()),
            display_name: subject.and_then(|s| get_str(s, "displayName")),
        },
        requestor: Subject::default(),
        answers: Answers::default(),
        shape: WireShape::Envelope,
        task: Some(Box::new(task_ref)),
        raw: Value::Null,
        verbatim: None,
    })
}

/// The callout's fields in `obj` (the top object, or the envelope's `data`).
fn parse_fields(obj: &Map<String, Value>, shape: WireShape) -> Result<Parsed, CalloutError> {
    let stage_text = get_text(obj, "stage")?;
    // The legacy ("Regular") test event is `Event: CustomActionConnectionTest` (protocol.md §2).
    let is_test = |s: &str| {
        s.eq_ignore_ascii_case("CustomExtensionConnectionTest")
            || s.eq_ignore_ascii_case("CustomActionConnectionTest")
    };
    if stage_text.as_deref().is_some_and(is_test)
        || get_str(obj, "event").as_deref().is_some_and(is_test)
    {
        return Ok(Parsed::ConnectionTest);
    }
    let Some(stage_text) = stage_text else {
        let has_ids = get(obj, "customExtensionStageInstanceId").is_some()
            || get(obj, "accessPackageAssignmentRequestId").is_some()
            || get(obj, "callbackUriPath").is_some();
        return if has_ids {
            Err(CalloutError::Missing("stage"))
        } else {
            Ok(Parsed::Unrecognized)
        };
    };
    let Some(stage) = Stage::parse(&stage_text) else {
        return Err(CalloutError::Unsupported(format!(
            "stage {} is not one accessgate handles ({})",
            quoted(&stage_text),
            Stage::ALL.map(Stage::as_graph).join(", ")
        )));
    };

    let stage_instance_id = match get_text(obj, "customExtensionStageInstanceId")? {
        None => return Err(CalloutError::Missing("customExtensionStageInstanceId")),
        Some(s) => Id::parse(&s).ok_or_else(|| {
            CalloutError::Invalid("customExtensionStageInstanceId", ID_RULE.into())
        })?,
    };
    let request_id = match get_text(obj, "accessPackageAssignmentRequestId")? {
        None => return Err(CalloutError::Missing("accessPackageAssignmentRequestId")),
        Some(s) => Id::parse(&s).ok_or_else(|| {
            CalloutError::Invalid("accessPackageAssignmentRequestId", ID_RULE.into())
        })?,
    };

    let callback_timeout_secs = match get_obj(obj, "callbackConfiguration") {
        None => None,
        Some(cb) => {
            match get_str(cb, "durationBeforeTimeout").or_else(|| get_str(cb, "timeoutDuration")) {
                None => None,
                Some(d) => Some(
                    parse_iso_duration(&d)
                        .ok_or_else(|| {
                            CalloutError::Invalid(
                                "callbackConfiguration.durationBeforeTimeout",
                                format!("{d:?} is not an ISO 8601 duration"),
                            )
                        })?
                        .as_secs(),
                ),
            }
        }
    };

    let callback_uri_path = get_str(obj, "callbackUriPath");
    let assignment = get_obj(obj, "assignment");
    let answers = match get(obj, "answers") {
        Some(Value::Array(a)) => Answers::from(a.clone()),
        _ => Answers::default(),
    };

    Ok(Parsed::Callout(Box::new(Callout {
        request_id,
        stage,
        stage_instance_id,
        callback_timeout_secs,
        callback_uri_path,
        request_type: get_str(obj, "requestType"),
        access_package: named(get_obj(obj, "accessPackage")),
        catalog: named(get_obj(obj, "accessPackageCatalog")),
        assignment_policy: named(assignment.and_then(|a| get_obj(a, "assignmentPolicy"))),
        target: subject(assignment.and_then(|a| get_obj(a, "target"))),
        requestor: subject(get_obj(obj, "requestor")),
        answers,
        shape,
        task: None,
        raw: Value::Null,
        verbatim: None,
    })))
}

/// Caller text for a message: quoted, control characters dropped, at most 80 characters.
fn quoted(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).take(80).collect();
    format!("{clean:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callout(p: Parsed) -> Callout {
        match p {
            Parsed::Callout(c) => *c,
            other => panic!("expected a callout, got {other:?}"),
        }
    }

    #[test]
    fn flat_pascal_case_body_parses() {
        let body = br#"{"AccessPackageAssignmentRequestId":"r1","CustomExtensionStageInstanceId":"s1",
            "Stage":"assignmentRequestCreated","CallbackUriPath":"/identityGovernance/entitlementManagement/assignmentRequests/r1/resume",
            "CallbackConfiguration":{"DurationBeforeTimeout":"PT1H"},
            "AccessPackage":{"Id":"ap","DisplayName":"Sales"},"AccessPackageCatalog":{"Id":"cat","DisplayName":"General"},
            "Assignment":{"Id":"a","Target":{"ObjectId":"u1","DisplayName":"Ada"},"AssignmentPolicy":{"Id":"p","DisplayName":"pol"}},
            "Requestor":{"ObjectId":"u2"},"Answers":[{"x":1}],"SomethingNew":true}"#;
        let c = callout(parse(body).unwrap());
        assert_eq!(c.request_id.as_str(), "r1");
        assert_eq!(c.stage, Stage::AssignmentRequestCreated);
        assert_eq!(c.callback_timeout_secs, Some(3600));
        assert_eq!(c.access_package.display_name.as_deref(), Some("Sales"));
        assert_eq!(c.catalog.id.as_deref(), Some("cat"));
        assert_eq!(c.target.object_id.as_deref(), Some("u1"));
        assert_eq!(c.assignment_policy.id.as_deref(), Some("p"));
        assert_eq!(c.shape, WireShape::Flat);
        assert_eq!(c.answers.raw().len(), 1);
        assert!(
            c.answers.parsed().is_empty(),
            "an answer without a value is kept raw only"
        );
        assert_eq!(c.raw["SomethingNew"], Value::Bool(true));
        assert!(c.expects_resume());
    }

    #[test]
    fn graph_envelope_parses_with_timeout_duration() {
        let body = br##"{"source":"x","type":"t","data":{"@odata.type":"#microsoft.graph.accessPackageAssignmentRequestCalloutData",
            "accessPackageAssignmentRequestId":"r2","customExtensionStageInstanceId":"s2","stage":"AssignmentRequestApproved",
            "callbackConfiguration":{"timeoutDuration":"P1DT2H"}}}"##;
        let c = callout(parse(body).unwrap());
        assert_eq!(c.stage, Stage::AssignmentRequestApproved);
        assert_eq!(c.callback_timeout_secs, Some(26 * 3600));
        assert_eq!(c.shape, WireShape::Envelope);
    }

    #[test]
    fn connection_test_and_unknown_stage_are_recognised() {
        assert_eq!(
            parse(br#"{"Stage":"CustomExtensionConnectionTest"}"#),
            Ok(Parsed::ConnectionTest)
        );
        assert_eq!(
            parse(br#"{"Event":"CustomActionConnectionTest"}"#),
            Ok(Parsed::ConnectionTest)
        );
        let e = parse(
            br#"{"Stage":"assignmentRequestSomethingNew","CustomExtensionStageInstanceId":"s"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code(), "unsupported_callout");
        assert!(
            e.to_string().contains("\"assignmentRequestSomethingNew\""),
            "{e}"
        );
        let c = callout(parse(br#"{"Stage":"AssignmentRequestDeterminingApprovalRequirements","CustomExtensionStageInstanceId":"s","AccessPackageAssignmentRequestId":"r","CallbackConfiguration":{"DurationBeforeTimeout":"PT1H"}}"#).unwrap());
        assert!(c.stage.is_approval() && c.expects_resume() && c.stage.can_deny());
        // Caller text in the message is quoted, cut and stripped of control characters.
        let e = parse(format!(r#"{{"Stage":"x\n\u001b[31m{}"}}"#, "y".repeat(500)).as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains('\n') && !e.contains('\u{1b}') && e.len() < 500,
            "{e}"
        );
        // Nothing that promises a callback is "unrecognized".
        assert_eq!(
            parse(br#"{"CallbackUriPath":"/x/resume"}"#),
            Err(CalloutError::Missing("stage"))
        );
        assert_eq!(parse(br#"{"source":"x"}"#), Ok(Parsed::Unrecognized));
    }

    /// The shape of ../shared/data/lcw-logicapp-trigger-schema.json.
    const LCW: &str = r#"{"type":"lifecycleEvent","source":"sample","data":{"callbackUriPath":"/identityGovernance/lifecycleWorkflows/workflows/w1/tasks/t1/taskProcessingResults/r1/resume",
        "subject":{"id":"u1","displayName":"Lee","email":"lee@contoso.com","userPrincipalName":"lee@contoso.com","manager":{"id":"m1","displayName":"Mo","email":"mo@contoso.com"}},
        "task":{"id":"t1","displayName":"Open ticket"},"taskProcessingResult":{"id":"r1","createdDateTime":"2026-12-04T10:00:00Z"},
        "workflow":{"id":"w1","displayName":"Leaver","workflowVersion":3}}}"#;

    #[test]
    fn lifecycle_task_callouts_parse() {
        let c = callout(parse(LCW.as_bytes()).unwrap());
        assert_eq!(c.stage, Stage::LifecycleWorkflowTask);
        assert_eq!(
            (c.request_id.as_str(), c.stage_instance_id.as_str()),
            ("r1", "r1")
        );
        assert_eq!(c.target.object_id.as_deref(), Some("u1"));
        let t = c.task.as_deref().unwrap();
        assert_eq!((t.workflow_id.as_str(), t.task_id.as_str()), ("w1", "t1"));
        assert_eq!(t.workflow_version, Some(3));
        assert_eq!(t.manager.id.as_deref(), Some("m1"));
        assert_eq!(t.created.map(|c| c.as_second()), Some(1_796_378_400));
        assert!(c.expects_resume() && c.stage.can_deny());
        assert!(t.names_resume(c.callback_uri_path.as_deref().unwrap()));
        assert!(t.names_resume("/beta/identityGovernance/lifecycleWorkflows/workflows/W1/tasks/t1/taskProcessingResults/r1/microsoft.graph.identityGovernance.resume"));
        assert!(!t.names_resume("/identityGovernance/lifecycleWorkflows/workflows/w1/tasks/t1/taskProcessingResults/r2/resume"));
        assert!(!t.names_resume("/identityGovernance/lifecycleWorkflows/workflows/w1/tasks/t1/taskProcessingResults/r1/resume/x"));
        // The CSDL's spelling of the processing result is read too.
        let csdl = LCW.replace("taskProcessingResult", "taskProcessingresult");
        assert_eq!(
            callout(parse(csdl.as_bytes()).unwrap()).request_id.as_str(),
            "r1"
        );
        // A round trip through a queue message (v2: verbatim) gives the same callout.
        let again = callout(parse(c.verbatim.as_deref().unwrap().as_bytes()).unwrap());
        assert_eq!(again, c);
    }

    #[test]
    fn lifecycle_task_callouts_without_their_ids_are_refused_by_name() {
        for (from, to, field) in [
            (
                r#""workflow":{"id":"w1","#,
                r#""workflow":{"#,
                "data.workflow.id",
            ),
            (r#""task":{"id":"t1","#, r#""task":{"#, "data.task.id"),
            (
                r#""taskProcessingResult":{"id":"r1","#,
                r#""taskProcessingResult":{"#,
                "data.taskProcessingResult.id",
            ),
            (
                r#""subject":{"id":"u1","#,
                r#""subject":{"#,
                "data.subject.id",
            ),
        ] {
            let body = LCW.replace(from, to);
            assert_eq!(
                parse(body.as_bytes()),
                Err(CalloutError::Missing(field)),
                "{field}"
            );
        }
        let bad = LCW.replace(r#""id":"w1""#, r#""id":"../w""#);
        assert_eq!(parse(bad.as_bytes()).unwrap_err().code(), "invalid_field");
        let bad = LCW.replace("2026-12-04T10:00:00Z", "yesterday");
        assert_eq!(parse(bad.as_bytes()).unwrap_err().code(), "invalid_field");
        let bad = LCW.replace(r#""workflowVersion":3"#, r#""workflowVersion":"3""#);
        assert_eq!(parse(bad.as_bytes()).unwrap_err().code(), "invalid_field");
        // A policy may name the task stage; a callout's stage field may not.
        assert_eq!(Stage::parse("lifecycleWorkflowTask"), None);
        assert_eq!(
            Stage::parse_in_policy("LifecycleWorkflowTask"),
            Some(Stage::LifecycleWorkflowTask)
        );
    }

    #[test]
    fn bad_bodies_get_specific_errors() {
        assert_eq!(parse(b"{"), Err(CalloutError::NotJson));
        assert_eq!(parse(b"[1]"), Err(CalloutError::NotObject));
        assert_eq!(
            parse(br#"{"CustomExtensionStageInstanceId":"s"}"#),
            Err(CalloutError::Missing("stage"))
        );
        assert_eq!(
            parse(
                br#"{"Stage":"assignmentRequestCreated","AccessPackageAssignmentRequestId":"r"}"#
            ),
            Err(CalloutError::Missing("customExtensionStageInstanceId"))
        );
        assert!(matches!(
            parse(br#"{"Stage":"assignmentRequestCreated","CustomExtensionStageInstanceId":"../x","AccessPackageAssignmentRequestId":"r"}"#),
            Err(CalloutError::Invalid(..))
        ));
        assert!(matches!(
            parse(br#"{"Stage":"assignmentRequestCreated","CustomExtensionStageInstanceId":"s","AccessPackageAssignmentRequestId":"r","CallbackConfiguration":{"DurationBeforeTimeout":"soon"}}"#),
            Err(CalloutError::Invalid(..))
        ));
    }

    #[test]
    fn pre_expiration_and_no_callback_config_expect_no_resume() {
        let c = callout(parse(br#"{"Stage":"assignmentOneDayBeforeExpiration","CustomExtensionStageInstanceId":"s","AccessPackageAssignmentRequestId":"r","CallbackConfiguration":{"DurationBeforeTimeout":"PT1H"}}"#).unwrap());
        assert!(!c.expects_resume());
        let c = callout(parse(br#"{"Stage":"assignmentRequestGranted","CustomExtensionStageInstanceId":"s","AccessPackageAssignmentRequestId":"r"}"#).unwrap());
        assert!(!c.expects_resume());
    }

    #[test]
    fn callback_path_must_be_the_resume_of_this_request() {
        let r = Id::parse("r1").unwrap_or_else(|| panic!());
        let names = |p: &str| callback_path_names_request(p, &r);
        assert!(names(
            "/beta/identityGovernance/entitlementManagement/accessPackageAssignmentRequests/r1/resume"
        ));
        assert!(names(
            "/identityGovernance/entitlementManagement/assignmentRequests/R1/resume"
        ));
        assert!(!names(
            "/identityGovernance/entitlementManagement/assignmentRequests/r2/resume"
        ));
        assert!(!names("/users/r1/resume"));
        assert!(!names(
            "https://evil/identityGovernance/entitlementManagement/assignmentRequests/r1/resume"
        ));
    }

    #[test]
    fn answers_in_both_casings() {
        let graph = serde_json::json!({"value": "RITM1", "answeredQuestion": {"id": "q1", "text": "Ticket"}});
        let pascal = serde_json::json!({"Value": "RITM1", "AnsweredQuestion": {"Id": "q1", "Text": "Ticket"}});
        for v in [graph, pascal] {
            let a = Answer::from_json(&v).unwrap_or_default();
            assert_eq!(
                (
                    a.value.as_str(),
                    a.question.as_deref(),
                    a.question_id.as_deref()
                ),
                ("RITM1", Some("Ticket"), Some("q1"))
            );
            assert!(a.answers(" ticket ") && a.answers("Q1") && !a.answers("other"));
        }
        assert_eq!(Answer::from_json(&serde_json::json!({"value": null})), None);
        let n = Answer::from_json(&serde_json::json!({"value": 7})).unwrap_or_default();
        assert_eq!(n.value, "7");
    }

    #[test]
    fn answers_survive_a_queue_round_trip_as_sent() {
        let raw = vec![
            serde_json::json!({"Value": "x", "AnsweredQuestion": {"Text": "T"}}),
            serde_json::json!({"x": 1}),
        ];
        let a = Answers::from(raw.clone());
        let text = serde_json::to_string(&a).unwrap_or_default();
        assert_eq!(
            serde_json::from_str::<Value>(&text).ok(),
            Some(Value::Array(raw))
        );
        let back: Answers = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(back, a);
        assert_eq!(back.parsed().len(), 1);
    }

    #[test]
    fn iso_durations() {
        assert_eq!(parse_iso_duration("PT10M"), Some(Duration::from_secs(600)));
        assert_eq!(
            parse_iso_duration("P14D"),
            Some(Duration::from_secs(14 * 86400))
        );
        assert_eq!(parse_iso_duration("P1M"), None);
        assert_eq!(parse_iso_duration("-PT1H"), None);
        assert_eq!(parse_iso_duration("1h"), None);
    }
}
