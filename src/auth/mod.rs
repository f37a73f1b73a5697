//! Authentication of inbound callouts.
//!
//! Invariant: the only way to obtain a [`VerifiedCaller`] is [`Authenticator::verify`], and the
//! intake path needs one before it parses or queues anything. There is no switch that skips it.
//!
//! Three ways in, chosen by `inbound.mode` (ARCHITECTURE.md, ingress modes):
//! - direct, `PoP`: Entra's signed HTTP request ([`pop`]), bound to a configured extension;
//! - direct, `Bearer`: legacy "Regular" token extensions, only when `inbound.audiences` is set;
//! - relay, `Bearer`: the managed identity of a relaying Logic App.

mod access_token;
pub mod jwks;
pub mod pop;
mod pop_key;
pub mod replay;
pub mod settings;
mod token_cache;

use std::collections::HashSet;

use base64::Engine as _;
use sha2::Digest as _;

use crate::endpoint::EndpointUrl;
use access_token::{Rules, Verifier};
use jwks::Jwks;
use replay::{ReplayCache, ReplayError};
pub use settings::{Extension, IngressMode, PopAlgorithm, PopSettings, Settings};
use token_cache::TokenCache;

/// Proof that a request carried a valid token. Only [`Authenticator::verify`] builds one: the
/// fields are private and there is no public constructor or `Default`, so holding a
/// `VerifiedCaller` means the checks ran.
///
/// ```compile_fail
/// // Outside `auth` the proof cannot be forged: this compiles only if the fields are public.
/// use accessgate::auth::{Scheme, TokenSummary, VerifiedCaller};
/// let _ = VerifiedCaller {
///     app_id: String::new(),
///     tenant_id: String::new(),
///     scheme: Scheme::Pop,
///     token_hash: String::new(),
///     extension: None,
///     body_hash: None,
///     summary: TokenSummary::default(),
/// };
/// ```
#[derive(Debug, Clone)]
pub struct VerifiedCaller {
    app_id: String,
    tenant_id: String,
    scheme: Scheme,
    token_hash: String,
    extension: Option<String>,
    body_hash: Option<String>,
    summary: TokenSummary,
}

impl VerifiedCaller {
    /// The caller's application (client) id: the token's `appid` (v1) or `azp` (v2).
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    pub fn tenant_id(&self) -> &str {
        &self.tenant_id
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// SHA-256 of the token (base64url, first 16 chars): safe to log, useful to correlate.
    pub fn token_hash(&self) -> &str {
        &self.token_hash
    }

    /// The extension a PoP token is bound to (its `p`); `None` for bearer callers.
    pub fn extension(&self) -> Option<&str> {
        self.extension.as_deref()
    }

    /// The `b` claim (body hash) when the signer bound the body; intake checks it.
    pub fn body_hash(&self) -> Option<&str> {
        self.body_hash.as_deref()
    }

    /// The non-secret parts of the token, for capture mode.
    pub fn summary(&self) -> &TokenSummary {
        &self.summary
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Bearer,
    Pop,
    Relay,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Bearer => "bearer",
            Scheme::Pop => "pop",
            Scheme::Relay => "relay",
        }
    }
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
    /// PoP only: the signed request's header, `ts`, `m`, `u`, `p` and key thumbprint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pop: Option<serde_json::Value>,
}

/// Why an access token (bearer, or the `at` inside a PoP token) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFault {
    Malformed,
    AlgorithmNone,
    AlgorithmNotAllowed,
    NoKid,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    WrongTenant,
    CallerNotAllowed,
    MissingClaim,
    NotBase64Url,
    CritNotSupported,
    TimeClaimNotInteger,
    VersionUnknown,
    CallerClaimMismatch,
}

