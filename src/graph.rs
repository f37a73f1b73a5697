//! Microsoft Graph: the entitlement-management `resume` action (protocol.md §3) under a request
//! rate bound, a circuit breaker and the callout's deadline, with a typed error for every
//! documented failure. Tokens come from [`crate::credentials`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::approval::{ApprovalStage, Approver, iso_duration};
use crate::callout::{Callout, callback_path_names_request};
use crate::credentials::{Audience, CredentialError, Credentials};
use crate::outbound::{retry_after, transport_error};
use crate::queue::Deadline;
use crate::resilience::{CircuitBreaker, Pause, RateLimiter};

pub mod settings;
pub use settings::Settings;

/// How a resume ended, when it ended well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeOutcome {
    /// Graph accepted the resume (204).
    Resumed,
    /// The request is no longer waiting for this callout (resumed before, timed out, or gone):
    /// nothing left to do.
    NotWaiting(String),
}

/// How long Graph calls pause after a 429 that names no `Retry-After`.
const DEFAULT_THROTTLE_PAUSE: Duration = Duration::from_secs(5);

/// Why a Graph call failed. Every variant but `Rejected` and `DeadlinePassed` is retried (the
/// callout waits in the queue); each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// 429, or 503 with `Retry-After`: Graph asked us to slow down; every call of the process
    /// pauses until then (the circuit breaker does not count a 429).
    #[error("Graph throttled the call (HTTP {status}); all Graph calls paused for {}", fmt_wait(*retry_after))]
    Throttled {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// An earlier call was throttled and its pause lasts longer than this call can wait.
    #[error("Graph calls paused for {} s after Graph throttled a call (Retry-After)", retry_in.as_secs().max(1))]
    Paused { retry_in: Duration },
    /// 5xx, a timeout or a broken connection.
    #[error("Graph unavailable: {detail}")]
    Unavailable {
        detail: String,
        retry_after: Option<Duration>,
    },
    /// Too many failures in a row: calls pause so that an outage does not become a hot loop.
    #[error("Graph calls paused for {} s after repeated failures (circuit breaker open); last failure: {last_failure}", retry_in.as_secs())]
    CircuitOpen {
        retry_in: Duration,
        last_failure: String,
    },
    /// Our own request-rate bound has no free slot soon enough (a backlog larger than
    /// `graph.max_requests_per_second` can serve within a lease).
    #[error("Graph request rate bound reached (graph.max_requests_per_second); the job waits")]
    RateBound { retry_after: Duration },
    /// No token (credentials, managed identity, Key Vault); the message names the setting.
    #[error("no Graph token: {0}")]
    Credential(#[from] CredentialError),
    /// 401 with a fresh token: the token is for the wrong tenant or cloud.
    #[error(
        "Graph refused accessgate's token (HTTP 401 {detail}): check identity.tenant_id and identity.cloud; a new token will be fetched"
    )]
    Unauthorized { detail: String },
    /// 403 on resume.
    #[error(
        "Graph resume: HTTP 403 {detail}. {identity} lacks the Access package assignment manager role on catalog {catalog} (or the EntitlementManagement.ReadWrite.All application permission): add it in the catalog's Roles and administrators"
    )]
    Forbidden {
        identity: String,
        catalog: String,
        detail: String,
    },
    /// 403 on a Lifecycle Workflows task resume.
    #[error(
        "Graph task resume: HTTP 403 {detail}. {identity} may not resume tasks of workflow {workflow}: add its application to the custom task extension's callbackConfiguration.authorizedApps (least privilege), or grant LifecycleWorkflows.ReadWrite.All"
    )]
    TaskForbidden {
        identity: String,
        workflow: String,
        detail: String,
    },
    /// Graph refused the resume itself (the callout still waits); retrying will not help.
    #[error("Graph refused the resume: HTTP {status} {detail}")]
    Rejected { status: u16, detail: String },
    /// The callout's deadline has passed (or no request slot is free before it): resuming now
    /// would act on a callout Entra has given up on.
    #[error("the callout's deadline has passed; no resume is sent after it")]
    DeadlinePassed,
}

fn fmt_wait(d: Option<Duration>) -> String {
    d.map_or_else(|| "a while".into(), |d| format!("{} s", d.as_secs()))
}

