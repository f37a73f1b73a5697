//! Entra-like callout sender: builds the body entitlement management POSTs to a custom
//! extension (the flat PascalCase shape of the ELM-generated Logic App trigger schema, or the
//! Graph `customExtensionCalloutRequest` envelope), registers the request in Graph as
//! `WaitingForCallback` for request stages, and POSTs it with Entra's client behaviour: 1000 ms
//! timeout and at most one retry (on timeout, connection error or 5xx).
//!
//! Why: accessgate must answer 202 inside Entra's client timeout and tolerate the retry; this
//! reproduces both ends without a tenant. Pre-expiration stages and the
//! `CustomExtensionConnectionTest` stage are sent without `CallbackUriPath` and not registered.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::entra::MintOptions;
use crate::graph::{self, CONNECTION_TEST_STAGE, RegisterRequest};

/// Default client timeout of an ELM custom extension (`timeoutInMilliseconds`).
pub const DEFAULT_CLIENT_TIMEOUT_MS: u64 = 1000;
/// Default retries of an ELM custom extension (`maximumRetries`).
pub const DEFAULT_MAXIMUM_RETRIES: u32 = 1;
/// Default stage sent.
pub const DEFAULT_STAGE: &str = "assignmentRequestCreated";

/// Body shape of a callout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// Flat PascalCase keys, as in the ELM-generated Logic App trigger schema.
    #[default]
    Flat,
    /// Graph `{source, type, data}` envelope with camelCase `data`.
    Envelope,
    /// A Lifecycle Workflows custom task extension callout (`customTaskExtensionCalloutData`
    /// in the `{type, source, data}` envelope of Microsoft's LCW Logic App trigger schema):
    /// `request_id` is the task processing result, `target_object_id` the subject; PoP tokens
    /// come from Lifecycle Workflows' app id, bound to `lcw_logic_app_resource`.
    Lifecycle,
}

/// How the sender authenticates a callout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthScheme {
    /// `Authorization: PoP <signed request>`, a fresh one per attempt (what Entra sends for
    /// every new custom extension).
    #[default]
    Pop,
    /// `Authorization: Bearer <access token>` (legacy "Regular" extensions, relay mode).
    Bearer,
}

/// Options of a callout (`POST /_emulator/callouts/send`, [`send_callout`],
/// [`crate::Emulator::send_callout`]). Everything except `target_url` is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SendOptions {
    pub target_url: String,
    pub shape: Shape,
    /// Stage; default `assignmentRequestCreated`. Any string is sent as is (e.g.
    /// `CustomExtensionConnectionTest`).
    pub stage: Option<String>,
    pub request_id: Option<String>,
    pub stage_instance_id: Option<String>,
    pub catalog_id: Option<String>,
    pub catalog_name: Option<String>,
    pub access_package_id: Option<String>,
    pub access_package_name: Option<String>,
    pub target_object_id: Option<String>,
    /// Extension: the target's display name (default `Emulator User`).
    pub target_display_name: Option<String>,
    /// Callback timeout, ISO 8601; default `PT1H`.
    pub timeout: Option<String>,
    /// PoP (default) or bearer.
    pub auth: AuthScheme,
    /// How to mint the PoP signed request (ignored unless `auth` is pop).
    pub pop: Option<crate::pop::PopOptions>,
    /// How to mint the bearer token (ignored unless `auth` is bearer).
    pub token: Option<MintOptions>,
    /// Raw `Authorization` header value, verbatim; empty string = no header.
    pub authorization: Option<String>,
    /// Raw JSON text sent instead of the generated body.
    pub body: Option<String>,
    /// Extension: emulator base URL used by [`send_callout`] (the free function) to mint the
    /// token and register the request; ignored by [`crate::Emulator::send_callout`].
    pub emulator_url: Option<String>,
    /// Extension: client timeout per attempt (default 1000 ms; Entra allows 200..=2000).
    pub client_timeout_ms: Option<u64>,
    /// Extension: retries after the first attempt (default 1; Entra allows 0 or 1).
    pub maximum_retries: Option<u32>,
    /// Extension: `RequestType` (default `userAdd`).
    pub request_type: Option<String>,
    /// Lifecycle shape: the workflow (default a fixed GUID), its display name and version.
    pub workflow_id: Option<String>,
    pub workflow_name: Option<String>,
    /// Lifecycle shape: the task (default a fixed GUID) and its display name.
    pub task_id: Option<String>,
    pub task_name: Option<String>,
    /// Lifecycle shape: the subject's manager and user principal name.
    pub manager_id: Option<String>,
    pub subject_upn: Option<String>,
    /// Lifecycle shape: the extension's `authorizedApps` (default: the emulator's identities).
    pub authorized_apps: Option<Vec<String>>,
}

