//! Entra access tokens (compact JWS, RS256) checked against the tenant's published keys: used
//! as the bearer token of legacy and relay callouts and as the `at` inside a PoP token.

use std::collections::HashSet;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::jwks::{Jwks, Lookup};
use super::{AuthError, TokenFault};
use crate::strict_json;

/// What a token must say to be accepted in one role.
pub struct Rules<'a> {
    pub audiences: &'a [String],
    /// Lower-case app ids (and object ids when `match_object_id`).
    pub callers: &'a HashSet<String>,
    /// Relay mode names a managed identity by client id or object id (`oid`).
    pub match_object_id: bool,
    /// Only v2 tokens (`ver` 2.0, the tenant's v2 issuer): PIM custom extensions.
    pub v2_only: bool,
}

/// A token whose signature, issuer, audience, lifetime, tenant and caller were checked.
pub struct Checked {
    pub claims: Map<String, Value>,
    pub kid: String,
    /// Fingerprint of the tenant key that verified it (see `jwks::TenantKey`).
    pub key_fingerprint: [u8; 32],
    pub typ: Option<String>,
    pub caller: String,
    pub tenant_id: String,
}

pub struct Verifier<'a> {
    pub jwks: &'a Jwks,
    pub tenant: &'a str,
    pub leeway_secs: u64,
}

impl Verifier<'_> {
    /// `wrap` says whose token this is (bearer or PoP `at`), so the reason names it.
    pub async fn check(
        &self,
        token: &str,
        rules: &Rules<'_>,
        wrap: fn(TokenFault) -> AuthError,
    ) -> Result<Checked, AuthError> {
        // Shape, encoding and JOSE header by our own strict reading first: the JWT library
        // tolerates what RFC 7515 does not (a `crit` it ignores, float times) and would name
        // every such token "malformed" or "missing claim".
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(wrap(TokenFault::Malformed));
        };
        if h.is_empty() || p.is_empty() {
            return Err(wrap(TokenFault::Malformed));
        }
        let decode = |seg: &str| URL.decode(seg).map_err(|_| wrap(TokenFault::NotBase64Url));
        let (h_bytes, p_bytes) = (decode(h)?, decode(p)?);
        decode(sig)?;
        let jose = strict_json::parse_object(&h_bytes).map_err(|_| wrap(TokenFault::Malformed))?;
        // Read `alg` ourselves: the JWT library cannot even represent `none`, and an algorithm
        // outside the allow-list must be named as such, not as a malformed token.
        let alg = jose
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(wrap(TokenFault::Malformed))?;
        // Entra signs access tokens with RS256; everything else (none, HS*, PS*, EC) is refused
        // before any key is looked up.
        if alg.eq_ignore_ascii_case("none") {
            return Err(wrap(TokenFault::AlgorithmNone));
        }
        if alg != "RS256" {
            return Err(wrap(TokenFault::AlgorithmNotAllowed));
        }
        // RFC 7515 §4.1.11: we understand no extension, so a token that lists any is refused.
        if jose.contains_key("crit") {
            return Err(wrap(TokenFault::CritNotSupported));
        }
        let payload =
            strict_json::parse_object(&p_bytes).map_err(|_| wrap(TokenFault::Malformed))?;
        check_time_claims(&payload).map_err(wrap)?;
        // One issuer: the library accepts an array if any member matches.
        if payload.get("iss").is_some_and(|i| !i.is_string()) {
            return Err(wrap(TokenFault::WrongIssuer));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| wrap(TokenFault::Malformed))?;
        if header.alg != Algorithm::RS256 {
            return Err(wrap(TokenFault::AlgorithmNotAllowed));
        }
        let kid = header.kid.clone().ok_or(wrap(TokenFault::NoKid))?;
        let (key, issuers) = match self.jwks.lookup(&kid).await {
            Ok(Lookup::Found(k, iss)) => (k, iss),
            Ok(Lookup::UnknownKid) => return Err(wrap(TokenFault::UnknownKey)),
            Err(e) => {
                tracing::error!(error = %e, "cannot validate callout tokens: tenant signing keys unavailable");
                return Err(AuthError::KeysUnavailable);
            }
        };
        let issuers: Vec<String> = if rules.v2_only {
            issuers
                .into_iter()
                .filter(|i| i.trim_end_matches('/').ends_with("/v2.0"))
                .collect()
        } else {
            issuers
        };
        if issuers.is_empty() {
            return Err(wrap(TokenFault::WrongIssuer));
        }
        let mut v = Validation::new(Algorithm::RS256);
        v.leeway = self.leeway_secs;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_audience(rules.audiences);
        v.set_issuer(&issuers);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &v).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                wrap(match e.kind() {
                    K::InvalidSignature => TokenFault::BadSignature,
                    K::ExpiredSignature => TokenFault::Expired,
                    K::ImmatureSignature => TokenFault::NotYetValid,
                    K::InvalidIssuer => TokenFault::WrongIssuer,
                    K::InvalidAudience => TokenFault::WrongAudience,
                    K::InvalidAlgorithm => TokenFault::AlgorithmNotAllowed,
                    K::MissingRequiredClaim(_) | K::InvalidClaimFormat(_) => {
                        TokenFault::MissingClaim
                    }
                    _ => TokenFault::Malformed,
                })
            })?;
        let claims = data.claims;
        let s = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
        let tid = s("tid").ok_or(wrap(TokenFault::MissingClaim))?;
        if !tid.eq_ignore_ascii_case(self.tenant) {
            return Err(wrap(TokenFault::WrongTenant));
        }
        if rules.v2_only && claims.get("ver").and_then(Value::as_str) != Some("2.0") {
            return Err(wrap(TokenFault::VersionUnknown));
        }
        let caller = caller_of(&claims).map_err(wrap)?;
        let allowed = rules.callers.contains(&caller.to_ascii_lowercase())
            || (rules.match_object_id
                && s("oid").is_some_and(|o| rules.callers.contains(&o.to_ascii_lowercase())));
        if !allowed {
            return Err(wrap(TokenFault::CallerNotAllowed));
        }
        Ok(Checked {
            typ: header.typ,
            claims,
            kid,
            key_fingerprint: key.fingerprint,
            caller,
            tenant_id: tid,
        })
    }
}