impl GraphError {
    /// The least wait before the next attempt that the error itself asks for.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after, .. } | Self::Unavailable { retry_after, .. } => {
                *retry_after
            }
            Self::CircuitOpen { retry_in, .. } | Self::Paused { retry_in } => Some(*retry_in),
            Self::RateBound { retry_after } => Some(*retry_after),
            Self::Credential(e) => e.retry_after(),
            _ => None,
        }
    }
    /// True when retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Rejected { .. } | Self::DeadlinePassed)
    }
}

pub struct GraphClient {
    http: reqwest::Client,
    cfg: Settings,
    credentials: Arc<Credentials>,
    limiter: RateLimiter,
    breaker: CircuitBreaker,
    /// Throttling: every call waits until the last `Retry-After`.
    pause: Pause,
    /// What the last failed Graph call said, for the breaker's refusals.
    last_failure: std::sync::Mutex<String>,
}

/// Graph's error body: `{"error":{"code","message"}}`.
fn graph_error_text(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let code = v["error"]["code"].as_str().unwrap_or("");
    let msg = v["error"]["message"].as_str().unwrap_or("");
    let s = format!("{code}: {msg}");
    let s = s.trim_matches(|c| c == ':' || c == ' ');
    s.chars().take(300).collect()
}

/// What a resume says, in Graph's terms: deny (sent only where the stage takes one) or
/// continue, and the detail text approvers see.
#[derive(Debug, Clone, Copy)]
pub struct Resume<'a> {
    pub deny: bool,
    pub detail: &'a str,
    /// Dynamic approval: the stage Entra should run (with a continue at that stage).
    pub approval: Option<&'a ApprovalStage>,
}

/// The `type` of a task resume, as the docs' example and Microsoft's template write it.
const LIFECYCLE_EVENT_TYPE: &str = "lifecycleEvent";
/// `data.@odata.type` of a dynamic-approval resume.
const APPROVAL_CALLBACK_TYPE: &str = "#microsoft.graph.assignmentRequestApprovalStageCallbackData";

/// One approver set in the v1.0 `subjectSet` shape (singleUser has `userId`, groupMembers
/// `groupId`; beta's `userSet` `id`/`isBackup` is a different type).
fn subject_set(a: &Approver) -> Value {
    match a {
        Approver::Manager(level) => {
            json!({"@odata.type": "#microsoft.graph.requestorManager", "managerLevel": level})
        }
        Approver::InternalSponsors => json!({"@odata.type": "#microsoft.graph.internalSponsors"}),
        Approver::ExternalSponsors => json!({"@odata.type": "#microsoft.graph.externalSponsors"}),
        Approver::UserSponsors => json!({"@odata.type": "#microsoft.graph.targetUserSponsors"}),
        Approver::User(id) => json!({"@odata.type": "#microsoft.graph.singleUser", "userId": id}),
        Approver::Group(id) => {
            json!({"@odata.type": "#microsoft.graph.groupMembers", "groupId": id})
        }
    }
}

/// The v1.0 `accessPackageApprovalStage`, which the dynamic-approval docs require.
pub fn approval_stage_json(s: &ApprovalStage) -> Value {
    let sets = |l: &[Approver]| Value::Array(l.iter().map(subject_set).collect());
    let mut v = json!({
        "durationBeforeAutomaticDenial": iso_duration(s.deny_after),
        "isApproverJustificationRequired": s.justification_required,
        "isEscalationEnabled": s.escalate_after.is_some(),
        "primaryApprovers": sets(&s.primary),
        "fallbackPrimaryApprovers": sets(&s.fallback_primary),
        "escalationApprovers": sets(&s.escalation),
        "fallbackEscalationApprovers": sets(&s.fallback_escalation),
    });
    if let Some(e) = s.escalate_after {
        v["durationBeforeEscalation"] = json!(iso_duration(e));
    }
    v
}

impl GraphClient {
    pub fn new(http: reqwest::Client, cfg: Settings, credentials: Arc<Credentials>) -> Self {
        GraphClient {
            http,
            limiter: RateLimiter::new(cfg.max_requests_per_second),
            // A probe takes a token request and the call itself.
            breaker: CircuitBreaker::new(
                cfg.circuit_failure_threshold,
                cfg.circuit_open,
                cfg.timeout * 2,
            ),
            pause: Pause::default(),
            cfg,
            credentials,
            last_failure: std::sync::Mutex::new(String::new()),
        }
    }

    fn failed(&self, what: &str) {
        if let Ok(mut l) = self.last_failure.lock() {
            *l = what.to_owned();
        }
    }

    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    /// Who calls Graph, for messages: "The app registration X" or "The managed identity".
    pub fn identity(&self) -> String {
        match self.credentials.mode().client_id() {
            Some(id) => format!("The app registration {id}"),
            None => format!("The {}", self.credentials.managed_identity().describe()),
        }
    }

