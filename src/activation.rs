//! Leaf: a PIM activation request, the input of a PIM custom extension's synchronous verdict
//! (`pim` answers it, the policy decides it).
//!
//! The three request shapes PIM sends (protocol.md §7) are parsed into one [`Activation`]:
//! PIM for Groups (`privilegedAccessGroupAssignmentScheduleRequest`), Entra roles
//! (`unifiedRoleAssignmentScheduleRequest`) and Azure resources (the ARM `{properties}` shape).
//! Only the ids, the schedule, the justification and the ticket are read from it; every fact a
//! verdict depends on is read from Graph or the ticket system.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::callout::{Id, parse_iso_duration};
use crate::json_lookup::get_ci;

/// What is being activated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationKind {
    /// PIM for Groups: membership or ownership of a group.
    Group,
    /// An Entra (directory) role.
    EntraRole,
    /// An Azure resource role (ARM).
    AzureResource,
}

impl ActivationKind {
    pub const ALL: [ActivationKind; 3] = [Self::Group, Self::EntraRole, Self::AzureResource];

    /// The name policy rules use (`resource_types`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Group => "group",
            Self::EntraRole => "entra_role",
            Self::AzureResource => "azure_resource",
        }
    }

    pub fn parse(s: &str) -> Option<ActivationKind> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// One activation request, normalized from any of the three shapes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Activation {
    pub kind: ActivationKind,
    /// The schedule request's id, when the body carries one.
    pub request_id: Option<String>,
    pub principal_id: Id,
    /// Entra role: the role definition id (a GUID); Azure: the role definition's GUID (the last
    /// segment of its ARM id).
    pub role_definition_id: Option<String>,
    pub group_id: Option<String>,
    /// PIM for Groups: `member` or `owner`.
    pub access_id: Option<String>,
    /// `directoryScopeId` (Entra roles, `/` for the tenant) or the ARM `scope`.
    pub scope: Option<String>,
    pub action: Option<String>,
    pub justification: Option<String>,
    pub start: Option<jiff::Timestamp>,
    pub duration_secs: Option<u64>,
    pub ticket_number: Option<String>,
    pub ticket_system: Option<String>,
    /// What makes two deliveries the same activation (the request id, else a digest of the
    /// fields above): the ledger's key.
    pub key: String,
}

impl Activation {
    /// The role or group this activation is for, as logs and reasons name it.
    pub fn target(&self) -> String {
        match self.kind {
            ActivationKind::Group => format!(
                "group {} ({})",
                self.group_id.as_deref().unwrap_or("?"),
                self.access_id.as_deref().unwrap_or("member")
            ),
            _ => format!(
                "role {} at {}",
                self.role_definition_id.as_deref().unwrap_or("?"),
                self.scope.as_deref().unwrap_or("/")
            ),
        }
    }

    /// The deterministic `evaluationId` of this activation's key.
    pub fn evaluation_id(&self) -> String {
        evaluation_id(&self.key)
    }

    /// The ledger keys of this activation at `now_ms` through `route` (the extension's name,
    /// and whether it is a post-approval one): the key to record under, and the keys an
    /// earlier delivery may have been recorded under. With a request id that is the one key.
    /// Without one the key is a digest of the fields, which a later, separate request can
    /// repeat: it carries the 10-minute period it arrived in, and a delivery also finds the
    /// previous period's, so PIM's retries (seconds apart) get the first verdict and a request
    /// made again later is decided again.
    pub fn ledger_keys(&self, route: (&str, bool), now_ms: i64) -> (String, Vec<String>) {
        let stage = if route.1 { "post" } else { "pre" };
        let base = format!("{}:{stage}:{}", route.0, self.key);
        if self.request_id.is_some() {
            return (base.clone(), vec![base]);
        }
        let period = now_ms.div_euclid(DIGEST_KEY_PERIOD_MS);
        let current = format!("{base}:{period}");
        (
            current.clone(),
            vec![current, format!("{base}:{}", period - 1)],
        )
    }
}

/// How long an id-less activation's digest key stands for the same request (see
/// [`Activation::ledger_keys`]).
pub const DIGEST_KEY_PERIOD_MS: i64 = 10 * 60 * 1000;

/// The deterministic `evaluationId` of a ledger key: a re-delivered activation gets the same
/// one. A UUID (RFC 9562 version 8) of SHA-256 over the key, so it says nothing about the key.
pub fn evaluation_id(key: &str) -> String {
    let digest = Sha256::digest(format!("accessgate-pim-evaluation:{key}"));
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(b).into_uuid().to_string()
}

/// `evaluationOutcome`, exactly as PIM names its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvaluationOutcome {
    /// Continue the normal PIM flow (approvals included).
    Approved,
    /// Skip manual approval.
    AutoApproved,
    /// Block the activation; the reasons are shown to the user.
    Denied,
}

