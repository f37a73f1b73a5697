//! The App Service / Functions managed identity endpoint (functions.md §9):
//! `GET {IDENTITY_ENDPOINT}?resource=R&api-version=2019-08-01[&client_id=…]` with header
//! `X-IDENTITY-HEADER`. Tokens are cached per resource.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use super::{AccessToken, CredentialError, refresh_in};
use crate::endpoint::EndpointUrl;
use crate::outbound::{retry_after, transport_error};
use crate::secret::Secret;

pub struct ManagedIdentity {
    http: reqwest::Client,
    endpoint: Option<EndpointUrl>,
    header: Option<Secret>,
    client_id: Option<String>,
    timeout: Duration,
    cache: Mutex<HashMap<String, (Secret, i64, Instant)>>,
}

#[derive(Deserialize)]
struct MiResponse {
    access_token: String,
    /// A string of unix seconds (2019-08-01); older endpoints sent a number or a date.
    expires_on: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct MiError {
    message: Option<String>,
    error_description: Option<String>,
}

/// `expires_on` as unix seconds: a number, a string of digits, or a date (older API versions).
fn expires_on(v: Option<&serde_json::Value>, now: i64) -> i64 {
    let parsed = v.and_then(|v| {
        v.as_i64().or_else(|| {
            let s = v.as_str()?.trim();
            s.parse::<i64>().ok().or_else(|| {
                jiff::fmt::rfc2822::parse(s)
                    .ok()
                    .map(|z| z.timestamp().as_second())
                    .or_else(|| s.parse::<jiff::Timestamp>().ok().map(|t| t.as_second()))
            })
        })
    });
    match parsed {
        Some(t) if t > now => t.min(now + 86_400),
        // Unreadable or in the past: use it once, fetch again next time.
        _ => now,
    }
}

impl ManagedIdentity {
    pub fn new(
        http: reqwest::Client,
        endpoint: Option<EndpointUrl>,
        header: Option<Secret>,
        client_id: Option<String>,
        timeout: Duration,
    ) -> Self {
        Self {
            http,
            endpoint,
            header,
            client_id,
            timeout,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn is_configured(&self) -> bool {
        self.endpoint.is_some()
    }

    /// Which identity: "system-assigned" or "user-assigned <client id>".
    pub fn describe(&self) -> String {
        match &self.client_id {
            Some(id) => format!("user-assigned managed identity {id}"),
            None => "system-assigned managed identity".into(),
        }
    }

    /// A token for `resource` (e.g. `https://vault.azure.net`), cached until shortly before it
    /// expires.
    pub async fn token(&self, resource: &str) -> Result<AccessToken, CredentialError> {
        let mut cache = self.cache.lock().await;
        if let Some((t, exp, refresh_at)) = cache.get(resource)
            && Instant::now() < *refresh_at
        {
            return Ok(AccessToken {
                token: t.clone(),
                expires_on: *exp,
            });
        }
        let t = self.fetch(resource).await?;
        let life = Duration::from_secs(
            u64::try_from(t.expires_on - jiff::Timestamp::now().as_second()).unwrap_or(0),
        );
        cache.insert(
            resource.to_owned(),
            (
                t.token.clone(),
                t.expires_on,
                Instant::now() + refresh_in(life),
            ),
        );
        Ok(t)
    }

    pub async fn invalidate(&self, resource: &str) {
        self.cache.lock().await.remove(resource);
    }

    async fn fetch(&self, resource: &str) -> Result<AccessToken, CredentialError> {
        let Some(endpoint) = &self.endpoint else {
            return Err(CredentialError::Misconfigured {
                setting: "IDENTITY_ENDPOINT",
                message: "not set: turn on the managed identity of the Function App / App Service (Identity blade), or choose another credentials.mode".into(),
            });
        };
        let Some(header) = &self.header else {
            return Err(CredentialError::Misconfigured {
                setting: "IDENTITY_HEADER",
                message: "not set although IDENTITY_ENDPOINT is: the platform sets both; restart the app after enabling the identity".into(),
            });
        };
        let mut query: Vec<(&str, &str)> =
            vec![("resource", resource), ("api-version", "2019-08-01")];
        if let Some(id) = &self.client_id {
            query.push(("client_id", id));
        }
        let resp = self
            .http
            .get(endpoint.base())
            .query(&query)
            .header("X-IDENTITY-HEADER", header.expose())
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| CredentialError::Unavailable {
                what: "managed identity endpoint",
                detail: transport_error(&e).into(),
                retry_after: None,
            })?;
        let status = resp.status();
        let ra = retry_after(resp.headers());
        if status.is_success() {
            let r: MiResponse = resp
                .json()
                .await
                .map_err(|_| CredentialError::Unavailable {
                    what: "managed identity endpoint",
                    detail: "answered with an unreadable token".into(),
                    retry_after: None,
                })?;
            return Ok(AccessToken {
                token: Secret::new(r.access_token),
                expires_on: expires_on(r.expires_on.as_ref(), jiff::Timestamp::now().as_second()),
            });
        }
        let body: MiError = resp.json().await.unwrap_or_default();
        let msg: String = body
            .message
            .or(body.error_description)
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        match status.as_u16() {
            429 | 500..=599 => Err(CredentialError::Unavailable {
                what: "managed identity endpoint",
                detail: format!("HTTP {status}"),
                retry_after: ra,
            }),
            401 | 403 => Err(CredentialError::Misconfigured {
                setting: "IDENTITY_HEADER",
                message: format!(
                    "the managed identity endpoint refused the identity header (HTTP {status}); the platform rotates it: restart the app"
                ),
            }),
            _ if self.client_id.is_some() => Err(CredentialError::Misconfigured {
                setting: "credentials.managed_identity_client_id",
                message: format!(
                    "the managed identity endpoint refused (HTTP {status} {msg}): is the user-assigned identity {} attached to this app?",
                    self.client_id.as_deref().unwrap_or_default()
                ),
            }),
            _ => Err(CredentialError::Misconfigured {
                setting: "credentials.mode",
                message: format!(
                    "the managed identity endpoint refused a token for {resource} (HTTP {status} {msg})"
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_on_in_every_documented_form() {
        let now = 1_800_000_000;
        assert_eq!(
            expires_on(Some(&serde_json::json!("1800003600")), now),
            1_800_003_600
        );
        assert_eq!(
            expires_on(Some(&serde_json::json!(1_800_003_600)), now),
            1_800_003_600
        );
        assert_eq!(
            expires_on(Some(&serde_json::json!("2027-01-15T08:00:00Z")), now),
            "2027-01-15T08:00:00Z"
                .parse::<jiff::Timestamp>()
                .map(|t| t.as_second())
                .unwrap_or_default()
                .min(now + 86_400)
        );
        assert_eq!(expires_on(Some(&serde_json::json!("garbage")), now), now);
        assert_eq!(expires_on(None, now), now);
        assert_eq!(expires_on(Some(&serde_json::json!("1")), now), now);
    }
}
