//! PIM stand-in: sends an activation to a PIM custom extension the way PIM does (the request
//! object in one of its three shapes, a v2 bearer token of PIM's app for the extension's
//! Application ID URI, the extension's client timeout and retries with the same body) and
//! reads the synchronous verdict.
//!
//! Sources: protocol.md §7 (the PIM custom extension doc and the Entra blog, 2026): shapes,
//! `{evaluationId, evaluationOutcome, reason}`, `clientConfiguration` 10000 ms / 3 retries in
//! the create example. Not documented (emulator choices): the HTTP status PIM expects (200 is
//! taken as the answer; 5xx and timeouts are retried), the `status`/`action` values (the
//! Graph docs' `PendingCustomExtension`-style names are sent, and accessgate must not rely on
//! them).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::entra::{IssuerVersion, MintOptions};

/// PIM's first-party app id (`azp` of its tokens) as the sources give it.
pub const PIM_APP_ID: &str = "1c67c054-65c8-4f7f-92a1-eb7ba6e48627";
/// The example `clientConfiguration` of a PIM custom extension.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_RETRIES: u32 = 3;

/// Which activation request PIM sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PimShape {
    /// `unifiedRoleAssignmentScheduleRequest` (an Entra role).
    #[default]
    EntraRole,
    /// `privilegedAccessGroupAssignmentScheduleRequest` (PIM for Groups).
    Group,
    /// The ARM `{properties}` shape (an Azure resource role).
    AzureResource,
}

/// An activation to send (`Emulator::send_pim`). Everything but `target_url` and `audience`
/// has a default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PimSendOptions {
    pub target_url: String,
    /// The extension's `authenticationConfiguration.resourceId` (the token's `aud`).
    pub audience: String,
    pub shape: PimShape,
    /// The schedule request's id (default a new GUID; the ARM shape has none unless given).
    pub request_id: Option<String>,
    pub principal_id: Option<String>,
    /// Entra or Azure role definition id (GUID); default Global Reader's template id.
    pub role_definition_id: Option<String>,
    pub group_id: Option<String>,
    pub scope: Option<String>,
    pub justification: Option<String>,
    pub ticket_number: Option<String>,
    pub ticket_system: Option<String>,
    /// `PT1H` by default.
    pub duration: Option<String>,
    /// The token; default a v2 token of PIM's app for `audience`.
    pub token: Option<MintOptions>,
    /// Raw `Authorization` value (empty: none).
    pub authorization: Option<String>,
    /// Raw body instead of the generated one.
    pub body: Option<String>,
    pub client_timeout_ms: Option<u64>,
    pub maximum_retries: Option<u32>,
}

/// What came back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PimReport {
    pub status: Option<u16>,
    pub attempts: u32,
    pub latency_ms: f64,
    /// The last answer's JSON body.
    pub body: Option<Value>,
    pub error: Option<String>,
    /// The body sent (every attempt sends the same one).
    pub sent: Value,
}

/// Global Reader (a built-in role template id).
const GLOBAL_READER: &str = "f2ef992c-3afb-46b9-b7cf-a126ee74c451";