/// Latest NumericDate we take for a time (9999-12-31T23:59:59Z), as for the PoP `ts`.
pub const MAX_NUMERIC_DATE: i64 = 253_402_300_799;

/// `exp`, `nbf` and `iat` must be JSON integers (RFC 7519 allows fractions; Entra never writes
/// them, and a string, float or bool means whoever made the token is not Entra). `1.0` is a
/// float too: strict, integers only.
fn check_time_claims(claims: &Map<String, Value>) -> Result<(), TokenFault> {
    for name in ["exp", "nbf", "iat"] {
        match claims.get(name) {
            None => {}
            Some(Value::Number(n))
                if n.as_i64()
                    .is_some_and(|t| (0..=MAX_NUMERIC_DATE).contains(&t)) => {}
            Some(_) => return Err(TokenFault::TimeClaimNotInteger),
        }
    }
    Ok(())
}

/// The caller's app id from the claim of the token's version only: `appid` in v1 (`ver`
/// "1.0"), `azp` in v2 ("2.0"). Entra writes `ver` in every access token; without it (or with
/// another value) we cannot tell which claim names the caller, so the token is refused. A token
/// that also carries the other version's claim naming a different app is refused on its own
/// reason: it names two callers.
fn caller_of(claims: &Map<String, Value>) -> Result<String, TokenFault> {
    let (own, other) = match claims.get("ver").and_then(Value::as_str) {
        Some("1.0") => ("appid", "azp"),
        Some("2.0") => ("azp", "appid"),
        _ => return Err(TokenFault::VersionUnknown),
    };
    let caller = match claims.get(own) {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => return Err(TokenFault::MissingClaim),
    };
    match claims.get(other) {
        None => {}
        Some(Value::String(o)) if o.eq_ignore_ascii_case(caller) => {}
        Some(_) => return Err(TokenFault::CallerClaimMismatch),
    }
    Ok(caller.clone())
}

const URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