impl TokenFault {
    /// (code as a bearer token, code as the `at` of a PoP token, description)
    fn describe(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Malformed => (
                "malformed_token",
                "at_malformed_token",
                "not a well-formed JWT",
            ),
            Self::AlgorithmNone => ("algorithm_none", "at_algorithm_none", "unsigned (alg none)"),
            Self::AlgorithmNotAllowed => (
                "algorithm_not_allowed",
                "at_algorithm_not_allowed",
                "algorithm is not RS256",
            ),
            Self::NoKid => ("missing_kid", "at_missing_kid", "header has no kid"),
            Self::UnknownKey => (
                "unknown_signing_key",
                "at_unknown_signing_key",
                "signed by a key the tenant does not publish",
            ),
            Self::BadSignature => ("bad_signature", "at_bad_signature", "signature is invalid"),
            Self::Expired => ("token_expired", "at_token_expired", "has expired"),
            Self::NotYetValid => (
                "token_not_yet_valid",
                "at_token_not_yet_valid",
                "is not valid yet",
            ),
            Self::WrongIssuer => (
                "wrong_issuer",
                "at_wrong_issuer",
                "issuer is not the configured tenant's",
            ),
            Self::WrongAudience => (
                "wrong_audience",
                "at_wrong_audience",
                "audience is not accepted",
            ),
            Self::WrongTenant => (
                "wrong_tenant",
                "at_wrong_tenant",
                "tenant is not the configured tenant",
            ),
            Self::CallerNotAllowed => (
                "caller_not_allowed",
                "at_caller_not_allowed",
                "caller app id is not an allowed caller",
            ),
            Self::MissingClaim => (
                "missing_claim",
                "at_missing_claim",
                "lacks a required claim",
            ),
            Self::NotBase64Url => (
                "token_not_base64url",
                "at_not_base64url",
                "has a segment that is not unpadded base64url",
            ),
            Self::CritNotSupported => (
                "crit_not_supported",
                "at_crit_not_supported",
                "header has crit extensions",
            ),
            Self::TimeClaimNotInteger => (
                "time_claim_not_integer",
                "at_time_claim_not_integer",
                "exp, nbf or iat is not an integer number of seconds",
            ),
            Self::VersionUnknown => (
                "token_version_unknown",
                "at_token_version_unknown",
                "ver is neither 1.0 nor 2.0",
            ),
            Self::CallerClaimMismatch => (
                "caller_claim_mismatch",
                "at_caller_claim_mismatch",
                "appid and azp name different callers",
            ),
        }
    }
}

/// Why a PoP signed request was refused (beyond its inner access token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PopFault {
    Malformed,
    NotBase64Url,
    MalformedHeader,
    MalformedPayload,
    DuplicateMember,
    Unsigned,
    AlgNone,
    AlgHmac,
    AlgNotAllowed,
    WrongTyp,
    HeaderKeyNotAllowed,
    CritNotSupported,
    HeaderParamNotSupported,
    KidMismatch,
    AtMissing,
    AtNotString,
    TsMissing,
    TsNotInteger,
    TsInvalid,
    Expired,
    TsInFuture,
    ClaimNotString,
    MethodMissing,
    WrongMethod,
    HostMissing,
    WrongHost,
    PathMissing,
    UnknownResource,
    BadNonce,
    CnfMissing,
    CnfMalformed,
    CnfReferenceNotSupported,
    KeySymmetric,
    KeyUnsupported,
    KeyMalformed,
    KeyWeak,
    KeyPrivate,
    AlgKeyMismatch,
    AtCnfMissing,
    AtCnfMalformed,
    BindingMismatch,
    BadSignature,
    Replayed,
    BodyHashMismatch,
}