impl EvaluationOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "Approved",
            Self::AutoApproved => "AutoApproved",
            Self::Denied => "Denied",
        }
    }
}

/// Why a body is not an activation request. Each has a code for logs and the 400 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActivationError {
    #[error("body is not a JSON object without duplicated members")]
    NotJson,
    #[error("not a PIM activation request: {0}")]
    Unsupported(String),
    #[error("required field {0} is missing")]
    Missing(&'static str),
    #[error("field {0} is invalid: {1}")]
    Invalid(&'static str, String),
}

impl ActivationError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotJson => "malformed_json",
            Self::Unsupported(_) => "unsupported_request",
            Self::Missing(_) => "missing_field",
            Self::Invalid(..) => "invalid_field",
        }
    }
}

const GROUP_TYPE: &str = "microsoft.graph.privilegedAccessGroupAssignmentScheduleRequest";
const ROLE_TYPE: &str = "microsoft.graph.unifiedRoleAssignmentScheduleRequest";

fn text(obj: &Map<String, Value>, key: &'static str) -> Result<Option<String>, ActivationError> {
    match get_ci(obj, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim()).filter(|t| !t.is_empty()).map(str::to_owned)),
        Some(_) => Err(ActivationError::Invalid(key, "must be a string".into())),
    }
}

fn guid(obj: &Map<String, Value>, key: &'static str) -> Result<Option<String>, ActivationError> {
    match text(obj, key)? {
        None => Ok(None),
        Some(s) => uuid::Uuid::parse_str(&s)
            .map(|u| Some(u.to_string()))
            .map_err(|_| ActivationError::Invalid(key, "must be a GUID".into())),
    }
}

/// Parses a PIM activation request body (liberal in: any member casing, the data wrapped in
/// `data` or not, `@odata.type` with or without `#`, or inferred from the fields).
pub fn parse(body: &[u8]) -> Result<Activation, ActivationError> {
    let top = crate::strict_json::parse_object(body).map_err(|_| ActivationError::NotJson)?;
    if crate::strict_json::has_case_variants(&top) {
        return Err(ActivationError::NotJson);
    }
    let obj = match get_ci(&top, "data") {
        Some(Value::Object(d)) => d.clone(),
        _ => top.clone(),
    };
    if let Some(Value::Object(props)) = get_ci(&obj, "properties") {
        let request_id = text(&obj, "name")?.or(text(&obj, "id")?);
        return fields(ActivationKind::AzureResource, props, request_id);
    }
    let odata = text(&obj, "@odata.type")?;
    let kind = match odata.as_deref().map(|t| t.trim_start_matches('#')) {
        Some(t) if t.eq_ignore_ascii_case(GROUP_TYPE) => ActivationKind::Group,
        Some(t) if t.eq_ignore_ascii_case(ROLE_TYPE) => ActivationKind::EntraRole,
        Some(t) => {
            return Err(ActivationError::Unsupported(format!(
                "@odata.type {} is neither {GROUP_TYPE} nor {ROLE_TYPE}",
                quoted(t)
            )));
        }
        None if get_ci(&obj, "groupId").is_some() => ActivationKind::Group,
        None if get_ci(&obj, "roleDefinitionId").is_some() => ActivationKind::EntraRole,
        None => {
            return Err(ActivationError::Unsupported(
                "no @odata.type, groupId, roleDefinitionId or properties".into(),
            ));
        }
    };
    let request_id = text(&obj, "id")?;
    fields(kind, &obj, request_id)
}