/// Defaults of a Lifecycle Workflows callout.
pub const DEFAULT_WORKFLOW_ID: &str = "f0000000-0000-0000-0000-000000000001";
pub const DEFAULT_TASK_ID: &str = "f1000000-0000-0000-0000-000000000001";

/// Outcome of a callout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SendReport {
    /// Status of the last attempt, `None` when it got no response.
    pub status: Option<u16>,
    pub attempts: u32,
    /// Wall time from the first attempt to the final outcome.
    pub latency_ms: f64,
    pub request_id: String,
    pub stage_instance_id: String,
    /// Why the callout failed (timeout, connection error, non-2xx), `None` on 2xx.
    pub error: Option<String>,
    /// Extension: wall time of each attempt.
    pub attempt_latencies_ms: Vec<f64>,
}

/// The values that go into a callout body, with every default resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalloutFields {
    pub request_id: String,
    pub stage_instance_id: String,
    pub stage: String,
    pub request_type: String,
    pub catalog_id: String,
    pub catalog_name: String,
    pub access_package_id: String,
    pub access_package_name: String,
    pub target_object_id: String,
    pub target_display_name: String,
    pub timeout: String,
}

impl CalloutFields {
    /// Resolves `opts`, generating request and stage instance ids when absent.
    pub fn from_options(opts: &SendOptions) -> Self {
        let or = |value: &Option<String>, default: &str| {
            value.clone().unwrap_or_else(|| default.to_owned())
        };
        let new_id = || uuid::Uuid::new_v4().to_string();
        Self {
            request_id: opts.request_id.clone().unwrap_or_else(new_id),
            stage_instance_id: opts.stage_instance_id.clone().unwrap_or_else(new_id),
            stage: or(&opts.stage, DEFAULT_STAGE),
            request_type: or(&opts.request_type, "userAdd"),
            catalog_id: or(&opts.catalog_id, "c0000000-0000-0000-0000-000000000001"),
            catalog_name: or(&opts.catalog_name, "Emulator Catalog"),
            access_package_id: or(
                &opts.access_package_id,
                "a0000000-0000-0000-0000-000000000001",
            ),
            access_package_name: or(&opts.access_package_name, "Emulator Access Package"),
            target_object_id: or(
                &opts.target_object_id,
                "0b000000-0000-0000-0000-000000000001",
            ),
            target_display_name: or(&opts.target_display_name, "Emulator User"),
            timeout: or(&opts.timeout, "PT1H"),
        }
    }

    /// `/identityGovernance/entitlementManagement/assignmentRequests/{id}/resume`.
    pub fn callback_uri_path(&self) -> String {
        format!(
            "/identityGovernance/entitlementManagement/assignmentRequests/{}/resume",
            self.request_id
        )
    }

    fn kind(&self) -> StageKind {
        if graph::is_request_stage(&self.stage) {
            StageKind::Request
        } else if graph::PRE_EXPIRATION_STAGES.contains(&self.stage.as_str()) {
            StageKind::PreExpiration
        } else if self.stage == CONNECTION_TEST_STAGE {
            StageKind::ConnectionTest
        } else {
            // Unknown stage strings are sent like request stages (useful for negative tests).
            StageKind::Request
        }
    }

