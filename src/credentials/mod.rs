//! Where accessgate's own tokens come from (Graph, and Storage for the Azure queue backend):
//! client secret, managed identity, workload identity federation, or an app registration whose
//! secret or certificate lives in Key Vault (read with the managed identity).
//!
//! Hand-written REST calls rather than `azure_identity` / `azure_security_keyvault_*`: those
//! crates refuse plain http even to loopback (our emulator), put certificate credentials behind
//! OpenSSL, and cannot refetch a rotated Key Vault secret on `invalid_client`; the calls
//! themselves are four small requests. Every error names the setting to fix.

mod assertion;
mod key_vault;
mod managed_identity;
pub mod settings;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use crate::endpoint::EndpointUrl;
use crate::outbound::{retry_after, transport_error};
use crate::secret::Secret;

pub use assertion::Certificate;
pub use key_vault::KeyVault;
pub use managed_identity::ManagedIdentity;
pub use settings::{CredentialMode, IdentitySettings, Settings, SignWith};

/// What the chain needs from `[graph]`: the scope it asks tokens for and the time bound of a
/// token request. A trait (implemented by `graph::Settings`) because graph imports credentials.
pub trait GraphTokenSettings {
    fn scope(&self) -> &str;
    fn timeout(&self) -> Duration;
}

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Audience {
    Graph,
    Storage,
}

/// Why no token could be had. Both kinds make work wait (callouts stay queued); only the
/// message differs: `Misconfigured` names the setting or role to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// A dependency is down, slow or throttling: try again later.
    #[error("{what} unavailable: {detail}")]
    Unavailable {
        what: &'static str,
        detail: String,
        retry_after: Option<Duration>,
    },
    /// Something an operator must fix.
    #[error("{setting}: {message}")]
    Misconfigured {
        setting: &'static str,
        message: String,
    },
}

impl CredentialError {
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            Self::Misconfigured { .. } => None,
        }
    }
    fn misconfigured(setting: &'static str, message: impl Into<String>) -> Self {
        Self::Misconfigured {
            setting,
            message: message.into(),
        }
    }
}

/// A token and when to fetch the next one.
#[derive(Clone)]
pub struct AccessToken {
    pub token: Secret,
    /// Unix seconds.
    pub expires_on: i64,
}

struct Cached {
    token: Secret,
    refresh_at: Instant,
}

