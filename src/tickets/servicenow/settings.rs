//! `[servicenow]`: the Table API instance and how accessgate signs in to it.

use std::time::Duration;

use serde::Deserialize;

use crate::endpoint::EndpointUrl;
use crate::secret::Secret;
use crate::settings::{self, Problems};

/// `[servicenow]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Raw {
    pub instance_url: Option<String>,
    pub auth: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub password_secret: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub client_secret_secret: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub webhook_secret: Option<Secret>,
    pub webhook_secret_secret: Option<String>,
    pub webhook_window_seconds: Option<u64>,
    pub webhook_audiences: Option<Vec<String>>,
    pub webhook_caller_ids: Option<Vec<String>>,
    pub poll_interval_seconds: Option<u64>,
    pub poll_batch: Option<u64>,
    pub poll_calls_per_minute: Option<u64>,
}

/// Keys of `[servicenow]` whose environment values stay strings (`config` layers them verbatim).
pub const STRING_KEYS: &[&str] = &[
    "instance_url",
    "auth",
    "username",
    "password",
    "password_secret",
    "client_id",
    "client_secret",
    "client_secret_secret",
    "webhook_secret",
    "webhook_secret_secret",
];

/// Where a secret comes from.
#[derive(Clone)]
pub enum SecretSource {
    Value(Secret),
    /// A Key Vault secret name.
    KeyVault(String),
}

impl SecretSource {
    fn describe(&self) -> String {
        match self {
            SecretSource::Value(_) => "(set directly)".into(),
            SecretSource::KeyVault(n) => format!("Key Vault secret {n}"),
        }
    }
}

#[derive(Clone)]
pub enum Auth {
    Basic {
        username: String,
        password: SecretSource,
    },
    /// `grant_type=client_credentials`, or `password` when a user is given.
    OAuth {
        client_id: String,
        client_secret: SecretSource,
        user: Option<(String, SecretSource)>,
    },
}

/// `[servicenow]`, validated.
#[derive(Clone)]
pub struct Settings {
    pub instance: EndpointUrl,
    pub auth: Auth,
    pub timeout: Duration,
    pub bridge: BridgeSettings,
}

/// The ticket bridge's settings in `[servicenow]`: the close webhook and the poll.
#[derive(Clone)]
pub struct BridgeSettings {
    /// The HMAC key of `POST /api/servicenow/events`; `None` refuses every webhook (the poll
    /// still closes tickets).
    pub webhook_secret: Option<SecretSource>,
    /// How far a webhook's timestamp may be from now.
    pub webhook_window: Duration,
    /// The Entra bearer-token alternative to the HMAC signature; `None` refuses bearer tokens.
    pub webhook_bearer: Option<WebhookBearer>,
    /// How often open tickets are read; `None` turns the poll off.
    pub poll_interval: Option<Duration>,
    /// Tickets per Table API call of the poll.
    pub poll_batch: usize,
    /// Table API calls the poll may make per minute.
    pub poll_calls_per_minute: u32,
}

/// Who may post the webhook with an Entra access token instead of a signature: ServiceNow's
/// own app registration (an OAuth profile with the client-credentials grant), asking for a
/// token to accessgate's app. That app needs no Graph permission.
#[derive(Clone, Debug)]
pub struct WebhookBearer {
    /// `aud` values accepted: accessgate's Application ID URI or client id.
    pub audiences: Vec<String>,
    /// Lower-case client ids (`azp` / `appid`) of the ServiceNow app registration.
    pub callers: std::collections::HashSet<String>,
}

impl BridgeSettings {
    /// Backoff before a ServiceNow call is tried again: 2 s doubling to 2 min, equal jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        use rand::Rng as _;
        let cap = Duration::from_secs(2)
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(6))
            .min(Duration::from_secs(120));
        let half = cap / 2;
        half + Duration::from_millis(rand::rng().random_range(0..=half.as_millis() as u64))
    }
}