    /// State of the request the stage fires in (`accessPackageRequestState`).
    fn request_state(&self) -> &'static str {
        match self.stage.as_str() {
            "assignmentRequestCreated" => "submitted",
            "assignmentRequestApproved" => "pendingApproval",
            "assignmentRequestRemoved" => "delivering",
            "assignmentRequestGranted" => "delivered",
            _ => "delivered",
        }
    }

    fn assignment_state(&self) -> (&'static str, &'static str) {
        match self.stage.as_str() {
            "assignmentRequestCreated" | "assignmentRequestApproved" => {
                ("PendingDelivery", "PendingApproval")
            }
            "assignmentRequestRemoved" => ("Delivered", "PendingRemoval"),
            _ => ("Delivered", "Delivered"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StageKind {
    Request,
    PreExpiration,
    ConnectionTest,
}

const POLICY_ID: &str = "d0000000-0000-0000-0000-000000000001";
const REQUESTOR_SUBJECT_ID: &str = "5b000000-0000-0000-0000-000000000001";

/// The flat PascalCase body (ELM-generated Logic App trigger schema, plus the V2 request-workflow
/// fields `CallbackUriPath`, `RequestType`, `Answers`, `State`, `Status`,
/// `CallbackConfiguration` and `Assignment.AssignmentPolicy`).
pub fn flat_body(f: &CalloutFields) -> Value {
    let (assignment_state, assignment_status) = f.assignment_state();
    let assignment = json!({
        "Id": assignment_id(f),
        "Target": {
            "ConnectedOrganization": null,
            "Id": REQUESTOR_SUBJECT_ID,
            "ObjectId": f.target_object_id,
            "DisplayName": f.target_display_name,
        },
        "State": assignment_state,
        "Status": assignment_status,
        "AssignmentPolicy": {"Id": POLICY_ID, "DisplayName": "Emulator Policy"},
    });
    let access_package = json!({
        "Id": f.access_package_id,
        "DisplayName": f.access_package_name,
        "Description": "Access package served by the accessgate emulator",
    });
    let catalog = json!({
        "Id": f.catalog_id,
        "DisplayName": f.catalog_name,
        "Description": "Catalog served by the accessgate emulator",
    });
    match f.kind() {
        StageKind::Request => json!({
            "AccessPackageAssignmentRequestId": f.request_id,
            "CallbackUriPath": f.callback_uri_path(),
            "CustomExtensionStageInstanceId": f.stage_instance_id,
            "Stage": f.stage,
            "RequestType": f.request_type,
            "Answers": [],
            "State": f.request_state(),
            "Status": "WaitingForCallback",
            "CallbackConfiguration": {"DurationBeforeTimeout": f.timeout},
            "AccessPackage": access_package,
            "AccessPackageCatalog": catalog,
            "Assignment": assignment,
            "Requestor": {
                "Id": REQUESTOR_SUBJECT_ID,
                "ObjectId": f.target_object_id,
                "DisplayName": f.target_display_name,
            },
        }),
        StageKind::PreExpiration => json!({
            "AccessPackageAssignmentRequestId": f.request_id,
            "CustomExtensionStageInstanceId": f.stage_instance_id,
            "Stage": f.stage,
            "CallbackConfiguration": {"DurationBeforeTimeout": f.timeout},
            "AccessPackage": access_package,
            "AccessPackageCatalog": catalog,
            "Assignment": assignment,
        }),
        StageKind::ConnectionTest => json!({
            "AccessPackageAssignmentRequestId": f.request_id,
            "CustomExtensionStageInstanceId": f.stage_instance_id,
            "Stage": f.stage,
            "AccessPackage": access_package,
            "AccessPackageCatalog": catalog,
        }),
    }
}

/// The Graph envelope `{source, type, data}` with the documented camelCase callout data
/// (`accessPackageAssignmentRequestCalloutData`, or `accessPackageAssignmentCalloutData` for
/// pre-expiration stages).
pub fn envelope_body(f: &CalloutFields) -> Value {
    let (assignment_state, assignment_status) = f.assignment_state();
    let assignment = json!({
        "id": assignment_id(f),
        "state": assignment_state,
        "status": assignment_status,
        "target": {
            "connectedOrganization": null,
            "id": REQUESTOR_SUBJECT_ID,
            "objectId": f.target_object_id,
            "displayName": f.target_display_name,
        },
        "assignmentPolicy": {"id": POLICY_ID, "displayName": "Emulator Policy"},
    });
    let access_package = json!({
        "id": f.access_package_id,
        "displayName": f.access_package_name,
        "description": "Access package served by the accessgate emulator",
    });
    let catalog = json!({
        "id": f.catalog_id,
        "displayName": f.catalog_name,
        "description": "Catalog served by the accessgate emulator",
    });
    let callback_configuration = json!({
        "@odata.type": "#microsoft.graph.customExtensionCallbackConfiguration",
        "timeoutDuration": f.timeout,
    });
    let data = match f.kind() {
        StageKind::Request | StageKind::ConnectionTest => {
            let mut data = json!({
                "@odata.type": "#microsoft.graph.accessPackageAssignmentRequestCalloutData",
                "accessPackageAssignmentRequestId": f.request_id,
                "callbackUriPath": f.callback_uri_path(),
                "customExtensionStageInstanceId": f.stage_instance_id,
                "stage": f.stage,
                "requestType": f.request_type,
                "state": f.request_state(),
                "status": "WaitingForCallback",
                "answers": [],
                "callbackConfiguration": callback_configuration,
                "accessPackage": access_package,
                "accessPackageCatalog": catalog,
                "assignment": assignment,
                "requestor": {
                    "id": REQUESTOR_SUBJECT_ID,
                    "objectId": f.target_object_id,
                    "displayName": f.target_display_name,
                },
            });
            if f.kind() == StageKind::ConnectionTest
                && let Some(obj) = data.as_object_mut()
            {
                obj.shift_remove("callbackUriPath");
            }
            data
        }
        StageKind::PreExpiration => json!({
            "@odata.type": "#microsoft.graph.accessPackageAssignmentCalloutData",
            "accessPackageAssignmentRequestId": f.request_id,
            "customExtensionStageInstanceId": f.stage_instance_id,
            "stage": f.stage,
            "callbackConfiguration": callback_configuration,
            "accessPackage": access_package,
            "accessPackageCatalog": catalog,
            "assignment": assignment,
        }),
    };
    json!({
        "source": "EntitlementManagement",
        "type": "microsoft.graph.accessPackageCustomExtensionCalloutRequest",
        "data": data,
    })
}

/// A Lifecycle Workflows task callout: `{type, source, data}` with `callbackUriPath`, `subject`
/// (with `manager`), `task`, `taskProcessingResult` and `workflow`, camelCase as in the LCW
/// Logic App trigger schema (`type` and `source` values are undocumented).
pub fn lifecycle_body(f: &CalloutFields, opts: &SendOptions) -> Value {
    let workflow_id = opts.workflow_id.as_deref().unwrap_or(DEFAULT_WORKFLOW_ID);
    let task_id = opts.task_id.as_deref().unwrap_or(DEFAULT_TASK_ID);
    let manager = opts.manager_id.as_ref().map_or(
        Value::Null,
        |m| json!({"id": m, "displayName": null, "email": null}),
    );
    json!({
        "type": "lifecycleEvent",
        "source": "LifecycleWorkflows",
        "data": {
            "@odata.type": "#microsoft.graph.identityGovernance.customTaskExtensionCalloutData",
            "callbackUriPath": format!("/identityGovernance/lifecycleWorkflows/workflows/{workflow_id}/tasks/{task_id}/taskProcessingResults/{}/resume", f.request_id),
            "subject": {
                "id": f.target_object_id,
                "displayName": f.target_display_name,
                "email": opts.subject_upn,
                "userPrincipalName": opts.subject_upn,
                "manager": manager,
            },
            "task": {"id": task_id, "displayName": opts.task_name.as_deref().unwrap_or("Run accessgate")},
            "taskProcessingResult": {"id": f.request_id, "createdDateTime": jiff::Timestamp::now().to_string()},
            "workflow": {"id": workflow_id, "displayName": opts.workflow_name.as_deref().unwrap_or("Emulator workflow"), "workflowVersion": 1},
        }
    })
}

fn assignment_id(f: &CalloutFields) -> String {
    // Stable per request, so a retried callout carries the same assignment.
    let id = uuid::Uuid::parse_str(&f.request_id).map_or_else(
        |_| uuid::Uuid::new_v4(),
        |u| uuid::Uuid::from_u128(u.as_u128() ^ 0xa55a),
    );
    id.to_string()
}

/// Where the sender mints tokens and registers requests.
pub(crate) enum Backend<'a> {
    /// In-process emulator.
    Local(&'a crate::Emulator),
    /// A running emulator reached over HTTP.
    Remote { base_url: String },
    /// No emulator: `authorization` must be given, nothing is registered.
    Detached,
}

impl Backend<'_> {
    /// Registers the request in Graph, in the catalog its callout names.
    async fn register(
        &self,
        http: &reqwest::Client,
        reg: &RegisterRequest,
        catalog_id: &str,
    ) -> anyhow::Result<()> {
        match self {
            Backend::Local(emulator) => emulator
                .register_request_in_catalog(reg, catalog_id)
                .map(drop),
            Backend::Remote { base_url } => {
                let mut body = serde_json::to_value(reg).context("encoding the registration")?;
                body["catalog_id"] = serde_json::Value::String(catalog_id.to_owned());
                let resp = http
                    .post(format!("{base_url}/_emulator/requests"))
                    .json(&body)
                    .send()
                    .await
                    .context("registering the request with the emulator")?;
                if !resp.status().is_success() {
                    bail!(
                        "emulator refused the registration: {} {}",
                        resp.status(),
                        resp.text().await.unwrap_or_default()
                    );
                }
                Ok(())
            }
            Backend::Detached => Ok(()),
        }
    }

    /// Registers a task processing result (the Lifecycle shape).
    async fn register_task(
        &self,
        http: &reqwest::Client,
        reg: &crate::lifecycle::RegisterTask,
    ) -> anyhow::Result<()> {
        match self {
            Backend::Local(emulator) => emulator.register_task(reg).map(drop),
            Backend::Remote { base_url } => {
                let resp = http
                    .post(format!("{base_url}/_emulator/tasks"))
                    .json(reg)
                    .send()
                    .await
                    .context("registering the task with the emulator")?;
                if !resp.status().is_success() {
                    bail!(
                        "emulator refused the task: {} {}",
                        resp.status(),
                        resp.text().await.unwrap_or_default()
                    );
                }
                Ok(())
            }
            Backend::Detached => Ok(()),
        }
    }

    /// The Logic App resource of the Lifecycle Workflows extension (`p`).
    fn lcw_resource(&self) -> String {
        match self {
            Backend::Local(emulator) => emulator.config().lcw_logic_app_resource.clone(),
            _ => crate::EmulatorConfig::default().lcw_logic_app_resource,
        }
    }

    async fn mint(&self, http: &reqwest::Client, opts: &MintOptions) -> anyhow::Result<String> {
        match self {
            Backend::Local(emulator) => emulator.mint_callout_token(opts),
            _ => self.mint_remote(http, "callout", opts).await,
        }
    }

    async fn mint_pop(
        &self,
        http: &reqwest::Client,
        opts: &crate::pop::PopOptions,
    ) -> anyhow::Result<String> {
        match self {
            Backend::Local(emulator) => emulator.mint_pop(opts),
            _ => self.mint_remote(http, "pop", opts).await,
        }
    }

    /// `POST {base}/_emulator/tokens/{kind}` with `opts` → the `token` of the answer.
    async fn mint_remote(
        &self,
        http: &reqwest::Client,
        kind: &str,
        opts: &impl Serialize,
    ) -> anyhow::Result<String> {
        let Backend::Remote { base_url } = self else {
            bail!("no emulator_url to mint a token with: set emulator_url or authorization")
        };
        let resp = http
            .post(format!("{base_url}/_emulator/tokens/{kind}"))
            .json(opts)
            .send()
            .await
            .with_context(|| format!("minting a {kind} token with the emulator"))?;
        if !resp.status().is_success() {
            bail!(
                "emulator refused to mint: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        let body: Value = resp.json().await.context("reading the minted token")?;
        body.get("token")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .context("emulator answer has no 'token'")
    }
}

/// Sends a callout like Entra. Tokens are minted and the request registered through the emulator
/// at `opts.emulator_url` (without it, `opts.authorization` is required and nothing is
/// registered).
pub async fn send_callout(opts: &SendOptions) -> anyhow::Result<SendReport> {
    let backend = match &opts.emulator_url {
        Some(url) => Backend::Remote {
            base_url: url.trim_end_matches('/').to_owned(),
        },
        None => Backend::Detached,
    };
    send_callout_with(backend, opts).await
}

pub(crate) async fn send_callout_with(
    backend: Backend<'_>,
    opts: &SendOptions,
) -> anyhow::Result<SendReport> {
    if opts.target_url.is_empty() {
        bail!("target_url is required");
    }
    let fields = CalloutFields::from_options(opts);
    graph::parse_iso_duration(&fields.timeout)?;
    let control = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;

    let lifecycle = opts.shape == Shape::Lifecycle;
    if lifecycle {
        let reg = crate::lifecycle::RegisterTask {
            id: Some(fields.request_id.clone()),
            workflow_id: opts
                .workflow_id
                .clone()
                .unwrap_or_else(|| DEFAULT_WORKFLOW_ID.into()),
            task_id: opts
                .task_id
                .clone()
                .unwrap_or_else(|| DEFAULT_TASK_ID.into()),
            subject_id: fields.target_object_id.clone(),
            timeout: Some(fields.timeout.clone()),
            authorized_apps: opts.authorized_apps.clone(),
        };
        backend.register_task(&control, &reg).await?;
    } else if graph::is_request_stage(&fields.stage) {
        let reg = RegisterRequest {
            id: Some(fields.request_id.clone()),
            stage: Some(fields.stage.clone()),
            stage_instance_id: Some(fields.stage_instance_id.clone()),
            timeout: Some(fields.timeout.clone()),
            request_type: Some(fields.request_type.clone()),
        };
        backend.register(&control, &reg, &fields.catalog_id).await?;
    }
    // A raw header is sent as is; a bearer token is minted once (Entra reuses it); a PoP signed
    // request is minted per attempt, because the receiver accepts each one once.
    let fixed_authorization = match (&opts.authorization, opts.auth) {
        (Some(raw), _) if raw.is_empty() => None,
        (Some(raw), _) => Some(raw.clone()),
        (None, AuthScheme::Bearer) => {
            let mut token = opts.token.clone().unwrap_or_default();
            if lifecycle && token.app_id.is_none() {
                token.app_id = Some(crate::lifecycle::LCW_APP_ID.into());
            }
            let token = backend.mint(&control, &token).await?;
            Some(format!("Bearer {token}"))
        }
        (None, AuthScheme::Pop) => None,
    };
    let mint_pop_each_attempt = opts.authorization.is_none() && opts.auth == AuthScheme::Pop;
    let body = match &opts.body {
        Some(raw) => raw.clone(),
        None => {
            let value = match opts.shape {
                Shape::Flat => flat_body(&fields),
                Shape::Envelope => envelope_body(&fields),
                Shape::Lifecycle => lifecycle_body(&fields, opts),
            };
            serde_json::to_string(&value)?
        }
    };

    let timeout =
        Duration::from_millis(opts.client_timeout_ms.unwrap_or(DEFAULT_CLIENT_TIMEOUT_MS));
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .context("building the HTTP client")?;
    let max_attempts = 1 + opts.maximum_retries.unwrap_or(DEFAULT_MAXIMUM_RETRIES);
    let client_request_id = uuid::Uuid::new_v4().to_string();
    let mut report = SendReport {
        request_id: fields.request_id.clone(),
        stage_instance_id: fields.stage_instance_id.clone(),
        ..SendReport::default()
    };
    let started = Instant::now();
    loop {
        report.attempts += 1;
        // Minted before the clock starts: the latency is the receiver's, not our signing.
        let pop_header = if mint_pop_each_attempt {
            let mut pop = opts.pop.clone().unwrap_or_default();
            if lifecycle {
                // Lifecycle Workflows signs as itself, for its own extension's Logic App.
                let at = pop.at.get_or_insert_with(MintOptions::default);
                if at.app_id.is_none() {
                    at.app_id = Some(crate::lifecycle::LCW_APP_ID.into());
                }
                if pop.p.is_none() {
                    pop.p = Some(Value::String(backend.lcw_resource()));
                }
            }
            let shr = backend.mint_pop(&control, &pop).await?;
            Some(format!("PoP {shr}"))
        } else {
            None
        };
        let attempt_started = Instant::now();
        let mut request = http
            .post(&opts.target_url)
            .header(CONTENT_TYPE, "application/json; charset=utf-8")
            .header("client-request-id", &client_request_id)
            .header("x-ms-client-request-id", &client_request_id)
            .body(body.clone());
        if let Some(value) = &fixed_authorization {
            request = request.header(AUTHORIZATION, value);
        }
        if let Some(value) = &pop_header {
            request = request.header(AUTHORIZATION, value);
        }
        let (status, error, retryable) = match request.send().await {
            Ok(resp) => {
                let status = resp.status();
                // Drain the body so the attempt's latency includes it (bounded by the timeout).
                let drained = resp.bytes().await;
                match drained {
                    Err(err) if err.is_timeout() => (
                        Some(status.as_u16()),
                        Some(format!(
                            "timeout after {} ms reading the response",
                            timeout.as_millis()
                        )),
                        true,
                    ),
                    _ if status.is_success() => (Some(status.as_u16()), None, false),
                    _ => (
                        Some(status.as_u16()),
                        Some(format!("target answered {status}")),
                        status.is_server_error(),
                    ),
                }
            }
            Err(err) if err.is_timeout() => (
                None,
                Some(format!("timeout after {} ms", timeout.as_millis())),
                true,
            ),
            Err(err) => (None, Some(format!("connection error: {err}")), true),
        };
        report
            .attempt_latencies_ms
            .push(attempt_started.elapsed().as_secs_f64() * 1000.0);
        report.status = status;
        report.error = error;
        tracing::info!(
            target_url = %opts.target_url,
            stage = %fields.stage,
            attempt = report.attempts,
            status = ?report.status,
            error = ?report.error,
            "callout attempt"
        );
        if !retryable || report.attempts >= max_attempts {
            break;
        }
    }
    report.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok(report)
}