/// When to renew a token that lives `life`: five minutes early, but never before half its life.
fn refresh_in(life: Duration) -> Duration {
    life.saturating_sub(Duration::from_secs(300)).max(life / 2)
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct TokenErrorBody {
    error: Option<String>,
    #[serde(default)]
    error_codes: Vec<u64>,
}

/// How the app registration authenticates at the token endpoint.
enum ClientAuth {
    Secret(Secret),
    Assertion(Secret),
}

/// The credential chain of one process; cheap to share behind an `Arc`.
pub struct Credentials {
    http: reqwest::Client,
    mode: CredentialMode,
    token_url: String,
    graph_scope: String,
    timeout: Duration,
    mi: ManagedIdentity,
    kv: Option<KeyVault>,
    cache: Mutex<HashMap<Audience, Cached>>,
    /// The client secret read from Key Vault (`key_vault_secret`).
    kv_secret: Mutex<Option<Secret>>,
    /// The certificate and its signer (`key_vault_certificate`).
    cert: Mutex<Option<std::sync::Arc<Certificate>>>,
}

pub const STORAGE_RESOURCE: &str = "https://storage.azure.com/";

impl Credentials {
    pub fn new(
        http: reqwest::Client,
        identity: &IdentitySettings,
        creds: &Settings,
        graph: &impl GraphTokenSettings,
    ) -> Self {
        let token_url = identity
            .authority
            .join(&format!("/{}/oauth2/v2.0/token", identity.tenant_id));
        let mi = ManagedIdentity::new(
            http.clone(),
            creds.platform.identity_endpoint.clone(),
            creds.platform.identity_header.clone(),
            creds.managed_identity_client_id.clone(),
            graph.timeout(),
        );
        let kv = match &creds.mode {
            CredentialMode::KeyVaultSecret { vault, .. }
            | CredentialMode::KeyVaultCertificate { vault, .. } => Some(KeyVault::new(
                http.clone(),
                vault.clone(),
                creds.key_vault_resource.clone(),
                graph.timeout(),
            )),
            _ => None,
        };
        Credentials {
            http,
            mode: creds.mode.clone(),
            token_url,
            graph_scope: graph.scope().to_owned(),
            timeout: graph.timeout(),
            mi,
            kv,
            cache: Mutex::new(HashMap::new()),
            kv_secret: Mutex::new(None),
            cert: Mutex::new(None),
        }
    }

    pub fn mode(&self) -> &CredentialMode {
        &self.mode
    }

    pub fn managed_identity(&self) -> &ManagedIdentity {
        &self.mi
    }

    pub fn key_vault(&self) -> Option<&KeyVault> {
        self.kv.as_ref()
    }

    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// A cached token for `aud`, renewed before it expires. One fetch at a time per process.
    pub async fn token(&self, aud: Audience) -> Result<Secret, CredentialError> {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.get(&aud)
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        let t = self.fetch(aud).await?;
        let life = Duration::from_secs(
            u64::try_from(t.expires_on - jiff::Timestamp::now().as_second())
                .unwrap_or(0)
                .min(86_400),
        );
        cache.insert(
            aud,
            Cached {
                token: t.token.clone(),
                refresh_at: Instant::now() + refresh_in(life),
            },
        );
        Ok(t.token)
    }

    /// Forgets a token the resource refused (401), so the next call fetches a new one.
    pub async fn invalidate(&self, aud: Audience) {
        self.cache.lock().await.remove(&aud);
    }

    /// A fresh token, bypassing the cache (also used by `doctor`).
    pub async fn fetch(&self, aud: Audience) -> Result<AccessToken, CredentialError> {
        let scope = match aud {
            Audience::Graph => self.graph_scope.clone(),
            Audience::Storage => format!("{STORAGE_RESOURCE}.default"),
        };
        let resource = scope.trim_end_matches(".default").trim_end_matches('/');
        match &self.mode {
            CredentialMode::ManagedIdentity => self.mi.token(resource).await,
            // Storage is reached as the host's own managed identity when it has one (like the
            // Functions host's own storage connection); otherwise as the app registration.
            _ if aud == Audience::Storage && self.mi.is_configured() => {
                self.mi.token(STORAGE_RESOURCE).await
            }
            CredentialMode::ClientSecret { client_id, secret } => self
                .client_credentials(client_id, &ClientAuth::Secret(secret.clone()), &scope)
                .await
                .map_err(|e| e.into_error(self.mode_hint())),
            CredentialMode::WorkloadIdentity {
                client_id,
                token_file,
            } => {
                let assertion = read_federated_token(token_file.as_deref()).await?;
                self.client_credentials(client_id, &ClientAuth::Assertion(assertion), &scope)
                    .await
                    .map_err(|e| e.into_error(self.mode_hint()))
            }
            CredentialMode::KeyVaultSecret {
                client_id,
                secret_name,
                ..
            } => {
                self.key_vault_secret_token(client_id, secret_name, &scope)
                    .await
            }
            CredentialMode::KeyVaultCertificate {
                client_id,
                certificate_name,
                sign_with,
                ..
            } => {
                self.certificate_token(client_id, certificate_name, *sign_with, &scope)
                    .await
            }
        }
    }

    fn mode_hint(&self) -> &'static str {
        match self.mode {
            CredentialMode::ClientSecret { .. } => {
                "check credentials.client_id and credentials.client_secret (the secret's value, not its id) and identity.tenant_id"
            }
            CredentialMode::WorkloadIdentity { .. } => {
                "add a federated credential to the app registration whose issuer and subject match the pod's service account token"
            }
            CredentialMode::KeyVaultSecret { .. } => {
                "put the app registration's current client secret value in the Key Vault secret"
            }
            CredentialMode::KeyVaultCertificate { .. } => {
                "upload the Key Vault certificate's public part (.cer) to the app registration's Certificates & secrets"
            }
            CredentialMode::ManagedIdentity => "check the managed identity",
        }
    }

    fn kv(&self) -> Result<&KeyVault, CredentialError> {
        self.kv.as_ref().ok_or_else(|| {
            CredentialError::misconfigured("credentials.key_vault_url", "no Key Vault configured")
        })
    }

    /// The client secret from Key Vault, cached; on `invalid_client` read it again once, so a
    /// rotation in the vault needs no restart.
    async fn key_vault_secret_token(
        &self,
        client_id: &str,
        secret_name: &str,
        scope: &str,
    ) -> Result<AccessToken, CredentialError> {
        let mut cached = self.kv_secret.lock().await;
        let mut refetched = false;
        loop {
            let secret = match cached.as_ref() {
                Some(s) => s.clone(),
                None => {
                    let s = self.kv()?.secret(&self.mi, secret_name).await?;
                    if s.value.is_empty() {
                        return Err(CredentialError::misconfigured(
                            "credentials.secret_name",
                            format!("Key Vault secret {secret_name} is empty"),
                        ));
                    }
                    refetched = true;
                    *cached = Some(s.value.clone());
                    s.value
                }
            };
            match self
                .client_credentials(client_id, &ClientAuth::Secret(secret), scope)
                .await
            {
                Ok(t) => return Ok(t),
                Err(e) if e.is_invalid_client() && !refetched => {
                    tracing::warn!(secret = %secret_name, "the token endpoint refused the cached client secret; reading it from Key Vault again");
                    *cached = None;
                }
                Err(e) if e.is_invalid_client() => {
                    *cached = None;
                    return Err(CredentialError::misconfigured(
                        "credentials.secret_name",
                        format!(
                            "the token endpoint refused the client secret from Key Vault secret {secret_name} ({}): {}",
                            e.code(),
                            self.mode_hint()
                        ),
                    ));
                }
                Err(e) => return Err(e.into_error(self.mode_hint())),
            }
        }
    }

    /// The certificate (and its signer) from Key Vault, cached; read again once when Entra
    /// refuses the assertion, so a renewed certificate version is picked up without a restart.
    async fn certificate_token(
        &self,
        client_id: &str,
        name: &str,
        sign_with: SignWith,
        scope: &str,
    ) -> Result<AccessToken, CredentialError> {
        let mut cached = self.cert.lock().await;
        let mut refetched = false;
        loop {
            let cert = match cached.as_ref() {
                Some(c) => c.clone(),
                None => {
                    let c = std::sync::Arc::new(
                        Certificate::load(self.kv()?, &self.mi, name, sign_with).await?,
                    );
                    refetched = true;
                    *cached = Some(c.clone());
                    c
                }
            };
            cert.check_validity(name)?;
            let jwt = cert
                .client_assertion(self.kv()?, &self.mi, client_id, &self.token_url)
                .await?;
            match self
                .client_credentials(client_id, &ClientAuth::Assertion(jwt), scope)
                .await
            {
                Ok(t) => return Ok(t),
                Err(e) if e.is_invalid_client() && !refetched => {
                    tracing::warn!(certificate = %name, "the token endpoint refused the client assertion; reading the certificate from Key Vault again");
                    *cached = None;
                }
                Err(e) => return Err(e.into_error(self.mode_hint())),
            }
        }
    }

    /// The client credentials grant at the tenant's v2 token endpoint.
    async fn client_credentials(
        &self,
        client_id: &str,
        auth: &ClientAuth,
        scope: &str,
    ) -> Result<AccessToken, TokenEndpointError> {
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("scope", scope),
        ];
        match auth {
            ClientAuth::Secret(s) => form.push(("client_secret", s.expose())),
            ClientAuth::Assertion(a) => {
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ));
                form.push(("client_assertion", a.expose()));
            }
        }
        let resp = self
            .http
            .post(&self.token_url)
            .form(&form)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| TokenEndpointError::Unavailable(transport_error(&e).into(), None))?;
        let status = resp.status();
        let ra = retry_after(resp.headers());
        if status.is_success() {
            let t: TokenResponse = resp.json().await.map_err(|_| {
                TokenEndpointError::Unavailable("answered with an unreadable token".into(), None)
            })?;
            let expires_in = t
                .expires_in
                .as_ref()
                .and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
                .unwrap_or(3600)
                .clamp(0, 86_400);
            return Ok(AccessToken {
                token: Secret::new(t.access_token),
                expires_on: jiff::Timestamp::now().as_second() + expires_in,
            });
        }
        let body: TokenErrorBody = resp.json().await.unwrap_or_default();
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(TokenEndpointError::Unavailable(
                format!("HTTP {status}"),
                ra,
            ));
        }
        Err(TokenEndpointError::Refused {
            error: body.error.unwrap_or_else(|| format!("HTTP {status}")),
            codes: body.error_codes,
        })
    }
}

