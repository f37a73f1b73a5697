//! Entra access tokens (compact JWS, RS256) checked against the tenant's published keys: used
//! as the bearer token of legacy and relay callouts and as the `at` inside a PoP token.

use std::collections::HashSet;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::jwks::{Jwks, Lookup};
use super::{AuthError, TokenFault};

/// What a token must say to be accepted in one role.
pub struct Rules<'a> {
    pub audiences: &'a [String],
    /// Lower-case app ids (and object ids when `match_object_id`).
    pub callers: &'a HashSet<String>,
    /// Relay mode names a managed identity by client id or object id (`oid`).
    pub match_object_id: bool,
}

/// A token whose signature, issuer, audience, lifetime, tenant and caller were checked.
pub struct Checked {
    pub claims: Map<String, Value>,
    pub kid: String,
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
        // Read `alg` ourselves first: the JWT library cannot even represent `none`, and an
        // algorithm outside the allow-list must be named as such, not as a malformed token.
        let alg = token
            .split('.')
            .next()
            .and_then(|h| URL.decode(h.trim_end_matches('=')).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v.get("alg").and_then(|a| a.as_str()).map(str::to_owned))
            .ok_or(wrap(TokenFault::Malformed))?;
        // Entra signs access tokens with RS256; everything else (none, HS*, PS*, EC) is refused
        // before any key is looked up.
        if alg.eq_ignore_ascii_case("none") {
            return Err(wrap(TokenFault::AlgorithmNone));
        }
        if alg != "RS256" {
            return Err(wrap(TokenFault::AlgorithmNotAllowed));
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
        let mut v = Validation::new(Algorithm::RS256);
        v.leeway = self.leeway_secs;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_audience(rules.audiences);
        v.set_issuer(&issuers);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            wrap(match e.kind() {
                K::InvalidSignature => TokenFault::BadSignature,
                K::ExpiredSignature => TokenFault::Expired,
                K::ImmatureSignature => TokenFault::NotYetValid,
                K::InvalidIssuer => TokenFault::WrongIssuer,
                K::InvalidAudience => TokenFault::WrongAudience,
                K::InvalidAlgorithm => TokenFault::AlgorithmNotAllowed,
                K::MissingRequiredClaim(_) | K::InvalidClaimFormat(_) => TokenFault::MissingClaim,
                _ => TokenFault::Malformed,
            })
        })?;
        let claims = data.claims;
        let s = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
        let tid = s("tid").ok_or(wrap(TokenFault::MissingClaim))?;
        if !tid.eq_ignore_ascii_case(self.tenant) {
            return Err(wrap(TokenFault::WrongTenant));
        }
        // v1 tokens name the caller in `appid`, v2 tokens in `azp`.
        let caller = s("appid")
            .or_else(|| s("azp"))
            .ok_or(wrap(TokenFault::MissingClaim))?;
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
            caller,
            tenant_id: tid,
        })
    }
}

const URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