impl Default for BridgeSettings {
    fn default() -> Self {
        BridgeSettings {
            webhook_secret: None,
            webhook_window: Duration::from_secs(300),
            webhook_bearer: None,
            poll_interval: Some(Duration::from_secs(60)),
            poll_batch: 50,
            poll_calls_per_minute: 30,
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn source(
    value: Option<Secret>,
    secret: Option<String>,
    setting: &str,
    p: &mut Problems,
) -> Option<SecretSource> {
    match (
        value.filter(|v| !v.is_empty()),
        secret.filter(|s| !s.trim().is_empty()),
    ) {
        (Some(v), None) => Some(SecretSource::Value(v)),
        (None, Some(n)) => Some(SecretSource::KeyVault(n)),
        (Some(_), Some(_)) => {
            p.push(
                &format!("servicenow.{setting}"),
                &format!("give {setting} or {setting}_secret, not both"),
            );
            None
        }
        (None, None) => {
            p.push(
                &format!("servicenow.{setting}_secret"),
                &format!(
                    "required: the Key Vault secret holding the {setting} (or ACCESSGATE_SERVICENOW__{} for local runs)",
                    setting.to_uppercase()
                ),
            );
            None
        }
    }
}

impl Settings {
    /// Validates `[servicenow]`; `None` when it has problems. `vault` is credentials' Key Vault,
    /// where `*_secret` settings are read.
    pub fn from_raw(raw: Raw, vault: Option<&EndpointUrl>, p: &mut Problems) -> Option<Settings> {
        let before = p.count();
        let instance = match raw.instance_url.as_deref() {
            None => {
                p.push(
                    "servicenow.instance_url",
                    "required, e.g. https://contoso.service-now.com",
                );
                None
            }
            Some(u) => settings::endpoint(p, "servicenow.instance_url", u),
        };
        let auth = match raw.auth.as_deref().unwrap_or("basic") {
            "basic" => {
                let username = raw.username.filter(|u| !u.trim().is_empty());
                if username.is_none() {
                    p.push("servicenow.username", "required for basic auth");
                }
                let password = source(raw.password, raw.password_secret, "password", p);
                username
                    .zip(password)
                    .map(|(username, password)| Auth::Basic { username, password })
            }
            "oauth" => {
                let client_id = raw.client_id.filter(|c| !c.trim().is_empty());
                if client_id.is_none() {
                    p.push("servicenow.client_id", "required for oauth");
                }
                let secret = source(
                    raw.client_secret,
                    raw.client_secret_secret,
                    "client_secret",
                    p,
                );
                let user = match raw.username.filter(|u| !u.trim().is_empty()) {
                    None => None,
                    Some(u) => {
                        source(raw.password, raw.password_secret, "password", p).map(|s| (u, s))
                    }
                };
                client_id
                    .zip(secret)
                    .map(|(client_id, client_secret)| Auth::OAuth {
                        client_id,
                        client_secret,
                        user,
                    })
            }
            other => {
                crate::settings::not_one_of(
                    p,
                    "servicenow.auth",
                    other,
                    "must be basic or oauth",
                    &["basic", "oauth"],
                );
                None
            }
        };
        let timeout = settings::seconds(
            p,
            "servicenow.timeout_seconds",
            raw.timeout_seconds,
            10,
            1..=120,
        );
        let webhook_secret = match (
            raw.webhook_secret.filter(|v| !v.is_empty()),
            raw.webhook_secret_secret.filter(|s| !s.trim().is_empty()),
        ) {
            (Some(v), None) => Some(SecretSource::Value(v)),
            (None, Some(n)) => Some(SecretSource::KeyVault(n)),
            (None, None) => None,
            (Some(_), Some(_)) => {
                p.push(
                    "servicenow.webhook_secret",
                    "give webhook_secret or webhook_secret_secret, not both",
                );
                None
            }
        };
        let webhook_window = settings::seconds(
            p,
            "servicenow.webhook_window_seconds",
            raw.webhook_window_seconds,
            300,
            30..=3600,
        );
        let webhook_bearer = webhook_bearer(p, raw.webhook_audiences, raw.webhook_caller_ids);
        let poll = settings::in_range(
            p,
            "servicenow.poll_interval_seconds",
            raw.poll_interval_seconds,
            60,
            0..=3600,
        );
        let poll_batch =
            settings::in_range(p, "servicenow.poll_batch", raw.poll_batch, 50, 1..=100);
        let per_minute = settings::in_range(
            p,
            "servicenow.poll_calls_per_minute",
            raw.poll_calls_per_minute,
            30,
            1..=600,
        );
        let bridge = BridgeSettings {
            webhook_secret,
            webhook_window,
            webhook_bearer,
            poll_interval: (poll > 0).then(|| Duration::from_secs(poll)),
            poll_batch: usize::try_from(poll_batch).unwrap_or(50),
            poll_calls_per_minute: u32::try_from(per_minute).unwrap_or(30),
        };
        let s = match (instance, auth) {
            (Some(instance), Some(auth)) if p.count() == before => Settings {
                instance,
                auth,
                timeout,
                bridge,
            },
            _ => return None,
        };
        if s.uses_key_vault() && vault.is_none() {
            p.push(
                "servicenow",
                "a *_secret setting names a Key Vault secret, but there is no vault: use credentials.mode key_vault_secret or key_vault_certificate with credentials.key_vault_url, or set the value through ACCESSGATE_SERVICENOW__PASSWORD / __CLIENT_SECRET",
            );
        }
        Some(s)
    }

    /// For `check-config`: no secret values.
    pub fn describe(&self) -> String {
        match &self.auth {
            Auth::Basic { username, password } => format!(
                "{} with basic auth as {username}, password from {}",
                self.instance.base(),
                password.describe()
            ),
            Auth::OAuth {
                client_id,
                client_secret,
                user,
            } => format!(
                "{} with OAuth client {client_id} (secret from {}){}",
                self.instance.base(),
                client_secret.describe(),
                user.as_ref()
                    .map(|(u, s)| format!(
                        ", password grant as {u} (password from {})",
                        s.describe()
                    ))
                    .unwrap_or_else(|| ", client_credentials grant".into())
            ),
        }
    }

    pub fn uses_key_vault(&self) -> bool {
        let kv = |s: &SecretSource| matches!(s, SecretSource::KeyVault(_));
        if self.bridge.webhook_secret.as_ref().is_some_and(kv) {
            return true;
        }
        match &self.auth {
            Auth::Basic { password, .. } => kv(password),
            Auth::OAuth {
                client_secret,
                user,
                ..
            } => kv(client_secret) || user.as_ref().is_some_and(|(_, s)| kv(s)),
        }
    }
}

/// `webhook_audiences` and `webhook_caller_ids` turn the bearer alternative on together.
fn webhook_bearer(
    p: &mut Problems,
    audiences: Option<Vec<String>>,
    callers: Option<Vec<String>>,
) -> Option<WebhookBearer> {
    let audiences = audiences.unwrap_or_default();
    let callers = callers.unwrap_or_default();
    if audiences.is_empty() && callers.is_empty() {
        return None;
    }
    let before = p.count();
    if audiences.is_empty() || audiences.iter().any(|a| a.trim().is_empty()) {
        p.push(
            "servicenow.webhook_audiences",
            "give accessgate's Application ID URI (or client id) that ServiceNow's OAuth profile requests a token for, together with webhook_caller_ids",
        );
    }
    if callers.is_empty() {
        p.push(
            "servicenow.webhook_caller_ids",
            "give the client id of ServiceNow's app registration, together with webhook_audiences",
        );
    }
    for c in &callers {
        if uuid::Uuid::parse_str(c.trim()).is_err() {
            p.push(
                "servicenow.webhook_caller_ids",
                &format!("{c:?} is not a client id (a GUID)"),
            );
        }
    }
    (p.count() == before).then(|| WebhookBearer {
        audiences: audiences.iter().map(|a| a.trim().to_owned()).collect(),
        callers: callers
            .iter()
            .map(|c| c.trim().to_ascii_lowercase())
            .collect(),
    })
}
