//! Key Vault REST (API 7.5): read a secret, read a certificate, and `sign` a digest with a
//! certificate's key so that the private key never leaves the vault. Authenticated with the
//! managed identity.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::{CredentialError, ManagedIdentity, under};
use crate::endpoint::EndpointUrl;
use crate::outbound::{retry_after, transport_error};
use crate::secret::Secret;

const API_VERSION: &str = "7.5";

pub struct KeyVault {
    http: reqwest::Client,
    vault: EndpointUrl,
    resource: String,
    timeout: Duration,
}

/// A secret as Key Vault returns it.
pub struct VaultSecret {
    pub value: Secret,
    pub content_type: Option<String>,
}

/// The parts of a certificate bundle accessgate uses.
pub struct VaultCertificate {
    /// DER of the X.509 certificate.
    pub der: Vec<u8>,
    /// The key's id (`{vault}/keys/{name}/{version}`), checked to lie under the vault.
    pub kid: String,
    /// Unix seconds.
    pub not_before: Option<i64>,
    pub expires: Option<i64>,
}

#[derive(Deserialize)]
struct SecretBundle {
    value: Option<String>,
    #[serde(rename = "contentType")]
    content_type: Option<String>,
}

#[derive(Deserialize)]
struct Attributes {
    nbf: Option<i64>,
    exp: Option<i64>,
}

#[derive(Deserialize)]
struct CertificateBundle {
    cer: Option<String>,
    kid: Option<String>,
    attributes: Option<Attributes>,
}

#[derive(Deserialize)]
struct SignResult {
    value: Option<String>,
}

#[derive(Deserialize, Default)]
struct KvErrorBody {
    error: Option<KvError>,
}

#[derive(Deserialize, Default)]
struct KvError {
    code: Option<String>,
}

/// What a Key Vault call was for: the setting and role an error names.
#[derive(Clone, Copy)]
enum Op {
    Secret,
    Certificate,
    Sign,
}

impl Op {
    fn setting(self) -> &'static str {
        match self {
            Op::Secret => "credentials.secret_name",
            Op::Certificate | Op::Sign => "credentials.certificate_name",
        }
    }
    fn role(self) -> &'static str {
        match self {
            Op::Secret => "Key Vault Secrets User",
            Op::Certificate => "Key Vault Certificate User",
            Op::Sign => "Key Vault Crypto User",
        }
    }
}

impl KeyVault {
    pub fn new(
        http: reqwest::Client,
        vault: EndpointUrl,
        resource: String,
        timeout: Duration,
    ) -> Self {
        Self {
            http,
            vault,
            resource,
            timeout,
        }
    }

    pub fn url(&self) -> &str {
        self.vault.base()
    }

