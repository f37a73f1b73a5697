//! Authentication of inbound callouts.
//!
//! Invariant: the only way to obtain a [`VerifiedCaller`] is [`Authenticator::verify`], and the
//! intake path needs one before it parses or queues anything. There is no switch that skips it.
//!
//! This module implements the bearer ("Regular" token security) model of protocol.md §4.6:
//! signature against the tenant's published keys, `iss` from the tenant's OpenID metadata, `aud`,
//! `appid`/`azp`, `tid`, `exp`/`nbf` with a small leeway. The PoP scheme slots in beside it.

pub mod jwks;

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use sha2::Digest as _;

use crate::config::InboundConfig;
use crate::endpoint::EndpointUrl;
use jwks::{Jwks, Lookup};

/// Proof that a request carried a valid token; only the authenticator builds it.
#[derive(Debug, Clone)]
pub struct VerifiedCaller {
    pub app_id: String,
    pub tenant_id: String,
    pub scheme: Scheme,
    /// SHA-256 of the token (hex, first 16 chars): safe to log, useful to correlate.
    pub token_hash: String,
    /// The non-secret parts of the token, for capture mode.
    pub summary: TokenSummary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Bearer,
}

/// Header and the claims that describe who called; never a signature or the token itself.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TokenSummary {
    pub header: serde_json::Value,
    pub iss: Option<String>,
    pub aud: Option<serde_json::Value>,
    pub appid: Option<String>,
    pub azp: Option<String>,
    pub tid: Option<String>,
    pub ver: Option<String>,
}

/// Why a request was not authenticated. The response is the same 401 for all of them; the
/// variant (and its `code`) goes to the log and to tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no Authorization header")]
    Missing,
    #[error("Authorization header is not valid text or has no token")]
    Malformed,
    #[error("Authorization scheme is not accepted here")]
    UnsupportedScheme,
    #[error("token is not a well-formed JWT")]
    BadToken,
    #[error("token algorithm is not allowed")]
    AlgorithmNotAllowed,
    #[error("token header has no kid")]
    NoKid,
    #[error("token is signed by a key the tenant does not publish")]
    UnknownKey,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issuer is not the configured tenant's")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("token tenant is not the configured tenant")]
    WrongTenant,
    #[error("token caller app id is not an allowed caller")]
    CallerNotAllowed,
    #[error("token lacks a required claim")]
    MissingClaim,
    #[error("tenant signing keys are unavailable")]
    KeysUnavailable,
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_authorization",
            AuthError::Malformed => "malformed_authorization",
            AuthError::UnsupportedScheme => "unsupported_scheme",
            AuthError::BadToken => "malformed_token",
            AuthError::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthError::NoKid => "missing_kid",
            AuthError::UnknownKey => "unknown_signing_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::WrongTenant => "wrong_tenant",
            AuthError::CallerNotAllowed => "caller_not_allowed",
            AuthError::MissingClaim => "missing_claim",
            AuthError::KeysUnavailable => "signing_keys_unavailable",
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    tid: Option<String>,
    appid: Option<String>,
    azp: Option<String>,
}

/// Upper bound on what we are willing to parse as a token (Entra tokens are a few KiB).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

pub struct Authenticator {
    jwks: Jwks,
    tenant: String,
    audiences: Vec<String>,
    allowed_callers: HashSet<String>,
    leeway: Duration,
}

impl Authenticator {
    pub fn new(
        http: reqwest::Client,
        authority: &EndpointUrl,
        tenant: &uuid::Uuid,
        cfg: &InboundConfig,
    ) -> Self {
        Authenticator {
            jwks: Jwks::new(
                http,
                authority,
                tenant,
                cfg.jwks_refresh_min_interval,
                cfg.jwks_max_age,
            ),
            tenant: tenant.to_string(),
            audiences: cfg.audiences.clone(),
            allowed_callers: cfg
                .allowed_app_ids
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            leeway: cfg.clock_skew,
        }
    }

    pub fn jwks(&self) -> &Jwks {
        &self.jwks
    }