impl PopFault {
    fn describe(self) -> (&'static str, &'static str) {
        match self {
            Self::Malformed => ("pop_malformed", "not three base64url segments"),
            Self::NotBase64Url => ("pop_not_base64url", "a segment is not unpadded base64url"),
            Self::MalformedHeader => ("pop_malformed_header", "header is not a JSON object"),
            Self::MalformedPayload => ("pop_malformed_payload", "payload is not a JSON object"),
            Self::DuplicateMember => (
                "pop_duplicate_member",
                "a header or claim member appears twice",
            ),
            Self::Unsigned => ("pop_unsigned", "the signature segment is empty"),
            Self::AlgNone => ("pop_alg_none", "alg none is never accepted"),
            Self::AlgHmac => ("pop_alg_hmac", "HMAC algorithms are never accepted"),
            Self::AlgNotAllowed => (
                "pop_alg_not_allowed",
                "alg is missing or not in inbound.pop_algorithms",
            ),
            Self::WrongTyp => ("pop_wrong_typ", "header typ is not pop"),
            Self::HeaderKeyNotAllowed => (
                "pop_header_key_not_allowed",
                "header names its own key (jku, x5u, jwk, x5c)",
            ),
            Self::CritNotSupported => ("pop_crit_not_supported", "header has crit extensions"),
            Self::HeaderParamNotSupported => (
                "pop_header_param_not_supported",
                "header has b64, zip or enc (payload encoding we do not apply)",
            ),
            Self::KidMismatch => (
                "pop_kid_mismatch",
                "header kid is not the thumbprint of cnf.jwk",
            ),
            Self::AtMissing => ("pop_at_missing", "no at claim"),
            Self::AtNotString => ("pop_at_not_string", "at is not a non-empty string"),
            Self::TsMissing => ("pop_ts_missing", "no ts claim"),
            Self::TsNotInteger => ("pop_ts_not_integer", "ts is not a JSON integer"),
            Self::TsInvalid => ("pop_ts_invalid", "ts is not a time between 1970 and 9999"),
            Self::Expired => (
                "pop_expired",
                "ts is older than inbound.pop_lifetime_seconds",
            ),
            Self::TsInFuture => (
                "pop_ts_in_future",
                "ts is further in the future than inbound.pop_future_skew_seconds",
            ),
            Self::ClaimNotString => ("pop_claim_not_string", "m, u, p or b is not a string"),
            Self::MethodMissing => ("pop_m_missing", "no m claim"),
            Self::WrongMethod => ("pop_wrong_method", "m is not POST"),
            Self::HostMissing => ("pop_u_missing", "no u claim"),
            Self::WrongHost => (
                "pop_wrong_host",
                "u is not the host of any configured extension",
            ),
            Self::PathMissing => ("pop_p_missing", "no p claim"),
            Self::UnknownResource => (
                "pop_unknown_resource",
                "p is not the resource of any configured extension",
            ),
            Self::BadNonce => ("pop_bad_nonce", "nonce is not a short string"),
            Self::CnfMissing => ("pop_cnf_missing", "no cnf claim"),
            Self::CnfMalformed => (
                "pop_cnf_malformed",
                "cnf is not an object with a jwk object",
            ),
            Self::CnfReferenceNotSupported => (
                "pop_cnf_reference_not_supported",
                "cnf refers to a key (jku, jwe, kid) instead of carrying it",
            ),
            Self::KeySymmetric => ("pop_key_symmetric", "cnf.jwk is a symmetric key"),
            Self::KeyUnsupported => (
                "pop_key_unsupported",
                "cnf.jwk key type or curve is not accepted",
            ),
            Self::KeyMalformed => (
                "pop_key_malformed",
                "cnf.jwk members are missing or malformed",
            ),
            Self::KeyWeak => (
                "pop_key_weak",
                "cnf.jwk RSA modulus is shorter than 2048 bits or its exponent is not odd and at least 3",
            ),
            Self::KeyPrivate => (
                "pop_key_has_private_part",
                "cnf.jwk carries private key members",
            ),
            Self::AlgKeyMismatch => (
                "pop_alg_key_mismatch",
                "alg does not belong to the key type",
            ),
            Self::AtCnfMissing => ("pop_at_cnf_missing", "the access token has no cnf binding"),
            Self::AtCnfMalformed => (
                "pop_at_cnf_malformed",
                "the access token's cnf is not a kid or jwk",
            ),
            Self::BindingMismatch => (
                "pop_binding_mismatch",
                "the access token is bound to another key",
            ),
            Self::BadSignature => (
                "pop_bad_signature",
                "the signed request's signature is invalid",
            ),
            Self::Replayed => ("pop_replayed", "this signed request was already used"),
            Self::BodyHashMismatch => (
                "pop_body_hash_mismatch",
                "the b claim does not match the body",
            ),
        }
    }
}