fn fields(
    kind: ActivationKind,
    o: &Map<String, Value>,
    request_id: Option<String>,
) -> Result<Activation, ActivationError> {
    let principal = guid(o, "principalId")?.ok_or(ActivationError::Missing("principalId"))?;
    let principal_id = Id::parse(&principal)
        .ok_or_else(|| ActivationError::Invalid("principalId", "must be a GUID".into()))?;
    let (role_definition_id, group_id, scope) = match kind {
        ActivationKind::Group => (
            None,
            Some(guid(o, "groupId")?.ok_or(ActivationError::Missing("groupId"))?),
            None,
        ),
        ActivationKind::EntraRole => (
            Some(guid(o, "roleDefinitionId")?.ok_or(ActivationError::Missing("roleDefinitionId"))?),
            None,
            Some(text(o, "directoryScopeId")?.unwrap_or_else(|| "/".into())),
        ),
        ActivationKind::AzureResource => {
            let def = text(o, "roleDefinitionId")?
                .ok_or(ActivationError::Missing("properties.roleDefinitionId"))?;
            // `/subscriptions/…/providers/Microsoft.Authorization/roleDefinitions/{guid}`.
            let last = def.trim_end_matches('/').rsplit('/').next().unwrap_or("");
            let id = uuid::Uuid::parse_str(last).map_err(|_| {
                ActivationError::Invalid(
                    "properties.roleDefinitionId",
                    "must be a role definition id ending in a GUID".into(),
                )
            })?;
            let scope = text(o, "scope")?.ok_or(ActivationError::Missing("properties.scope"))?;
            if !scope.starts_with('/') {
                return Err(ActivationError::Invalid(
                    "properties.scope",
                    "must be an ARM scope (/subscriptions/…)".into(),
                ));
            }
            (Some(id.to_string()), None, Some(scope))
        }
    };
    let action = text(o, "action")?.or(text(o, "requestType")?);
    let schedule = match get_ci(o, "scheduleInfo") {
        Some(Value::Object(s)) => Some(s),
        _ => None,
    };
    let start = match schedule
        .map(|s| text(s, "startDateTime"))
        .transpose()?
        .flatten()
    {
        None => None,
        Some(t) => Some(t.parse::<jiff::Timestamp>().map_err(|_| {
            ActivationError::Invalid(
                "scheduleInfo.startDateTime",
                "is not a date and time".into(),
            )
        })?),
    };
    let expiration = schedule.and_then(|s| match get_ci(s, "expiration") {
        Some(Value::Object(e)) => Some(e),
        _ => None,
    });
    let end = match expiration
        .map(|e| text(e, "endDateTime"))
        .transpose()?
        .flatten()
    {
        None => None,
        Some(t) => Some(t.parse::<jiff::Timestamp>().map_err(|_| {
            ActivationError::Invalid(
                "scheduleInfo.expiration.endDateTime",
                "is not a date and time".into(),
            )
        })?),
    };
    let from_end = end
        .zip(start)
        .and_then(|(e, s)| u64::try_from(e.as_second() - s.as_second()).ok());
    let duration_secs = match expiration
        .map(|e| text(e, "duration"))
        .transpose()?
        .flatten()
    {
        None => from_end,
        Some(d) => Some(
            parse_iso_duration(&d)
                .map(|d: Duration| d.as_secs())
                .ok_or_else(|| {
                    ActivationError::Invalid(
                        "scheduleInfo.expiration.duration",
                        "is not an ISO 8601 duration".into(),
                    )
                })?,
        ),
    };
    let ticket = match get_ci(o, "ticketInfo") {
        Some(Value::Object(t)) => Some(t),
        _ => None,
    };
    let ticket_number = ticket
        .map(|t| text(t, "ticketNumber"))
        .transpose()?
        .flatten();
    let ticket_system = ticket
        .map(|t| text(t, "ticketSystem"))
        .transpose()?
        .flatten();
    let justification = text(o, "justification")?;
    let request_id = request_id.filter(|r| Id::parse(r).is_some());
    let mut a = Activation {
        kind,
        request_id,
        principal_id,
        role_definition_id,
        group_id,
        access_id: text(o, "accessId")?,
        scope,
        action,
        justification,
        start,
        duration_secs,
        ticket_number,
        ticket_system,
        key: String::new(),
    };
    a.key = match &a.request_id {
        Some(id) => format!("{}:{id}", kind.name()),
        // No id: the same fields are the same activation (a re-delivery is byte-for-byte alike).
        None => {
            let fields = serde_json::to_string(&a).unwrap_or_default();
            format!("{}:sha256:{:x}", kind.name(), Sha256::digest(fields))
        }
    };
    Ok(a)
}

