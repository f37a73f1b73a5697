//! Certificate credentials: an RFC 7523 client assertion (a JWT whose header names the
//! certificate by `x5t#S256`) signed either locally with the certificate's key read from Key
//! Vault, or by Key Vault's `sign` so that the key never leaves the vault.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::{CredentialError, KeyVault, ManagedIdentity, SignWith};
use crate::secret::Secret;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

enum Signer {
    Local(RsaKeyPair),
    Vault { kid: String },
}

/// A certificate credential ready to sign assertions.
pub struct Certificate {
    /// `x5t#S256`: base64url SHA-256 of the certificate's DER.
    pub x5t_s256: String,
    pub not_before: Option<i64>,
    pub expires: Option<i64>,
    signer: Signer,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("x5t_s256", &self.x5t_s256)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

fn bad(setting: &'static str, message: impl Into<String>) -> CredentialError {
    CredentialError::Misconfigured {
        setting,
        message: message.into(),
    }
}

impl Certificate {
    pub async fn load(
        kv: &KeyVault,
        mi: &ManagedIdentity,
        name: &str,
        sign_with: SignWith,
    ) -> Result<Self, CredentialError> {
        match sign_with {
            SignWith::KeyVault => {
                let c = kv.certificate(mi, name).await?;
                Ok(Certificate {
                    x5t_s256: B64.encode(Sha256::digest(&c.der)),
                    not_before: c.not_before,
                    expires: c.expires,
                    signer: Signer::Vault { kid: c.kid },
                })
            }
            SignWith::Local => {
                let s = kv.secret(mi, name).await?;
                if s.content_type
                    .as_deref()
                    .is_some_and(|t| t.eq_ignore_ascii_case("application/x-pkcs12"))
                {
                    return Err(bad(
                        "credentials.sign_with",
                        format!(
                            "certificate {name} is stored as PKCS#12; create it with content type application/x-pem-file, or use sign_with = \"key_vault\""
                        ),
                    ));
                }
                Self::from_pem(s.value.expose().as_bytes(), name)
            }
        }
    }

    /// A PEM bundle (PKCS#8 private key + certificate), as Key Vault returns a PEM certificate's
    /// secret.
    pub fn from_pem(pem: &[u8], name: &str) -> Result<Self, CredentialError> {
        use rustls_pki_types::pem::PemObject as _;
        use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
        let setting = "credentials.certificate_name";
        let key = PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|_| {
            bad(
                setting,
                format!(
                    "the secret of certificate {name} holds no PKCS#8 private key: is the key exportable? (otherwise use sign_with = \"key_vault\")"
                ),
            )
        })?;
        let cert = CertificateDer::pem_slice_iter(pem)
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| {
                bad(
                    setting,
                    format!("the secret of certificate {name} holds no certificate"),
                )
            })?;
        let pair = RsaKeyPair::from_pkcs8(key.secret_pkcs8_der()).map_err(|_| {
            bad(
                setting,
                format!(
                    "the key of certificate {name} is not a usable RSA key (2048 bits or more)"
                ),
            )
        })?;
        let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|_| {
            bad(
                setting,
                format!("certificate {name} is not a readable X.509 certificate"),
            )
        })?;
        if x509.public_key().subject_public_key.data.as_ref() != pair.public_key().as_ref() {
            return Err(bad(
                setting,
                format!(
                    "the private key in certificate {name}'s secret does not belong to its certificate"
                ),
            ));
        }
        let validity = x509.validity();
        Ok(Certificate {
            x5t_s256: B64.encode(Sha256::digest(cert.as_ref())),
            not_before: Some(validity.not_before.timestamp()),
            expires: Some(validity.not_after.timestamp()),
            signer: Signer::Local(pair),
        })
    }

    /// Refuses a certificate outside its validity: Entra would refuse it, and the error here
    /// names the fix.
    pub fn check_validity(&self, name: &str) -> Result<(), CredentialError> {
        let now = jiff::Timestamp::now().as_second();
        let when = |t: i64| {
            jiff::Timestamp::from_second(t)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| t.to_string())
        };
        if let Some(exp) = self.expires
            && now >= exp
        {
            return Err(bad(
                "credentials.certificate_name",
                format!(
                    "certificate {name} expired at {}: renew it in Key Vault (a new version) and upload the new public part to the app registration",
                    when(exp)
                ),
            ));
        }
        if let Some(nbf) = self.not_before
            && now + 300 < nbf
        {
            return Err(bad(
                "credentials.certificate_name",
                format!("certificate {name} is not valid before {}", when(nbf)),
            ));
        }
        Ok(())
    }

    /// The signing input of the assertion: header and claims, base64url.
    pub fn signing_input(&self, client_id: &str, audience: &str, now: i64) -> String {
        let header = json!({"alg": "RS256", "typ": "JWT", "x5t#S256": self.x5t_s256});
        let claims = json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": uuid::Uuid::new_v4().to_string(),
            "iat": now,
            "nbf": now,
            "exp": now + 600,
        });
        format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        )
    }

    /// A fresh client assertion for the token endpoint `audience`.
    pub async fn client_assertion(
        &self,
        kv: &KeyVault,
        mi: &ManagedIdentity,
        client_id: &str,
        audience: &str,
    ) -> Result<Secret, CredentialError> {
        let input = self.signing_input(client_id, audience, jiff::Timestamp::now().as_second());
        let sig = match &self.signer {
            Signer::Local(pair) => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    input.as_bytes(),
                    &mut sig,
                )
                .map_err(|_| {
                    bad(
                        "credentials.certificate_name",
                        "signing the client assertion failed",
                    )
                })?;
                sig
            }
            Signer::Vault { kid } => {
                kv.sign_rs256(mi, kid, &Sha256::digest(input.as_bytes()))
                    .await?
            }
        };
        Ok(Secret::new(format!("{input}.{}", B64.encode(sig))))
    }
}