/// Why a request was not authenticated. The response is the same 401 for all of them (503 for
/// the two that are ours); the code goes to the log and to tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no Authorization header")]
    Missing,
    #[error("Authorization header is not valid text or has no token")]
    Malformed,
    #[error("more than one Authorization header")]
    DuplicateAuthorization,
    #[error("Authorization scheme is neither PoP nor Bearer")]
    UnsupportedScheme,
    #[error(
        "bearer tokens are not accepted: direct mode expects PoP (set inbound.audiences for legacy bearer extensions)"
    )]
    BearerNotAccepted,
    #[error(
        "PoP tokens are not accepted in relay mode: the relaying Logic App sends a bearer token"
    )]
    PopNotAccepted,
    #[error("token larger than the accepted size")]
    TooLarge,
    #[error("bearer token {}", .0.describe().2)]
    Token(TokenFault),
    #[error("PoP access token {}", .0.describe().2)]
    AccessToken(TokenFault),
    #[error("PoP signed request: {}", .0.describe().1)]
    Pop(PopFault),
    #[error("tenant signing keys are unavailable")]
    KeysUnavailable,
    #[error("replay cache is full of live entries")]
    ReplayCacheFull,
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_authorization",
            AuthError::Malformed => "malformed_authorization",
            AuthError::DuplicateAuthorization => "duplicate_authorization",
            AuthError::UnsupportedScheme => "unsupported_scheme",
            AuthError::BearerNotAccepted => "bearer_not_accepted",
            AuthError::PopNotAccepted => "pop_not_accepted",
            AuthError::TooLarge => "token_too_large",
            AuthError::Token(f) => f.describe().0,
            AuthError::AccessToken(f) => f.describe().1,
            AuthError::Pop(f) => f.describe().0,
            AuthError::KeysUnavailable => "signing_keys_unavailable",
            AuthError::ReplayCacheFull => "replay_cache_full",
        }
    }

    /// Ours, not the caller's: answer 503 so Entra retries.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            AuthError::KeysUnavailable | AuthError::ReplayCacheFull
        )
    }
}

/// Upper bound on what we are willing to parse as a token. An Entra access token is a few KiB;
/// a PoP token carries one base64url-encoded again plus a public key.
const MAX_TOKEN_BYTES: usize = 32 * 1024;

pub struct Authenticator {
    jwks: Jwks,
    tenant: String,
    mode: IngressMode,
    leeway_secs: u64,
    bearer_audiences: Vec<String>,
    allowed_callers: HashSet<String>,
    pop: PopSettings,
    extensions: Vec<Extension>,
    relay_audiences: Vec<String>,
    relay_callers: HashSet<String>,
    replay: ReplayCache,
    /// Inner access tokens of PoP callouts that passed full validation (`token_cache`).
    tokens: TokenCache,
}