fn quoted(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).take(80).collect();
    format!("{clean:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const ROLE: &str = r##"{"@odata.type":"#microsoft.graph.unifiedRoleAssignmentScheduleRequest","id":"5f3b0000-0000-4000-8000-000000000001",
        "status":"PendingCustomExtension","action":"selfActivate","principalId":"7a1e0000-0000-4000-8000-000000000001",
        "roleDefinitionId":"62e90394-69f5-4237-9190-012177145e10","directoryScopeId":"/","justification":"Fix INC0010001",
        "scheduleInfo":{"startDateTime":"2026-12-04T10:00:00Z","expiration":{"type":"afterDuration","duration":"PT2H"}},
        "ticketInfo":{"ticketNumber":"CHG0030001","ticketSystem":"ServiceNow"}}"##;

    #[test]
    fn the_three_shapes_parse_into_one_activation() {
        let r = parse(ROLE.as_bytes()).unwrap();
        assert_eq!(r.kind, ActivationKind::EntraRole);
        assert_eq!(
            r.role_definition_id.as_deref(),
            Some("62e90394-69f5-4237-9190-012177145e10")
        );
        assert_eq!(
            (r.scope.as_deref(), r.duration_secs),
            (Some("/"), Some(7200))
        );
        assert_eq!(r.ticket_number.as_deref(), Some("CHG0030001"));
        assert_eq!(r.key, "entra_role:5f3b0000-0000-4000-8000-000000000001");
        let g = parse(br#"{"@odata.type":"microsoft.graph.privilegedAccessGroupAssignmentScheduleRequest","id":"g1","principalId":"7a1e0000-0000-4000-8000-000000000001","groupId":"9a0e0000-0000-4000-8000-000000000002","accessId":"member","action":"selfActivate"}"#).unwrap();
        assert_eq!(
            (g.kind, g.access_id.as_deref()),
            (ActivationKind::Group, Some("member"))
        );
        let a = parse(br#"{"properties":{"principalId":"7a1e0000-0000-4000-8000-000000000001","principalType":"User","requestType":"SelfActivate",
            "roleDefinitionId":"/subscriptions/s1/providers/Microsoft.Authorization/roleDefinitions/b24988ac-6180-42a0-ab88-20f7382dd24c",
            "scope":"/subscriptions/s1/resourceGroups/rg1","justification":"deploy","scheduleInfo":{"startDateTime":"2026-12-04T10:00:00Z","expiration":{"type":"AfterDuration","duration":"PT1H"}},
            "ticketInfo":{"ticketNumber":"CHG0030002","ticketSystem":"ServiceNow"}}}"#).unwrap();
        assert_eq!(a.kind, ActivationKind::AzureResource);
        assert_eq!(
            a.role_definition_id.as_deref(),
            Some("b24988ac-6180-42a0-ab88-20f7382dd24c")
        );
        assert_eq!(a.action.as_deref(), Some("SelfActivate"));
        assert!(a.key.starts_with("azure_resource:sha256:"), "{}", a.key);
        // Same body, same key and evaluation id; another body, another.
        let again = parse(ROLE.as_bytes()).unwrap();
        assert_eq!(again.evaluation_id(), r.evaluation_id());
        assert_ne!(g.evaluation_id(), r.evaluation_id());
        assert!(uuid::Uuid::parse_str(&r.evaluation_id()).is_ok());
    }

    #[test]
    fn ledger_keys_separate_routes_and_age_out_digest_keys() {
        let r = parse(ROLE.as_bytes()).unwrap();
        let (pre, l) = r.ledger_keys(("-", false), 0);
        let (post, _) = r.ledger_keys(("-", true), 0);
        let (other, _) = r.ledger_keys(("audit", false), 0);
        assert_eq!(l, vec![pre.clone()]);
        assert!(pre != post && pre != other && post != other);
        // With a request id the key does not age.
        assert_eq!(
            r.ledger_keys(("-", false), 10 * DIGEST_KEY_PERIOD_MS).0,
            pre
        );
        // Without one: the same period and the next find it, a later one does not.
        let no_id = ROLE.replace(r#""id":"5f3b0000-0000-4000-8000-000000000001","#, "");
        let a = parse(no_id.as_bytes()).unwrap();
        let t = 5 * DIGEST_KEY_PERIOD_MS + 1;
        let (k, _) = a.ledger_keys(("-", false), t);
        assert!(
            a.ledger_keys(("-", false), t + DIGEST_KEY_PERIOD_MS)
                .1
                .contains(&k)
        );
        assert!(
            !a.ledger_keys(("-", false), t + 2 * DIGEST_KEY_PERIOD_MS)
                .1
                .contains(&k)
        );
        assert_ne!(evaluation_id(&k), evaluation_id(&pre));
    }

    #[test]
    fn bad_bodies_are_named() {
        assert_eq!(parse(b"[1]"), Err(ActivationError::NotJson));
        assert_eq!(parse(br#"{"a":1,"a":2}"#), Err(ActivationError::NotJson));
        assert_eq!(
            parse(br#"{"x":1}"#).unwrap_err().code(),
            "unsupported_request"
        );
        assert_eq!(
            parse(br##"{"@odata.type":"#microsoft.graph.user","principalId":"x"}"##)
                .unwrap_err()
                .code(),
            "unsupported_request"
        );
        let no_principal = ROLE.replace(
            r#""principalId":"7a1e0000-0000-4000-8000-000000000001","#,
            "",
        );
        assert_eq!(
            parse(no_principal.as_bytes()),
            Err(ActivationError::Missing("principalId"))
        );
        let bad = ROLE.replace("7a1e0000-0000-4000-8000-000000000001", "../etc");
        assert_eq!(parse(bad.as_bytes()).unwrap_err().code(), "invalid_field");
        let bad = ROLE.replace("PT2H", "two hours");
        assert_eq!(parse(bad.as_bytes()).unwrap_err().code(), "invalid_field");
    }
}