    /// One Graph request under the throttling pause, the circuit breaker, the rate bound and the
    /// deadline. The outcome feeds the breaker: 5xx and transport failures count; throttling
    /// (429, 503 with `Retry-After`) pauses every call of the process until its `Retry-After`.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        deadline: Instant,
    ) -> Result<reqwest::Response, GraphError> {
        let now = Instant::now();
        if now >= deadline {
            return Err(GraphError::DeadlinePassed);
        }
        // Waits (for a pause, a probe's verdict, a rate slot) last at most two request
        // timeouts, well inside a worker's lease; beyond that the job goes back to the queue
        // rather than hold its lease while waiting.
        let wait_limit = deadline.min(now + self.cfg.timeout * 2);
        if let Some(until) = self.pause.until(now) {
            if until > wait_limit {
                return Err(GraphError::Paused {
                    retry_in: until - now,
                });
            }
            tokio::time::sleep_until(until.into()).await;
        }
        let probe =
            self.breaker
                .admit(wait_limit)
                .await
                .map_err(|retry_in| GraphError::CircuitOpen {
                    retry_in,
                    last_failure: self
                        .last_failure
                        .lock()
                        .map(|l| l.clone())
                        .unwrap_or_default(),
                })?;
        let not_sent = |e: GraphError| {
            if probe {
                self.breaker.probe_not_sent(Instant::now());
            }
            e
        };
        if !self.limiter.acquire(wait_limit).await {
            return Err(not_sent(if wait_limit == deadline {
                GraphError::DeadlinePassed
            } else {
                GraphError::RateBound {
                    retry_after: self.cfg.timeout,
                }
            }));
        }
        let token = self
            .credentials
            .token(Audience::Graph)
            .await
            .map_err(|e| not_sent(e.into()))?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(not_sent(GraphError::DeadlinePassed));
        }
        let resp = match req
            .bearer_auth(token.expose())
            .timeout(self.cfg.timeout.min(left))
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.breaker.failure(Instant::now());
                let detail = transport_error(&e).to_owned();
                self.failed(&detail);
                return Err(GraphError::Unavailable {
                    detail,
                    retry_after: None,
                });
            }
        };
        let status = resp.status().as_u16();
        let ra = retry_after(resp.headers());
        match status {
            429 => {
                // Graph answered: it is up, only busy. Not a breaker failure.
                self.breaker.success();
                let pause = self.throttled(status, ra);
                Err(GraphError::Throttled {
                    status,
                    retry_after: Some(pause),
                })
            }
            503 if ra.is_some() => {
                // Unavailable, with advice on when to come back: both a failure and a pause.
                self.breaker.failure(Instant::now());
                self.failed("HTTP 503 with Retry-After");
                let pause = self.throttled(status, ra);
                Err(GraphError::Throttled {
                    status,
                    retry_after: Some(pause),
                })
            }
            500..=599 => {
                self.breaker.failure(Instant::now());
                let text = graph_error_text(&resp.text().await.unwrap_or_default());
                let detail = format!("HTTP {status} {text}");
                self.failed(&detail);
                Err(GraphError::Unavailable {
                    detail,
                    retry_after: ra,
                })
            }
            401 => {
                self.breaker.success();
                self.credentials.invalidate(Audience::Graph).await;
                let text = graph_error_text(&resp.text().await.unwrap_or_default());
                Err(GraphError::Unauthorized { detail: text })
            }
            _ => {
                self.breaker.success();
                Ok(resp)
            }
        }
    }

    /// Pauses every Graph call of this process for `Retry-After` (or a default), logged once per
    /// pause it extends; returns the pause.
    fn throttled(&self, status: u16, retry_after: Option<Duration>) -> Duration {
        let pause = retry_after
            .unwrap_or(DEFAULT_THROTTLE_PAUSE)
            .min(Duration::from_secs(3600));
        if self.pause.pause(Instant::now(), pause).is_some() {
            tracing::warn!(
                status,
                pause_ms = pause.as_millis() as u64,
                retry_after_s = retry_after.map(|d| d.as_secs()),
                "Graph throttled a call: all Graph calls paused until its Retry-After"
            );
        }
        pause
    }

    /// Until when Graph calls are held back (throttling pause or open breaker), if they are.
    pub fn blocked_until(&self) -> Option<Instant> {
        let now = Instant::now();
        match (self.pause.until(now), self.breaker.open_until(now)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Returns once Graph calls may be tried (neither paused nor refused by an open breaker);
    /// at once when they may. The worker pool waits here instead of claiming jobs it could only
    /// put back, and goes the moment the breaker lets its probe through or the pause ends.
    pub async fn callable(&self) {
        loop {
            let (mut breaker, mut pause) = (self.breaker.subscribe(), self.pause.subscribe());
            let Some(until) = self.blocked_until() else {
                return;
            };
            tokio::select! {
                _ = breaker.changed() => {}
                _ = pause.changed() => {}
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
    }

    /// Sees every later change of the circuit breaker's state.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.breaker.subscribe()
    }

    /// `closed`, `open` or `half_open`.
    pub fn breaker_state(&self) -> &'static str {
        self.breaker.state_name(Instant::now())
    }

    /// The URL of the resume action: always the documented
    /// `/identityGovernance/entitlementManagement/assignmentRequests/{id}/resume`, which v1.0 and
    /// beta both serve (beta's older `accessPackageAssignmentRequests` does not exist in v1.0).
    /// A `callbackUriPath` that names another request is logged, never followed.
    pub fn resume_url(&self, c: &Callout) -> String {
        if let Some(t) = c.task.as_deref() {
            if let Some(p) = c.callback_uri_path.as_deref()
                && !t.names_resume(p)
            {
                tracing::warn!(callback_uri_path = %p, "callbackUriPath does not name this task's resume; using the documented path");
            }
            let version = self.cfg.api_version.segment();
            return self
                .cfg
                .base_url
                .join(&format!("/{version}{}", t.resume_path()));
        }
        if let Some(p) = c.callback_uri_path.as_deref()
            && !callback_path_names_request(p, &c.request_id)
        {
            tracing::warn!(callback_uri_path = %p, "callbackUriPath does not name this request's resume; using the documented path");
        }
        // The approval-stage callback type exists in v1.0's schema only (not in the beta
        // subset), and the docs require the v1.0 stage shape: that resume always goes to v1.0.
        let version = if c.stage.is_approval() {
            "v1.0"
        } else {
            self.cfg.api_version.segment()
        };
        self.cfg.base_url.join(&format!(
            "/{version}/identityGovernance/entitlementManagement/assignmentRequests/{}/resume",
            c.request_id
        ))
    }

    /// The body Graph documents for `resume` (accessPackageAssignmentRequestCallbackData).
    pub fn resume_body(&self, c: &Callout, r: &Resume<'_>) -> Value {
        if c.task.is_some() {
            // customTaskExtensionCallbackData with the enum members exactly as the schema
            // names them (lower case); the docs' examples write `Completed`.
            let status = if r.deny { "failed" } else { "completed" };
            return json!({
                "data": {"operationStatus": status},
                "source": self.cfg.resume_source,
                "type": LIFECYCLE_EVENT_TYPE,
            });
        }
        let mut data = json!({
            "@odata.type": "#microsoft.graph.accessPackageAssignmentRequestCallbackData",
            "stage": c.stage.as_graph(),
            "customExtensionStageInstanceId": c.stage_instance_id.as_str(),
            "customExtensionStageInstanceDetail": r.detail,
        });
        if r.deny && c.stage.can_deny() {
            data["state"] = json!("denied");
        } else if let Some(stage) = r.approval.filter(|_| c.stage.is_approval()) {
            data["@odata.type"] = json!(APPROVAL_CALLBACK_TYPE);
            data["approvalStage"] = approval_stage_json(stage);
        }
        json!({
            "source": self.cfg.resume_source,
            "type": format!("microsoft.graph.accessPackageCustomExtensionStage.{}", c.stage.as_graph()),
            "data": data,
        })
    }

    /// Posts the resume, never after `deadline`. Idempotent in effect: a request that no
    /// longer waits is `NotWaiting`.
    pub async fn resume(
        &self,
        c: &Callout,
        r: &Resume<'_>,
        deadline: Deadline,
    ) -> Result<ResumeOutcome, GraphError> {
        let deadline = deadline.instant();
        let url = self.resume_url(c);
        let body = self.resume_body(c, r);
        let mut req = self.http.post(&url).json(&body);
        if c.stage.is_approval() {
            // The stage is an evolvable enum member (after unknownFutureValue in both schema
            // subsets), which Graph reads only when asked to.
            req = req.header("Prefer", "include-unknown-enum-members");
        }
        let resp = self.send(req, deadline).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(ResumeOutcome::Resumed);
        }
        let text = graph_error_text(&resp.text().await.unwrap_or_default());
        match status.as_u16() {
            403 if c.task.is_some() => Err(GraphError::TaskForbidden {
                identity: self.identity(),
                workflow: c
                    .task
                    .as_deref()
                    .map(crate::callout::LifecycleTask::workflow_shown)
                    .unwrap_or_default(),
                detail: text,
            }),
            403 => Err(GraphError::Forbidden {
                identity: self.identity(),
                catalog: c
                    .catalog
                    .display_name
                    .as_deref()
                    .or(c.catalog.id.as_deref())
                    .unwrap_or("(unknown)")
                    .to_owned(),
                detail: text,
            }),
            400 | 404 | 409 => {
                // Undocumented which code Graph uses for "not waiting any more": ask the request.
                match self.callout_status(c, deadline).await {
                    Ok(CalloutState::Gone) => Ok(ResumeOutcome::NotWaiting(
                        "the request no longer exists".into(),
                    )),
                    Ok(CalloutState::Status(s))
                        if !s.eq_ignore_ascii_case("waitingForCallback") =>
                    {
                        Ok(ResumeOutcome::NotWaiting(format!("callout status is {s}")))
                    }
                    // Still waiting, or our callout is not on the request: Graph refused this
                    // resume itself. Never "done": that would let the request silently expire.
                    Ok(_) => Err(GraphError::Rejected {
                        status: status.as_u16(),
                        detail: text,
                    }),
                    Err(e) if e.is_permanent() => Err(e),
                    // Could not tell: try again rather than give up.
                    Err(e) => Err(GraphError::Unavailable {
                        detail: format!(
                            "resume answered HTTP {status} {text}; reading the request failed: {e}"
                        ),
                        retry_after: e.retry_after(),
                    }),
                }
            }
            _ => Err(GraphError::Rejected {
                status: status.as_u16(),
                detail: text,
            }),
        }
    }

    /// Where our callout stands on the request (`customExtensionCalloutInstances[].status`), or
    /// a task's processing result (`processingStatus`, waiting while `inProgress`).
    async fn callout_status(
        &self,
        c: &Callout,
        deadline: Instant,
    ) -> Result<CalloutState, GraphError> {
        if let Some(t) = c.task.as_deref() {
            let path = t.resume_path();
            let url = self.cfg.base_url.join(&format!(
                "/{}{}",
                self.cfg.api_version.segment(),
                path.trim_end_matches("/resume")
            ));
            let resp = self.send(self.http.get(&url), deadline).await?;
            if resp.status().as_u16() == 404 {
                return Ok(CalloutState::Gone);
            }
            if !resp.status().is_success() {
                return Err(GraphError::Unavailable {
                    detail: format!("reading the task processing result: HTTP {}", resp.status()),
                    retry_after: None,
                });
            }
            let v: Value = resp.json().await.map_err(|_| GraphError::Unavailable {
                detail: "reading the task processing result: unreadable answer".into(),
                retry_after: None,
            })?;
            return Ok(match v["processingStatus"].as_str() {
                Some(s) if s.eq_ignore_ascii_case("inProgress") => CalloutState::Waiting,
                Some(s) => CalloutState::Status(s.to_owned()),
                None => CalloutState::NotListed,
            });
        }
        let url = self.cfg.base_url.join(&format!(
            "/{}/identityGovernance/entitlementManagement/assignmentRequests/{}",
            self.cfg.api_version.segment(),
            c.request_id
        ));
        let resp = self.send(self.http.get(&url), deadline).await?;
        if resp.status().as_u16() == 404 {
            return Ok(CalloutState::Gone);
        }
        if !resp.status().is_success() {
            return Err(GraphError::Unavailable {
                detail: format!("reading the request: HTTP {}", resp.status()),
                retry_after: None,
            });
        }
        let v: Value = resp.json().await.map_err(|_| GraphError::Unavailable {
            detail: "reading the request: unreadable answer".into(),
            retry_after: None,
        })?;
        let status = v["customExtensionCalloutInstances"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| {
                i["id"]
                    .as_str()
                    .is_some_and(|id| id.eq_ignore_ascii_case(c.stage_instance_id.as_str()))
            })
            .and_then(|i| i["status"].as_str())
            .map(str::to_owned);
        Ok(status.map_or(CalloutState::NotListed, CalloutState::Status))
    }

    /// The caller's entitlement-management role assignments (for `doctor`): pairs of role
    /// display name and app scope id (`/AccessPackageCatalog/{id}`).
    pub async fn role_assignments(
        &self,
        principal_id: &str,
    ) -> Result<Vec<(String, String)>, GraphError> {
        let url = self.cfg.base_url.join(&format!(
            "/{}/roleManagement/entitlementManagement/roleAssignments",
            self.cfg.api_version.segment()
        ));
        let filter = format!("principalId eq '{principal_id}'");
        let req = self
            .http
            .get(&url)
            .query(&[("$filter", filter.as_str()), ("$expand", "roleDefinition")]);
        let resp = self
            .send(req, Instant::now() + self.cfg.timeout * 2)
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let text = graph_error_text(&resp.text().await.unwrap_or_default());
            return Err(GraphError::Rejected {
                status: status.as_u16(),
                detail: text,
            });
        }
        let v: Value = resp.json().await.map_err(|_| GraphError::Unavailable {
            detail: "unreadable role assignments".into(),
            retry_after: None,
        })?;
        Ok(v["value"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["roleDefinition"]["displayName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    a["appScopeId"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }
}

/// One request of a JSON batch: a GET of a URL relative to the version root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchGet {
    pub id: &'static str,
    pub url: String,
}

/// One answer of a JSON batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchAnswer {
    pub id: String,
    pub status: u16,
    pub body: Value,
}

/// Graph's limit on requests in one `$batch`.
pub const MAX_BATCH: usize = 20;

impl GraphClient {
    /// GETs up to [`MAX_BATCH`] URLs in one `POST /$batch` (JSON batching): one HTTP call under
    /// the rate bound and breaker. Inner failures come back as statuses, not errors.
    pub async fn batch_get(
        &self,
        gets: &[BatchGet],
        deadline: Instant,
    ) -> Result<Vec<BatchAnswer>, GraphError> {
        let url = self
            .cfg
            .base_url
            .join(&format!("/{}/$batch", self.cfg.api_version.segment()));
        let requests: Vec<Value> = gets
            .iter()
            .take(MAX_BATCH)
            .map(|g| json!({ "id": g.id, "method": "GET", "url": g.url }))
            .collect();
        let resp = self
            .send(
                self.http.post(&url).json(&json!({ "requests": requests })),
                deadline,
            )
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let text = graph_error_text(&resp.text().await.unwrap_or_default());
            return Err(GraphError::Rejected {
                status: status.as_u16(),
                detail: format!("$batch: {text}"),
            });
        }
        let v: Value = resp.json().await.map_err(|_| GraphError::Unavailable {
            detail: "$batch: the answer is not JSON".into(),
            retry_after: None,
        })?;
        let answers = v["responses"]
            .as_array()
            .ok_or_else(|| GraphError::Unavailable {
                detail: "$batch: the answer has no responses array".into(),
                retry_after: None,
            })?;
        Ok(answers
            .iter()
            .map(|a| BatchAnswer {
                id: a["id"].as_str().unwrap_or_default().to_owned(),
                status: a["status"]
                    .as_u64()
                    .and_then(|s| u16::try_from(s).ok())
                    .unwrap_or(0),
                body: a["body"].clone(),
            })
            .collect())
    }

    /// GETs a follow-up page (`@odata.nextLink`). The link must lie under the configured Graph
    /// base URL, so an answer can never send our token elsewhere.
    pub async fn get_page(
        &self,
        next_link: &str,
        deadline: Instant,
    ) -> Result<(u16, Value), GraphError> {
        let base = self.cfg.base_url.join("/");
        if !next_link.starts_with(&base) {
            return Err(GraphError::Rejected {
                status: 0,
                detail: format!("nextLink {next_link:?} is not under {base}; not followed"),
            });
        }
        let resp = self.send(self.http.get(next_link), deadline).await?;
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.map_err(|_| GraphError::Unavailable {
            detail: format!("a nextLink page answered HTTP {status} with a body that is not JSON"),
            retry_after: None,
        })?;
        Ok((status, v))
    }
}

/// What a read of the request says about our callout.
enum CalloutState {
    /// The request does not exist (any more).
    Gone,
    /// Our callout is not among the request's callout instances.
    NotListed,
    /// `customExtensionCalloutInstance.status` of our callout.
    Status(String),
    /// A task processing result still `inProgress`.
    Waiting,
}
