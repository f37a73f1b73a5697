//! Microsoft Graph: app-only token (client credentials, cached) and the entitlement-management
//! `resume` action (protocol.md §3), with errors classified for the worker's retry decisions.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::callout::{Callout, callback_path_names_request};
use crate::config::{GraphConfig, IdentityConfig};
use crate::policy::{Action, Decision};
use crate::secret::Secret;

/// How a resume ended, when it ended well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeOutcome {
    /// Graph accepted the resume (204).
    Resumed,
    /// The request is no longer waiting for this callout (resumed before, timed out, or gone):
    /// nothing left to do.
    NotWaiting(String),
}

/// Why a Graph call failed; the worker decides on retry from the variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// Throttled or unavailable: try again after at least `retry_after`.
    #[error("{message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// A configuration or permission problem an admin can fix; retried until the deadline.
    #[error("{message}")]
    Config { message: String },
    /// Graph rejected the request itself; retrying will not help.
    #[error("{message}")]
    Rejected { message: String },
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

#[derive(Deserialize, Default)]
struct TokenError {
    error: Option<String>,
}

struct CachedToken {
    token: Secret,
    refresh_at: Instant,
}

pub struct GraphClient {
    http: reqwest::Client,
    cfg: GraphConfig,
    token_url: String,
    token: Mutex<Option<CachedToken>>,
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

/// `Retry-After` as delta-seconds or an HTTP-date (RFC 9110 §10.2.3), capped at an hour.
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    parse_retry_after(v, jiff::Timestamp::now())
}

fn parse_retry_after(v: &str, now: jiff::Timestamp) -> Option<Duration> {
    let v = v.trim();
    let secs = match v.parse::<u64>() {
        Ok(s) => s,
        Err(_) => {
            let at = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
            u64::try_from(at.as_second().saturating_sub(now.as_second())).unwrap_or(0)
        }
    };
    Some(Duration::from_secs(secs.min(3600)))
}

impl GraphClient {
    pub fn new(http: reqwest::Client, identity: &IdentityConfig, cfg: GraphConfig) -> Self {
        let token_url = identity
            .authority
            .join(&format!("/{}/oauth2/v2.0/token", identity.tenant_id));
        GraphClient {
            http,
            cfg,
            token_url,
            token: Mutex::new(None),
        }
    }