impl Authenticator {
    pub fn new(
        http: reqwest::Client,
        authority: &EndpointUrl,
        tenant: &uuid::Uuid,
        cfg: &Settings,
        extensions: &[Extension],
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
            mode: cfg.mode,
            leeway_secs: cfg.clock_skew.as_secs(),
            bearer_audiences: cfg.audiences.clone(),
            allowed_callers: cfg
                .allowed_app_ids
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            pop: cfg.pop.clone(),
            extensions: extensions.to_vec(),
            relay_audiences: cfg.relay.audiences.clone(),
            relay_callers: cfg.relay.caller_ids.iter().cloned().collect(),
            replay: ReplayCache::new(cfg.pop.replay_cache_entries),
            tokens: TokenCache::new(cfg.pop.token_cache_entries),
        }
    }

    pub fn jwks(&self) -> &Jwks {
        &self.jwks
    }

    /// The extension a verified caller is bound to.
    pub fn extension(&self, name: &str) -> Option<&Extension> {
        self.extensions.iter().find(|e| e.name == name)
    }

    fn verifier(&self) -> Verifier<'_> {
        Verifier {
            jwks: &self.jwks,
            tenant: &self.tenant,
            leeway_secs: self.leeway_secs,
        }
    }

    /// Validates the `Authorization` header value of a callout.
    pub async fn verify(&self, authorization: Option<&[u8]>) -> Result<VerifiedCaller, AuthError> {
        let (is_pop, token) = split_authorization(authorization)?;
        match (self.mode, is_pop) {
            (IngressMode::Direct, true) => self.verify_pop(token).await,
            (IngressMode::Direct, false) if self.bearer_audiences.is_empty() => {
                Err(AuthError::BearerNotAccepted)
            }
            (IngressMode::Direct, false) => {
                let rules = Rules {
                    audiences: &self.bearer_audiences,
                    callers: &self.allowed_callers,
                    match_object_id: false,
                    v2_only: false,
                };
                self.verify_bearer(token, &rules, Scheme::Bearer).await
            }
            (IngressMode::Relay, true) => Err(AuthError::PopNotAccepted),
            (IngressMode::Relay, false) => {
                let rules = Rules {
                    audiences: &self.relay_audiences,
                    callers: &self.relay_callers,
                    match_object_id: true,
                    v2_only: false,
                };
                self.verify_bearer(token, &rules, Scheme::Relay).await
            }
        }
    }

    /// A bearer token of one of accessgate's own service callers (ServiceNow's close webhook,
    /// signing in to Entra with its own app registration): the same checks as a callout's
    /// bearer token, against the audiences and callers that service is configured with.
    pub async fn verify_service_bearer(
        &self,
        authorization: Option<&[u8]>,
        audiences: &[String],
        callers: &HashSet<String>,
    ) -> Result<VerifiedCaller, AuthError> {
        self.verify_bearer_for(authorization, audiences, callers, false)
            .await
    }

    /// A PIM custom extension's bearer token: v2 only (`ver` 2.0, the tenant's v2 issuer),
    /// `aud` one of `audiences` (the Application ID URI), `azp` one of `callers`.
    pub async fn verify_v2_bearer(
        &self,
        authorization: Option<&[u8]>,
        audiences: &[String],
        callers: &HashSet<String>,
    ) -> Result<VerifiedCaller, AuthError> {
        self.verify_bearer_for(authorization, audiences, callers, true)
            .await
    }

    /// A bearer `Authorization` (never PoP) checked against a service's audiences and callers.
    async fn verify_bearer_for(
        &self,
        authorization: Option<&[u8]>,
        audiences: &[String],
        callers: &HashSet<String>,
        v2_only: bool,
    ) -> Result<VerifiedCaller, AuthError> {
        match split_authorization(authorization)? {
            (true, _) => Err(AuthError::UnsupportedScheme),
            (false, token) => {
                let rules = Rules {
                    audiences,
                    callers,
                    match_object_id: false,
                    v2_only,
                };
                self.verify_bearer(token, &rules, Scheme::Bearer).await
            }
        }
    }

    async fn verify_bearer(
        &self,
        token: &str,
        rules: &Rules<'_>,
        scheme: Scheme,
    ) -> Result<VerifiedCaller, AuthError> {
        let c = self
            .verifier()
            .check(token, rules, AuthError::Token)
            .await?;
        Ok(VerifiedCaller {
            summary: summary(&c, None),
            app_id: c.caller,
            tenant_id: c.tenant_id,
            scheme,
            token_hash: token_hash(token),
            extension: None,
            body_hash: None,
        })
    }

    async fn verify_pop(&self, token: &str) -> Result<VerifiedCaller, AuthError> {
        let now = jiff::Timestamp::now().as_second();
        let u = pop::parse(token, &self.pop, &self.extensions, now)?;
        let rules = Rules {
            audiences: &self.pop.audiences,
            callers: &self.allowed_callers,
            match_object_id: false,
            v2_only: false,
        };
        let at = self.checked_access_token(&u.at, &rules, now).await?;
        pop::check_binding(&at.claims, &u.key)?;
        if !u
            .key
            .verify(u.alg, u.signing_input.as_bytes(), &u.signature)
        {
            return Err(AuthError::Pop(PopFault::BadSignature));
        }
        // Keyed on what was signed, not on the token text: padding on the signature segment and
        // ECDSA's (r, n - s) twin verify too, and must not make a used request new again.
        let digest: [u8; 32] = sha2::Sha256::digest(u.signing_input.as_bytes()).into();
        let expires_at = u.ts.saturating_add(self.pop.lifetime.as_secs() as i64);
        self.replay
            .check_and_insert(digest, expires_at, now)
            .map_err(|e| match e {
                ReplayError::Seen => AuthError::Pop(PopFault::Replayed),
                ReplayError::Full => AuthError::ReplayCacheFull,
            })?;
        let ext = self.extensions.get(u.extension);
        let pop_summary = serde_json::json!({
            "header": {
                "alg": u.alg.name(),
                "typ": u.header.get("typ"),
                "kid": u.header.get("kid"),
            },
            "ts": u.ts,
            "u": ext.map(|e| e.host.as_str()),
            "p": ext.map(|e| e.resource.as_str()),
            "thumbprint": u.key.thumbprint(),
            "extension": ext.map(|e| e.name.as_str()),
        });
        Ok(VerifiedCaller {
            summary: summary(&at, Some(pop_summary)),
            app_id: at.caller.clone(),
            tenant_id: at.tenant_id.clone(),
            scheme: Scheme::Pop,
            // The replay key doubles as the log fingerprint: one SHA-256 per callout, not two.
            token_hash: short_hash(&digest),
            extension: ext.map(|e| e.name.clone()),
            body_hash: u.body_hash,
        })
    }
}