    /// Validates the `Authorization` header value of a callout.
    pub async fn verify(&self, authorization: Option<&[u8]>) -> Result<VerifiedCaller, AuthError> {
        let raw = authorization.ok_or(AuthError::Missing)?;
        let header = std::str::from_utf8(raw)
            .map_err(|_| AuthError::Malformed)?
            .trim();
        let (scheme, token) = header.split_once(' ').ok_or(AuthError::Malformed)?;
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Malformed);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::UnsupportedScheme);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::BadToken);
        }
        self.verify_bearer(token).await
    }

    async fn verify_bearer(&self, token: &str) -> Result<VerifiedCaller, AuthError> {
        // Read `alg` ourselves first: the JWT library cannot even represent `none`, and an
        // algorithm outside the allow-list must be named as such, not as a malformed token.
        let alg = token
            .split('.')
            .next()
            .and_then(|h| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(h.trim_end_matches('='))
                    .ok()
            })
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("alg").and_then(|a| a.as_str()).map(str::to_owned))
            .ok_or(AuthError::BadToken)?;
        if alg != "RS256" {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::BadToken)?;
        // Entra signs access tokens with RS256; everything else (none, HS*, PS*, EC) is refused
        // before any key is looked up.
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let kid = header.kid.clone().ok_or(AuthError::NoKid)?;
        let (key, issuers) = match self.jwks.lookup(&kid).await {
            Ok(Lookup::Found(k, iss)) => (k, iss),
            Ok(Lookup::UnknownKid) => return Err(AuthError::UnknownKey),
            Err(e) => {
                tracing::error!(error = %e, "cannot validate callout tokens: tenant signing keys unavailable");
                return Err(AuthError::KeysUnavailable);
            }
        };
        let mut v = Validation::new(Algorithm::RS256);
        v.leeway = self.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_audience(&self.audiences);
        v.set_issuer(&issuers);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => AuthError::BadSignature,
                K::ExpiredSignature => AuthError::Expired,
                K::ImmatureSignature => AuthError::NotYetValid,
                K::InvalidIssuer => AuthError::WrongIssuer,
                K::InvalidAudience => AuthError::WrongAudience,
                K::InvalidAlgorithm => AuthError::AlgorithmNotAllowed,
                K::MissingRequiredClaim(_) | K::InvalidClaimFormat(_) => AuthError::MissingClaim,
                _ => AuthError::BadToken,
            }
        })?;
        let claims: Claims =
            serde_json::from_value(data.claims.clone()).map_err(|_| AuthError::MissingClaim)?;
        let tid = claims.tid.ok_or(AuthError::MissingClaim)?;
        if !tid.eq_ignore_ascii_case(&self.tenant) {
            return Err(AuthError::WrongTenant);
        }
        // v1 tokens name the caller in `appid`, v2 tokens in `azp`.
        let caller = claims
            .appid
            .clone()
            .or(claims.azp.clone())
            .ok_or(AuthError::MissingClaim)?;
        if !self.allowed_callers.contains(&caller.to_ascii_lowercase()) {
            return Err(AuthError::CallerNotAllowed);
        }
        let c = &data.claims;
        let str_claim = |k: &str| c.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        Ok(VerifiedCaller {
            app_id: caller,
            tenant_id: tid,
            scheme: Scheme::Bearer,
            token_hash: token_hash(token),
            summary: TokenSummary {
                header: serde_json::json!({"alg": "RS256", "kid": kid, "typ": header.typ}),
                iss: str_claim("iss"),
                aud: c.get("aud").cloned(),
                appid: str_claim("appid"),
                azp: str_claim("azp"),
                tid: str_claim("tid"),
                ver: str_claim("ver"),
            },
        })
    }
}

/// A short, non-reversible fingerprint of a token for logs.
pub fn token_hash(token: &str) -> String {
    let d = sha2::Sha256::digest(token.as_bytes());
    let mut s = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d);
    s.truncate(16);
    s
}
