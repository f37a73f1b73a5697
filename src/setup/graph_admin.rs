//! Graph calls of `accessgate setup`: one signed-in identity (accessgate's app credentials, or a
//! user through the device-code flow), JSON in and out, and every refusal turned into what to
//! grant or fix. Not the worker's `GraphClient`: setup runs once by hand, so it needs no rate
//! bound or breaker, only a bounded wait on throttling.

use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

use crate::endpoint::EndpointUrl;
use crate::outbound::transport_error;
use crate::secret::Secret;

/// Why a setup step could not be done; each message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Input(String),
    #[error("sign-in failed: {0}")]
    SignIn(String),
    #[error("{what}: Graph answered HTTP {status} {code}: {message}{}", fix_text(.fix))]
    Graph {
        what: String,
        status: u16,
        code: String,
        message: String,
        fix: Option<String>,
    },
    #[error("{what}: Graph is unreachable: {detail}")]
    Unreachable { what: String, detail: String },
    #[error("{0}")]
    Config(String),
}

fn fix_text(fix: &Option<String>) -> String {
    fix.as_ref()
        .map(|f| format!("\n    fix: {f}"))
        .unwrap_or_default()
}

impl SetupError {
    pub fn status(&self) -> Option<u16> {
        match self {
            SetupError::Graph { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Who setup calls Graph as, from its token.
#[derive(Debug, Clone)]
pub struct Caller {
    /// App id (`appid` / `azp`).
    pub app_id: String,
    pub object_id: String,
    /// Application permissions (`roles`) of an app-only token.
    pub roles: Vec<String>,
    /// Delegated scopes (`scp`) of a user's token; empty for app-only.
    pub scopes: Vec<String>,
    pub user: Option<String>,
}

impl Caller {
    fn from_token(token: &str) -> Caller {
        let claims: Value = token
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let s = |k: &str| claims[k].as_str().unwrap_or_default().to_owned();
        Caller {
            app_id: if claims["appid"].is_string() {
                s("appid")
            } else {
                s("azp")
            },
            object_id: s("oid"),
            roles: claims["roles"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect(),
            scopes: claims["scp"]
                .as_str()
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            user: claims["upn"]
                .as_str()
                .or(claims["preferred_username"].as_str())
                .map(str::to_owned),
        }
    }

    pub fn delegated(&self) -> bool {
        !self.scopes.is_empty()
    }

    /// Whether the token carries one of the permissions (as an app role or a delegated scope).
    pub fn holds(&self, any_of: &[&str]) -> bool {
        self.roles
            .iter()
            .chain(&self.scopes)
            .any(|r| any_of.iter().any(|a| a.eq_ignore_ascii_case(r)))
    }

    pub fn describe(&self) -> String {
        match &self.user {
            Some(u) => format!("user {u} (object id {})", self.object_id),
            None => format!("application {} (object id {})", self.app_id, self.object_id),
        }
    }
}

/// The answer of one call: status and JSON body (`Null` when empty).
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

pub struct AdminGraph {
    http: reqwest::Client,
    /// `https://graph.microsoft.com` (or the configured base).
    base: EndpointUrl,
    token: Secret,
    pub caller: Caller,
}

/// Graph's error body: `(code, message)`.
fn graph_error(body: &Value) -> (String, String) {
    (
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
        body["error"]["message"].as_str().unwrap_or("").to_owned(),
    )
}

/// The longest setup waits on one throttled call before giving up (and saying so).
const MAX_THROTTLE_WAIT: Duration = Duration::from_secs(60);

impl AdminGraph {
    pub fn new(http: reqwest::Client, base: EndpointUrl, token: Secret) -> AdminGraph {
        let caller = Caller::from_token(token.expose());
        AdminGraph {
            http,
            base,
            token,
            caller,
        }
    }

    /// One call; `path` starts with the version (`/v1.0/...`, `/beta/...`). Throttling (429,
    /// 503) is waited out up to [`MAX_THROTTLE_WAIT`] in all; any other answer is returned.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Answer, SetupError> {
        let url = self.base.join(path);
        let mut waited = Duration::ZERO;
        loop {
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(self.token.expose())
                .timeout(Duration::from_secs(30));
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(|e| SetupError::Unreachable {
                what: what.to_owned(),
                detail: transport_error(&e).to_owned(),
            })?;
            let status = resp.status().as_u16();
            let retry = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(Duration::from_secs(2), Duration::from_secs);
            // A POST that answered 503 may have been done: only 429 (not done) is sent again.
            let retryable = status == 429 || (status == 503 && method != reqwest::Method::POST);
            if retryable && waited + retry <= MAX_THROTTLE_WAIT {
                eprintln!(
                    "  Graph asked to wait {} s (HTTP {status}) before {what}",
                    retry.as_secs()
                );
                tokio::time::sleep(retry).await;
                waited += retry;
                continue;
            }
            let text = resp.text().await.unwrap_or_default();
            let body = if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::Null)
            };
            return Ok(Answer { status, body });
        }
    }

    /// A call that must succeed (2xx); anything else becomes [`SetupError::Graph`] with the fix
    /// `fix` gives for the answer.
    pub async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
        fix: impl Fn(u16, &str, &str) -> Option<String>,
    ) -> Result<Value, SetupError> {
        let a = self.call(method, path, body, what).await?;
        if (200..300).contains(&a.status) {
            return Ok(unwrap_value(a.body));
        }
        let (code, message) = graph_error(&a.body);
        let fix = fix(a.status, &code, &message).or_else(|| self.generic_fix(a.status));
        Err(SetupError::Graph {
            what: what.to_owned(),
            status: a.status,
            code,
            message,
            fix,
        })
    }

    /// GET that must succeed.
    pub async fn get(
        &self,
        path: &str,
        what: &str,
        fix: impl Fn(u16, &str, &str) -> Option<String>,
    ) -> Result<Value, SetupError> {
        self.expect(reqwest::Method::GET, path, None, what, fix)
            .await
    }

    /// A collection's `value`, every page of it (`@odata.nextLink`, followed under the same
    /// origin only).
    pub async fn list(
        &self,
        path: &str,
        what: &str,
        fix: impl Fn(u16, &str, &str) -> Option<String> + Copy,
    ) -> Result<Vec<Value>, SetupError> {
        let mut page = self.get(path, what, fix).await?;
        let mut out: Vec<Value> = Vec::new();
        let mut pages = 0;
        loop {
            out.extend(page["value"].as_array().cloned().unwrap_or_default());
            let Some(link) = page["@odata.nextLink"].as_str().map(str::to_owned) else {
                return Ok(out);
            };
            pages += 1;
            // Followed only to the same scheme, host and port: the token goes nowhere else.
            let base = url::Url::parse(self.base.base()).ok();
            let next_url = url::Url::parse(&link).ok();
            let same_origin =
                matches!((&base, &next_url), (Some(b), Some(n)) if b.origin() == n.origin());
            let rel = match (&next_url, same_origin) {
                (Some(n), true) => match n.query() {
                    Some(q) => format!("{}?{q}", n.path()),
                    None => n.path().to_owned(),
                },
                _ => {
                    return Err(SetupError::Input(format!(
                        "{what}: Graph's nextLink is not on {}; not followed",
                        self.base.base()
                    )));
                }
            };
            if pages > 50 {
                return Err(SetupError::Input(format!(
                    "{what}: more than 50 pages; name the objects by id in the setup file"
                )));
            }
            page = self.get(&rel, what, fix).await?;
        }
    }

    /// The fix for a refusal no step-specific advice covers.
    fn generic_fix(&self, status: u16) -> Option<String> {
        match status {
            401 => Some(
                "the token was refused: check identity.tenant_id and identity.cloud, and sign in again"
                    .into(),
            ),
            403 if self.caller.delegated() => Some(format!(
                "{} lacks the permission this call needs: consent to its delegated scope (docs/setup.md lists them) and hold an Entra role that allows it (Identity Governance Administrator for entitlement management and Lifecycle Workflows, Privileged Role Administrator for PIM)",
                self.caller.describe()
            )),
            403 => Some(format!(
                "{} lacks the application permission this call needs (docs/setup.md lists them): add it in the app registration's API permissions and grant admin consent, or run with --device-code as an administrator",
                self.caller.describe()
            )),
            _ => None,
        }
    }
}

/// A created object as Graph answers it. One documented answer wraps it in `value` (graph
/// docs #21126): liberal in, both are read.
fn unwrap_value(v: Value) -> Value {
    match v {
        Value::Object(mut m) if m.len() == 1 && m.get("value").is_some_and(Value::is_object) => {
            m.remove("value").unwrap_or(Value::Null)
        }
        other => other,
    }
}

/// Device-code sign-in (RFC 8628, Entra's v2 endpoints): prints the code to stderr and polls
/// until the user has signed in, declined or the code expired.
pub async fn device_code_token(
    http: &reqwest::Client,
    authority: &EndpointUrl,
    tenant: &str,
    client_id: &str,
    scopes: &[String],
) -> Result<Secret, SetupError> {
    let scope = scopes.join(" ");
    let start = http
        .post(authority.join(&format!("/{tenant}/oauth2/v2.0/devicecode")))
        .form(&[("client_id", client_id), ("scope", scope.as_str())])
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| SetupError::SignIn(transport_error(&e).to_owned()))?;
    let status = start.status().as_u16();
    let v: Value = start.json().await.unwrap_or(Value::Null);
    if status != 200 {
        return Err(SetupError::SignIn(format!(
            "the identity host refused the device code request (HTTP {status} {}): {}",
            v["error"].as_str().unwrap_or(""),
            v["error_description"].as_str().unwrap_or("")
        )));
    }
    let (Some(device_code), Some(message)) = (v["device_code"].as_str(), v["message"].as_str())
    else {
        return Err(SetupError::SignIn(
            "the device code answer has no device_code or message".into(),
        ));
    };
    eprintln!("{message}");
    let mut interval = Duration::from_secs(v["interval"].as_u64().unwrap_or(5).clamp(1, 60));
    let expires = std::time::Instant::now()
        + Duration::from_secs(v["expires_in"].as_u64().unwrap_or(900).min(3600));
    loop {
        tokio::time::sleep(interval).await;
        if std::time::Instant::now() >= expires {
            return Err(SetupError::SignIn(
                "the code expired before anyone signed in: run setup again".into(),
            ));
        }
        let resp = http
            .post(authority.join(&format!("/{tenant}/oauth2/v2.0/token")))
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("client_id", client_id),
                ("device_code", device_code),
            ])
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| SetupError::SignIn(transport_error(&e).to_owned()))?;
        let status = resp.status().as_u16();
        let ok = resp.status().is_success();
        let t: Value = resp.json().await.unwrap_or(Value::Null);
        if !ok && t["error"].as_str().is_none() {
            return Err(SetupError::SignIn(format!(
                "the identity host answered HTTP {status} without an OAuth error: try again"
            )));
        }
        if ok && let Some(tok) = t["access_token"].as_str() {
            return Ok(Secret::new(tok));
        }
        match t["error"].as_str().unwrap_or("") {
            "authorization_pending" => {}
            "slow_down" => interval += Duration::from_secs(5),
            "authorization_declined" => {
                return Err(SetupError::SignIn("the sign-in was declined".into()));
            }
            other => {
                return Err(SetupError::SignIn(format!(
                    "{other}: {}",
                    t["error_description"].as_str().unwrap_or("")
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_documented_create_answers() {
        // The docs' create response wraps the object in `value` (fixture source noted there).
        let wrapped: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/setup/elm-customworkflowextension-create-response-example-1.json"
        ))
        .unwrap();
        let id = "98ffaec5-ae8e-4902-a434-5ffc5d3d3cd0";
        assert_eq!(unwrap_value(wrapped.clone())["id"], id);
        assert_eq!(unwrap_value(wrapped["value"].clone())["id"], id);
        // A collection is not an object wrapped in value.
        let list = serde_json::json!({"value": [{"id": "x"}]});
        assert_eq!(unwrap_value(list.clone()), list);
    }

    #[test]
    fn caller_from_app_and_user_tokens() {
        let enc = |v: Value| {
            format!(
                "e30.{}.sig",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
            )
        };
        let app = Caller::from_token(&enc(serde_json::json!({
            "appid": "a", "oid": "o", "roles": ["EntitlementManagement.ReadWrite.All"]
        })));
        assert!(!app.delegated());
        assert!(app.holds(&["entitlementmanagement.readwrite.all"]));
        let user = Caller::from_token(&enc(serde_json::json!({
            "azp": "c", "oid": "u", "scp": "PrivilegedAccess-CustomExt.ReadWrite.All User.Read", "upn": "admin@contoso"
        })));
        assert!(user.delegated());
        assert!(user.holds(&["PrivilegedAccess-CustomExt.ReadWrite.All"]));
        assert!(user.describe().contains("admin@contoso"));
    }
}