impl Authenticator {
    /// The PoP `at`, from the token cache when this exact token passed full validation before
    /// and is still within its `exp` and signed by a key the tenant still publishes; otherwise
    /// fully checked (and then cached). Only the inner verify and claim checks are skipped.
    async fn checked_access_token(
        &self,
        at: &str,
        rules: &Rules<'_>,
        now: i64,
    ) -> Result<std::sync::Arc<access_token::Checked>, AuthError> {
        let digest: [u8; 32] = sha2::Sha256::digest(at.as_bytes()).into();
        if let Some(c) = self.tokens.get(&digest, now) {
            if self.jwks.still_publishes(&c.kid, &c.key_fingerprint).await {
                return Ok(c);
            }
            // Key withdrawn or key set stale: the full path decides (and refreshes keys).
            self.tokens.remove(&digest);
        }
        let checked = std::sync::Arc::new(
            self.verifier()
                .check(at, rules, AuthError::AccessToken)
                .await?,
        );
        self.tokens
            .insert(digest, checked.clone(), self.leeway_secs as i64, now);
        Ok(checked)
    }
}

/// The scheme (`true` for PoP, `false` for Bearer) and token of an `Authorization` value.
fn split_authorization(authorization: Option<&[u8]>) -> Result<(bool, &str), AuthError> {
    let raw = authorization.ok_or(AuthError::Missing)?;
    let header = std::str::from_utf8(raw)
        .map_err(|_| AuthError::Malformed)?
        .trim();
    let (scheme, token) = header.split_once(' ').ok_or(AuthError::Malformed)?;
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Malformed);
    }
    let is_pop = scheme.eq_ignore_ascii_case("pop");
    if !is_pop && !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::UnsupportedScheme);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge);
    }
    Ok((is_pop, token))
}

fn summary(c: &access_token::Checked, pop: Option<serde_json::Value>) -> TokenSummary {
    let s = |k: &str| c.claims.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    TokenSummary {
        header: serde_json::json!({"alg": "RS256", "kid": c.kid, "typ": c.typ}),
        iss: s("iss"),
        aud: c.claims.get("aud").cloned(),
        appid: s("appid"),
        azp: s("azp"),
        tid: s("tid"),
        ver: s("ver"),
        pop,
    }
}

/// Whether `alg` names an algorithm a PoP key may use (for `check-config`).
pub fn pop_algorithm_names(algs: &[PopAlgorithm]) -> Vec<&'static str> {
    algs.iter().map(|a| a.name()).collect()
}

/// A short, non-reversible fingerprint of a token for logs.
pub fn token_hash(token: &str) -> String {
    short_hash(&sha2::Sha256::digest(token.as_bytes()).into())
}

fn short_hash(digest: &[u8; 32]) -> String {
    let mut s = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    s.truncate(16);
    s
}