    async fn call(
        &self,
        mi: &ManagedIdentity,
        op: Op,
        name: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, CredentialError> {
        let token = mi.token(&self.resource).await?;
        let resp = req
            .query(&[("api-version", API_VERSION)])
            .bearer_auth(token.token.expose())
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| CredentialError::Unavailable {
                what: "Key Vault",
                detail: transport_error(&e).into(),
                retry_after: None,
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let ra = retry_after(resp.headers());
        let code = resp
            .json::<KvErrorBody>()
            .await
            .unwrap_or_default()
            .error
            .and_then(|e| e.code)
            .unwrap_or_default();
        let vault = self.vault.base();
        Err(match status.as_u16() {
            429 | 500..=599 => CredentialError::Unavailable {
                what: "Key Vault",
                detail: format!("HTTP {status} {code}"),
                retry_after: ra,
            },
            401 => {
                mi.invalidate(&self.resource).await;
                CredentialError::Misconfigured {
                    setting: "credentials.key_vault_url",
                    message: format!(
                        "Key Vault {vault} refused the managed identity's token (HTTP 401 {code}): is the vault in tenant identity.tenant_id and in this cloud (identity.cloud)?"
                    ),
                }
            }
            403 => CredentialError::Misconfigured {
                setting: "credentials.key_vault_url",
                message: format!(
                    "the {} may not read {name} in {vault} (HTTP 403 {code}): grant it the role \"{}\" on the vault (Access control (IAM)), or an access policy with that permission",
                    mi.describe(),
                    op.role()
                ),
            },
            404 => CredentialError::Misconfigured {
                setting: op.setting(),
                message: format!("{name} does not exist in {vault} (HTTP 404 {code})"),
            },
            _ => CredentialError::Misconfigured {
                setting: op.setting(),
                message: format!("Key Vault {vault} answered HTTP {status} {code} for {name}"),
            },
        })
    }

    fn malformed(op: Op, name: &str, what: &str) -> CredentialError {
        CredentialError::Misconfigured {
            setting: op.setting(),
            message: format!("Key Vault answered for {name} with {what}"),
        }
    }

    /// The latest version of a secret.
    pub async fn secret(
        &self,
        mi: &ManagedIdentity,
        name: &str,
    ) -> Result<VaultSecret, CredentialError> {
        let url = self.vault.join(&format!("/secrets/{name}"));
        let resp = self.call(mi, Op::Secret, name, self.http.get(url)).await?;
        let b: SecretBundle = resp
            .json()
            .await
            .map_err(|_| Self::malformed(Op::Secret, name, "an unreadable secret bundle"))?;
        let value = b
            .value
            .ok_or_else(|| Self::malformed(Op::Secret, name, "a secret bundle without a value"))?;
        Ok(VaultSecret {
            value: Secret::new(value),
            content_type: b.content_type,
        })
    }

    /// The latest version of a certificate (public part, key id and validity).
    pub async fn certificate(
        &self,
        mi: &ManagedIdentity,
        name: &str,
    ) -> Result<VaultCertificate, CredentialError> {
        use base64::Engine as _;
        let url = self.vault.join(&format!("/certificates/{name}"));
        let resp = self
            .call(mi, Op::Certificate, name, self.http.get(url))
            .await?;
        let b: CertificateBundle = resp.json().await.map_err(|_| {
            Self::malformed(Op::Certificate, name, "an unreadable certificate bundle")
        })?;
        let der = b
            .cer
            .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
            .filter(|d| !d.is_empty())
            .ok_or_else(|| {
                Self::malformed(
                    Op::Certificate,
                    name,
                    "a certificate without a readable `cer`",
                )
            })?;
        let kid = b.kid.filter(|k| under(&self.vault, k)).ok_or_else(|| {
            Self::malformed(
                Op::Certificate,
                name,
                "a key id that is missing or outside the vault",
            )
        })?;
        let attrs = b.attributes;
        Ok(VaultCertificate {
            der,
            kid,
            not_before: attrs.as_ref().and_then(|a| a.nbf),
            expires: attrs.as_ref().and_then(|a| a.exp),
        })
    }

    /// Signs a SHA-256 digest with the key `kid` (RS256: RSASSA-PKCS1-v1_5).
    pub async fn sign_rs256(
        &self,
        mi: &ManagedIdentity,
        kid: &str,
        digest: &[u8],
    ) -> Result<Vec<u8>, CredentialError> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        if !under(&self.vault, kid) {
            return Err(Self::malformed(Op::Sign, kid, "a key id outside the vault"));
        }
        let url = format!("{}/sign", kid.trim_end_matches('/'));
        let body = json!({"alg": "RS256", "value": b64.encode(digest)});
        let resp = self
            .call(mi, Op::Sign, kid, self.http.post(url).json(&body))
            .await?;
        let r: SignResult = resp
            .json()
            .await
            .map_err(|_| Self::malformed(Op::Sign, kid, "an unreadable sign result"))?;
        r.value
            .and_then(|v| b64.decode(v).ok())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Self::malformed(Op::Sign, kid, "a sign result without a signature"))
    }
}