/// The request body of `opts.shape`.
pub fn body(opts: &PimSendOptions) -> Value {
    let id = opts
        .request_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let principal = opts
        .principal_id
        .clone()
        .unwrap_or_else(|| "0b000000-0000-0000-0000-000000000001".into());
    let start = jiff::Timestamp::now().to_string();
    let duration = opts.duration.clone().unwrap_or_else(|| "PT1H".into());
    let ticket = json!({"ticketNumber": opts.ticket_number, "ticketSystem": opts.ticket_system});
    let justification = opts
        .justification
        .clone()
        .unwrap_or_else(|| "Needed for a change".into());
    let role = opts
        .role_definition_id
        .clone()
        .unwrap_or_else(|| GLOBAL_READER.into());
    match opts.shape {
        PimShape::EntraRole => json!({
            "@odata.type": "#microsoft.graph.unifiedRoleAssignmentScheduleRequest",
            "id": id, "status": "PendingCustomExtension", "action": "selfActivate",
            "principalId": principal, "roleDefinitionId": role,
            "directoryScopeId": opts.scope.clone().unwrap_or_else(|| "/".into()),
            "justification": justification,
            "scheduleInfo": {"startDateTime": start, "expiration": {"type": "afterDuration", "duration": duration}},
            "ticketInfo": ticket,
        }),
        PimShape::Group => json!({
            "@odata.type": "#microsoft.graph.privilegedAccessGroupAssignmentScheduleRequest",
            "id": id, "status": "PendingCustomExtension", "action": "selfActivate",
            "principalId": principal, "accessId": "member",
            "groupId": opts.group_id.clone().unwrap_or_else(|| "9a0e0000-0000-4000-8000-000000000099".into()),
            "justification": justification,
            "scheduleInfo": {"startDateTime": start, "expiration": {"type": "afterDuration", "duration": duration}},
            "ticketInfo": ticket,
        }),
        PimShape::AzureResource => {
            let scope = opts
                .scope
                .clone()
                .unwrap_or_else(|| "/subscriptions/22222222-3333-4444-5555-666666666666".into());
            let mut v = json!({"properties": {
                "principalId": principal, "principalType": "User", "requestType": "SelfActivate",
                "roleDefinitionId": format!("{scope}/providers/Microsoft.Authorization/roleDefinitions/{role}"),
                "scope": scope, "justification": justification,
                "scheduleInfo": {"startDateTime": start, "expiration": {"type": "AfterDuration", "duration": duration}},
                "ticketInfo": ticket,
            }});
            if let Some(name) = &opts.request_id {
                v["name"] = json!(name);
            }
            v
        }
    }
}

/// The default token: v2, PIM's app, `aud` = the extension's resource.
pub fn default_token(opts: &PimSendOptions) -> MintOptions {
    let mut m = opts.token.clone().unwrap_or_default();
    m.audience = m.audience.or_else(|| Some(opts.audience.clone()));
    m.app_id = m.app_id.or_else(|| Some(PIM_APP_ID.into()));
    m.issuer_version = m.issuer_version.or(Some(IssuerVersion::V2));
    m
}

/// Sends one activation with PIM's client behaviour (the same body on every retry).
pub(crate) async fn send(
    emu: &crate::Emulator,
    opts: &PimSendOptions,
) -> anyhow::Result<PimReport> {
    anyhow::ensure!(!opts.target_url.is_empty(), "target_url is required");
    let sent: Value = match &opts.body {
        Some(raw) => serde_json::from_str(raw).unwrap_or(Value::String(raw.clone())),
        None => body(opts),
    };
    let text = match &opts.body {
        Some(raw) => raw.clone(),
        None => sent.to_string(),
    };
    let authorization = match &opts.authorization {
        Some(raw) if raw.is_empty() => None,
        Some(raw) => Some(raw.clone()),
        None => Some(format!(
            "Bearer {}",
            emu.mint_callout_token(&default_token(opts))?
        )),
    };
    let timeout = Duration::from_millis(opts.client_timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS));
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .context("building the HTTP client")?;
    let attempts = 1 + opts.maximum_retries.unwrap_or(DEFAULT_RETRIES);
    let mut report = PimReport {
        sent,
        ..PimReport::default()
    };
    let started = Instant::now();
    let client_request_id = uuid::Uuid::new_v4().to_string();
    while report.attempts < attempts {
        report.attempts += 1;
        let mut req = http
            .post(&opts.target_url)
            .header("content-type", "application/json")
            .header("client-request-id", &client_request_id)
            .body(text.clone());
        if let Some(a) = &authorization {
            req = req.header("authorization", a);
        }
        let retry = match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                report.status = Some(status);
                report.body = resp.json::<Value>().await.ok();
                report.error = None;
                status >= 500
            }
            Err(e) => {
                report.status = None;
                report.error = Some(if e.is_timeout() {
                    format!("timeout after {} ms", timeout.as_millis())
                } else {
                    format!("connection error: {e}")
                });
                true
            }
        };
        if !retry {
            break;
        }
    }
    report.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok(report)
}