/// The token endpoint's answer, before it is turned into a [`CredentialError`].
enum TokenEndpointError {
    Unavailable(String, Option<Duration>),
    Refused { error: String, codes: Vec<u64> },
}

impl TokenEndpointError {
    /// `invalid_client`: the secret or assertion was not accepted (AADSTS7000215 wrong secret,
    /// 7000222 expired secret, 700027 certificate/signature, 700024 assertion time).
    fn is_invalid_client(&self) -> bool {
        matches!(self, Self::Refused { error, .. } if error == "invalid_client")
    }
    fn code(&self) -> String {
        match self {
            Self::Refused { error, codes } => match codes.first() {
                Some(c) => format!("{error}, AADSTS{c}"),
                None => error.clone(),
            },
            Self::Unavailable(d, _) => d.clone(),
        }
    }
    fn into_error(self, hint: &'static str) -> CredentialError {
        match self {
            Self::Unavailable(detail, retry_after) => CredentialError::Unavailable {
                what: "token endpoint",
                detail,
                retry_after,
            },
            Self::Refused { .. } => {
                let (setting, why) = self.explain();
                CredentialError::misconfigured(
                    setting,
                    format!(
                        "the token endpoint refused accessgate ({}){why}: {hint}",
                        self.code()
                    ),
                )
            }
        }
    }
    fn explain(&self) -> (&'static str, &'static str) {
        let Self::Refused { error, codes } = self else {
            return ("credentials.mode", "");
        };
        let has = |c: u64| codes.contains(&c);
        if has(7000222) {
            (
                "credentials.client_secret",
                ", the client secret has expired",
            )
        } else if has(700016) || error == "unauthorized_client" {
            (
                "credentials.client_id",
                ", no such application in the tenant",
            )
        } else if has(700027) {
            (
                "credentials.certificate_name",
                ", the certificate is not registered on the app or the signature did not verify",
            )
        } else if has(70021) {
            (
                "credentials.client_id",
                ", no federated credential of the app matches the token",
            )
        } else if has(90002) || has(900023) {
            ("identity.tenant_id", ", unknown tenant")
        } else if error == "invalid_scope" {
            ("graph.scope", "")
        } else {
            ("credentials.mode", "")
        }
    }
}