    /// A cached app-only token, renewed five minutes before it expires.
    async fn access_token(&self) -> Result<Secret, GraphError> {
        let mut guard = self.token.lock().await;
        if let Some(t) = guard.as_ref()
            && Instant::now() < t.refresh_at
        {
            return Ok(t.token.clone());
        }
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.cfg.client_id.as_str()),
            ("client_secret", self.cfg.client_secret.expose()),
            ("scope", self.cfg.scope.as_str()),
        ];
        let resp = self
            .http
            .post(&self.token_url)
            .form(&form)
            .timeout(self.cfg.timeout)
            .send()
            .await
            .map_err(|e| GraphError::Transient {
                message: format!("token endpoint unreachable: {}", without_url(&e)),
                retry_after: None,
            })?;
        let status = resp.status();
        if status.is_success() {
            let t: TokenResponse = resp.json().await.map_err(|_| GraphError::Transient {
                message: "token endpoint answered with an unreadable body".into(),
                retry_after: None,
            })?;
            // Clamped: a nonsensical `expires_in` must not overflow the clock arithmetic.
            let life = Duration::from_secs(t.expires_in.unwrap_or(3600).min(86_400));
            let refresh_in = life.saturating_sub(Duration::from_secs(300)).max(life / 2);
            let token = Secret::new(t.access_token);
            *guard = Some(CachedToken {
                token: token.clone(),
                refresh_at: Instant::now() + refresh_in,
            });
            return Ok(token);
        }
        let ra = retry_after(&resp);
        let body: TokenError = resp.json().await.unwrap_or_default();
        let code = body.error.unwrap_or_else(|| "unknown_error".into());
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(GraphError::Transient {
                message: format!("token endpoint: HTTP {status} {code}"),
                retry_after: ra,
            });
        }
        Err(GraphError::Config {
            message: format!(
                "token endpoint refused the client credentials ({code}): check graph.client_id, graph.client_secret and identity.tenant_id"
            ),
        })
    }

    async fn drop_token(&self) {
        *self.token.lock().await = None;
    }

    /// The URL of the resume action: always the documented
    /// `/identityGovernance/entitlementManagement/assignmentRequests/{id}/resume`, which v1.0 and
    /// beta both serve (beta's older `accessPackageAssignmentRequests` does not exist in v1.0).
    /// A `callbackUriPath` that names another request is logged, never followed.
    pub fn resume_url(&self, c: &Callout) -> String {
        if let Some(p) = c.callback_uri_path.as_deref()
            && !callback_path_names_request(p, &c.request_id)
        {
            tracing::warn!(callback_uri_path = %p, "callbackUriPath does not name this request's resume; using the documented path");
        }
        self.cfg.base_url.join(&format!(
            "/{}/identityGovernance/entitlementManagement/assignmentRequests/{}/resume",
            self.cfg.api_version.segment(),
            c.request_id
        ))
    }

    /// The body Graph documents for `resume` (accessPackageAssignmentRequestCallbackData).
    pub fn resume_body(&self, c: &Callout, d: &Decision) -> Value {
        let mut data = json!({
            "@odata.type": "#microsoft.graph.accessPackageAssignmentRequestCallbackData",
            "stage": c.stage.as_graph(),
            "customExtensionStageInstanceId": c.stage_instance_id.as_str(),
            "customExtensionStageInstanceDetail": d.detail,
        });
        if d.action == Action::Deny && c.stage.can_deny() {
            data["state"] = json!("denied");
        }
        json!({
            "source": self.cfg.resume_source,
            "type": format!("microsoft.graph.accessPackageCustomExtensionStage.{}", c.stage.as_graph()),
            "data": data,
        })
    }

    /// Posts the resume. Idempotent in effect: a request that no longer waits is `NotWaiting`.
    pub async fn resume(&self, c: &Callout, d: &Decision) -> Result<ResumeOutcome, GraphError> {
        let url = self.resume_url(c);
        let body = self.resume_body(c, d);
        let token = self.access_token().await?;
        let resp = self
            .http
            .post(&url)
            .bearer_auth(token.expose())
            .json(&body)
            .timeout(self.cfg.timeout)
            .send()
            .await
            .map_err(|e| GraphError::Transient {
                message: format!("Graph unreachable: {}", without_url(&e)),
                retry_after: None,
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(ResumeOutcome::Resumed);
        }
        let ra = retry_after(&resp);
        let text = graph_error_text(&resp.text().await.unwrap_or_default());
        match status.as_u16() {
            429 | 500 | 502 | 503 | 504 => Err(GraphError::Transient {
                message: format!("Graph resume: HTTP {status} {text}"),
                retry_after: ra,
            }),
            401 => {
                self.drop_token().await;
                Err(GraphError::Transient {
                    message: format!(
                        "Graph resume: token refused (HTTP 401 {text}); a new token will be fetched"
                    ),
                    retry_after: ra,
                })
            }
            403 => Err(GraphError::Config {
                message: format!(
                    "Graph resume: HTTP 403 {text}. The identity lacks the Access package assignment manager role on catalog {} (or EntitlementManagement.ReadWrite.All)",
                    c.catalog
                        .display_name
                        .as_deref()
                        .or(c.catalog.id.as_deref())
                        .unwrap_or("(unknown)")
                ),
            }),
            400 | 404 | 409 => {
                // Undocumented which code Graph uses for "not waiting any more": ask the request.
                match self.callout_status(c, &token).await {
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
                        message: format!("Graph resume: HTTP {status} {text}"),
                    }),
                    // Could not tell: try again rather than give up.
                    Err(e) => Err(GraphError::Transient {
                        message: format!(
                            "Graph resume: HTTP {status} {text}; reading the request failed: {e}"
                        ),
                        retry_after: None,
                    }),
                }
            }
            _ => Err(GraphError::Rejected {
                message: format!("Graph resume: HTTP {status} {text}"),
            }),
        }
    }

    /// Where our callout stands on the request (`customExtensionCalloutInstances[].status`).
    async fn callout_status(
        &self,
        c: &Callout,
        token: &Secret,
    ) -> Result<CalloutState, GraphError> {
        let url = self.cfg.base_url.join(&format!(
            "/{}/identityGovernance/entitlementManagement/assignmentRequests/{}",
            self.cfg.api_version.segment(),
            c.request_id
        ));
        let resp = self
            .http
            .get(&url)
            .bearer_auth(token.expose())
            .timeout(self.cfg.timeout)
            .send()
            .await
            .map_err(|e| GraphError::Transient {
                message: without_url(&e),
                retry_after: None,
            })?;
        if resp.status().as_u16() == 404 {
            return Ok(CalloutState::Gone);
        }
        if !resp.status().is_success() {
            return Err(GraphError::Transient {
                message: format!("HTTP {}", resp.status()),
                retry_after: None,
            });
        }
        let v: Value = resp.json().await.map_err(|_| GraphError::Transient {
            message: "unreadable request".into(),
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
}

/// What a read of the request says about our callout.
enum CalloutState {
    /// The request does not exist (any more).
    Gone,
    /// Our callout is not among the request's callout instances.
    NotListed,
    /// `customExtensionCalloutInstance.status` of our callout.
    Status(String),
}

/// A short, uniform description of a transport error (reqwest's text repeats the whole URL).
fn without_url(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else if e.is_decode() || e.is_body() {
        "unreadable response".into()
    } else {
        "request failed".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now: jiff::Timestamp = "2026-11-23T10:00:00Z"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Mon, 23 Nov 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Mon, 23 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("99999", now),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