/// The projected service account token (re-read each time: the kubelet rotates it).
async fn read_federated_token(path: Option<&std::path::Path>) -> Result<Secret, CredentialError> {
    let Some(path) = path else {
        return Err(CredentialError::misconfigured(
            "credentials.federated_token_file",
            "AZURE_FEDERATED_TOKEN_FILE is not set: enable workload identity for the pod or set credentials.federated_token_file",
        ));
    };
    match tokio::fs::read_to_string(path).await {
        Ok(t) if !t.trim().is_empty() => Ok(Secret::new(t.trim().to_owned())),
        Ok(_) => Err(CredentialError::misconfigured(
            "credentials.federated_token_file",
            format!("{} is empty", path.display()),
        )),
        Err(e) => Err(CredentialError::misconfigured(
            "credentials.federated_token_file",
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

/// Validates that a URL taken from a response (a Key Vault key id) lies under `base`, so a
/// token is never sent where an answer points.
pub(crate) fn under(base: &EndpointUrl, url: &str) -> bool {
    let b = base.base();
    url.len() > b.len() && url[..b.len()].eq_ignore_ascii_case(b) && url.as_bytes()[b.len()] == b'/'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_is_early_but_not_too_early() {
        assert_eq!(
            refresh_in(Duration::from_secs(3600)),
            Duration::from_secs(3300)
        );
        assert_eq!(
            refresh_in(Duration::from_secs(300)),
            Duration::from_secs(150)
        );
        assert_eq!(refresh_in(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn key_ids_must_lie_under_the_vault() {
        let v = EndpointUrl::parse("https://v.vault.azure.net").unwrap();
        assert!(under(&v, "https://v.vault.azure.net/keys/k/1"));
        assert!(under(&v, "https://V.vault.azure.net/keys/k/1"));
        assert!(!under(
            &v,
            "https://v.vault.azure.net.evil.example/keys/k/1"
        ));
        assert!(!under(&v, "https://evil.example/keys/k/1"));
        assert!(!under(&v, "https://v.vault.azure.net"));
    }

    #[test]
    fn refusals_name_the_setting() {
        let e = TokenEndpointError::Refused {
            error: "invalid_client".into(),
            codes: vec![7000222],
        };
        match e.into_error("hint") {
            CredentialError::Misconfigured { setting, message } => {
                assert_eq!(setting, "credentials.client_secret");
                assert!(message.contains("AADSTS7000222"), "{message}");
                assert!(message.contains("expired"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
