//! Entra's proof-of-possession "signed HTTP request" (SHR): `Authorization: PoP <jws>`
//! (protocol.md §4.4–4.5, anchors.md §2).
//!
//! Order: everything that costs no cryptography first (shape, header, claims, binding to a
//! configured extension), then the inner access token against the tenant's keys, the binding
//! of its `cnf` to the carried key, the outer signature with that key, and last the replay
//! cache, so only fully valid requests take a slot in it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::pop_key::{KeyFault, PopKey};
use super::{AuthError, PopFault};
use super::{Extension, PopAlgorithm, PopSettings};
use crate::strict_json::{self, StrictError};

/// Header members that would let the token choose its own verification key.
const HEADER_KEY_MEMBERS: &[&str] = &["jku", "x5u", "jwk", "x5c"];
/// Header members that change how the payload is read (RFC 7797 `b64`) or belong to JWE
/// (`zip`, `enc`): a reader that ignores them and the signer could see two different payloads.
const HEADER_PAYLOAD_MEMBERS: &[&str] = &["b64", "zip", "enc"];
const MAX_NONCE_CHARS: usize = 256;

/// The parts of a structurally valid SHR, before any signature is checked.
pub struct Unverified<'t> {
    pub alg: PopAlgorithm,
    pub header: Map<String, Value>,
    pub at: String,
    pub ts: i64,
    pub key: PopKey,
    pub extension: usize,
    /// `b`: base64url SHA-256 of the body, when the signer bound it.
    pub body_hash: Option<String>,
    pub signing_input: &'t str,
    pub signature: Vec<u8>,
}

fn fault(f: PopFault) -> AuthError {
    AuthError::Pop(f)
}

fn decode_part(part: &str, what: PopFault) -> Result<Map<String, Value>, AuthError> {
    // RFC 7515 §2: unpadded base64url; `=`, `+`, `/` and whitespace are not that encoding.
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| fault(PopFault::NotBase64Url))?;
    strict_json::parse_object(&bytes).map_err(|e| match e {
        StrictError::Duplicate => fault(PopFault::DuplicateMember),
        StrictError::NotJson | StrictError::NotAnObject => fault(what),
    })
}

fn string_claim<'m>(
    m: &'m Map<String, Value>,
    name: &str,
    missing: PopFault,
) -> Result<&'m str, AuthError> {
    match m.get(name) {
        None | Some(Value::Null) => Err(fault(missing)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(fault(PopFault::ClaimNotString)),
    }
}

/// `ts` as Entra writes it: a JSON integer (seconds). A numeric string, a float (`1.0`
/// included), a bool is not one (`Err(TsNotInteger)`); an integer before 1970 or after 9999 is
/// not a time (`Err(TsInvalid)`).
fn parse_ts(v: &Value) -> Result<i64, PopFault> {
    let Value::Number(n) = v else {
        return Err(PopFault::TsNotInteger);
    };
    if !(n.is_i64() || n.is_u64()) {
        return Err(PopFault::TsNotInteger);
    }
    n.as_i64()
        .filter(|ts| (0..=super::access_token::MAX_NUMERIC_DATE).contains(ts))
        .ok_or(PopFault::TsInvalid)
}

/// `u` equals the extension's host, or `host:443` (IdentityModel accepts host or host:port).
/// Compared as bytes: `u` is attacker text and may split a character where `host` ends.
fn host_matches(u: &str, host: &str) -> bool {
    let (u, h) = (u.as_bytes(), host.as_bytes());
    u.eq_ignore_ascii_case(h)
        || (!host.contains(':')
            && u.len() == h.len() + 4
            && u[..h.len()].eq_ignore_ascii_case(h)
            && &u[h.len()..] == b":443")
}

/// Header `kid`: the bare thumbprint (MSAL.NET, kubelogin) or, as msal-browser writes it,
/// base64url of `{"kid":"<thumbprint>"}`.
fn kid_matches(kid: &str, thumbprint: &str) -> bool {
    if kid == thumbprint {
        return true;
    }
    URL_SAFE_NO_PAD
        .decode(kid)
        .ok()
        .and_then(|b| strict_json::parse_object(&b).ok())
        .is_some_and(|m| m.len() == 1 && m.get("kid").and_then(Value::as_str) == Some(thumbprint))
}

/// Structure, header and claims; no signature is checked here.
pub fn parse<'t>(
    token: &'t str,
    cfg: &PopSettings,
    extensions: &[Extension],
    now: i64,
) -> Result<Unverified<'t>, AuthError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(fault(PopFault::Malformed));
    };
    if h.is_empty() || p.is_empty() {
        return Err(fault(PopFault::Malformed));
    }
    let header = decode_part(h, PopFault::MalformedHeader)?;
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some(a) if a.eq_ignore_ascii_case("none") => return Err(fault(PopFault::AlgNone)),
        Some(a) if a.to_ascii_uppercase().starts_with("HS") => {
            return Err(fault(PopFault::AlgHmac));
        }
        Some(a) => PopAlgorithm::parse(a)
            .filter(|alg| cfg.algorithms.contains(alg))
            .ok_or(fault(PopFault::AlgNotAllowed))?,
        None => return Err(fault(PopFault::AlgNotAllowed)),
    };
    match header.get("typ").and_then(Value::as_str) {
        Some(t) if t.eq_ignore_ascii_case("pop") => {}
        _ => return Err(fault(PopFault::WrongTyp)),
    }
    if HEADER_KEY_MEMBERS.iter().any(|k| header.contains_key(*k)) {
        return Err(fault(PopFault::HeaderKeyNotAllowed));
    }
    if header.contains_key("crit") {
        return Err(fault(PopFault::CritNotSupported));
    }
    if HEADER_PAYLOAD_MEMBERS
        .iter()
        .any(|k| header.contains_key(*k))
    {
        return Err(fault(PopFault::HeaderParamNotSupported));
    }
    if s.is_empty() {
        return Err(fault(PopFault::Unsigned));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| fault(PopFault::NotBase64Url))?;

    let claims = decode_part(p, PopFault::MalformedPayload)?;
    let at = match claims.get("at") {
        None | Some(Value::Null) => return Err(fault(PopFault::AtMissing)),
        Some(Value::String(a)) if !a.is_empty() => a.clone(),
        Some(_) => return Err(fault(PopFault::AtNotString)),
    };
    let ts = match claims.get("ts") {
        None | Some(Value::Null) => return Err(fault(PopFault::TsMissing)),
        Some(v) => parse_ts(v).map_err(fault)?,
    };
    if now > ts.saturating_add(cfg.lifetime.as_secs() as i64) {
        return Err(fault(PopFault::Expired));
    }
    if ts > now.saturating_add(cfg.future_skew.as_secs() as i64) {
        return Err(fault(PopFault::TsInFuture));
    }
    let m = string_claim(&claims, "m", PopFault::MethodMissing)?;
    if !m.trim().eq_ignore_ascii_case("POST") {
        return Err(fault(PopFault::WrongMethod));
    }
    let u = string_claim(&claims, "u", PopFault::HostMissing)?;
    let p_claim = string_claim(&claims, "p", PopFault::PathMissing)?;
    if !extensions.iter().any(|e| host_matches(u, &e.host)) {
        return Err(fault(PopFault::WrongHost));
    }
    let p_key = super::settings::normalize_resource(p_claim);
    let extension = extensions
        .iter()
        .position(|e| host_matches(u, &e.host) && e.resource_key == p_key)
        .ok_or(fault(PopFault::UnknownResource))?;
    match claims.get("nonce") {
        None => {}
        Some(Value::String(n)) if !n.is_empty() && n.chars().count() <= MAX_NONCE_CHARS => {}
        Some(_) => return Err(fault(PopFault::BadNonce)),
    }
    let body_hash = match claims.get("b") {
        None => None,
        Some(Value::String(b)) => Some(b.clone()),
        Some(_) => return Err(fault(PopFault::ClaimNotString)),
    };

    let cnf = match claims.get("cnf") {
        None | Some(Value::Null) => return Err(fault(PopFault::CnfMissing)),
        Some(Value::Object(c)) => c,
        Some(_) => return Err(fault(PopFault::CnfMalformed)),
    };
    // Only a key carried in the token itself: `jku` would make us fetch a key the token names,
    // `jwe` needs a shared decryption key, `kid` alone resolves to nothing.
    let jwk = match cnf.get("jwk") {
        Some(Value::Object(j)) => j,
        Some(_) => return Err(fault(PopFault::CnfMalformed)),
        None if ["jku", "jwe", "kid"].iter().any(|k| cnf.contains_key(*k)) => {
            return Err(fault(PopFault::CnfReferenceNotSupported));
        }
        None => return Err(fault(PopFault::CnfMalformed)),
    };
    let key = PopKey::from_jwk(jwk).map_err(|f| {
        fault(match f {
            KeyFault::Symmetric => PopFault::KeySymmetric,
            KeyFault::Unsupported => PopFault::KeyUnsupported,
            KeyFault::Malformed => PopFault::KeyMalformed,
            KeyFault::Weak => PopFault::KeyWeak,
            KeyFault::Private => PopFault::KeyPrivate,
        })
    })?;
    match header.get("kid") {
        None => {}
        Some(Value::String(kid)) if kid_matches(kid, key.thumbprint()) => {}
        Some(_) => return Err(fault(PopFault::KidMismatch)),
    }
    if !key.fits(alg) {
        return Err(fault(PopFault::AlgKeyMismatch));
    }
    let signing_input = &token[..h.len() + 1 + p.len()];
    Ok(Unverified {
        alg,
        header,
        at,
        ts,
        key,
        extension,
        body_hash,
        signing_input,
        signature,
    })
}

/// The access token's `cnf` must name the key that signed the request: `{"kid": thumbprint}`
/// (what Entra issues for MSAL's `req_cnf`) or `{"jwk": {...}}` with the same thumbprint.
pub fn check_binding(at_claims: &Map<String, Value>, key: &PopKey) -> Result<(), AuthError> {
    let cnf = match at_claims.get("cnf") {
        None | Some(Value::Null) => return Err(fault(PopFault::AtCnfMissing)),
        Some(Value::Object(c)) => c,
        Some(_) => return Err(fault(PopFault::AtCnfMalformed)),
    };
    let bound = match (cnf.get("kid"), cnf.get("jwk")) {
        (Some(Value::String(kid)), _) => kid.clone(),
        (None, Some(Value::Object(jwk))) => PopKey::from_jwk(jwk)
            .map_err(|_| fault(PopFault::AtCnfMalformed))?
            .thumbprint()
            .to_owned(),
        _ => return Err(fault(PopFault::AtCnfMalformed)),
    };
    if bound != key.thumbprint() {
        return Err(fault(PopFault::BindingMismatch));
    }
    Ok(())
}

/// base64url SHA-256 of a body, as the `b` claim carries it.
pub fn body_hash(body: &[u8]) -> String {
    use sha2::Digest as _;
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_and_case_variants() {
        assert!(host_matches("management.azure.com", "management.azure.com"));
        assert!(host_matches("Management.Azure.COM", "management.azure.com"));
        assert!(host_matches(
            "management.azure.com:443",
            "management.azure.com"
        ));
        assert!(!host_matches(
            "management.azure.com:8443",
            "management.azure.com"
        ));
        assert!(!host_matches(
            "management.azure.com.evil.com",
            "management.azure.com"
        ));
        assert!(!host_matches(
            "evilmanagement.azure.com",
            "management.azure.com"
        ));
        assert!(!host_matches(
            "management.azure.com/",
            "management.azure.com"
        ));
        assert!(!host_matches(
            " management.azure.com",
            "management.azure.com"
        ));
        // The byte where the host ends may fall inside a multi-byte character: no panic.
        assert!(!host_matches(
            "management.azure.coé443",
            "management.azure.com"
        ));
        assert!(!host_matches(
            "management.azure.comé44",
            "management.azure.com"
        ));
    }

    #[test]
    fn ts_shapes() {
        use PopFault::{TsInvalid, TsNotInteger};
        assert_eq!(
            parse_ts(&serde_json::json!(1_700_000_000)),
            Ok(1_700_000_000)
        );
        assert_eq!(
            parse_ts(&serde_json::json!("1700000000")),
            Err(TsNotInteger)
        );
        assert_eq!(parse_ts(&serde_json::json!(1.5)), Err(TsNotInteger));
        assert_eq!(
            parse_ts(&serde_json::json!(1_700_000_000.0)),
            Err(TsNotInteger)
        );
        assert_eq!(parse_ts(&serde_json::json!(true)), Err(TsNotInteger));
        assert_eq!(parse_ts(&serde_json::json!(-5)), Err(TsInvalid));
        assert_eq!(parse_ts(&serde_json::json!(u64::MAX)), Err(TsInvalid));
        assert_eq!(parse_ts(&serde_json::json!("17e8")), Err(TsNotInteger));
    }

    #[test]
    fn kid_forms() {
        let tp = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
        assert!(kid_matches(tp, tp));
        let wrapped = URL_SAFE_NO_PAD.encode(format!(r#"{{"kid":"{tp}"}}"#));
        assert!(kid_matches(&wrapped, tp));
        let other = URL_SAFE_NO_PAD.encode(r#"{"kid":"x"}"#);
        assert!(!kid_matches(&other, tp));
        assert!(!kid_matches("x", tp));
    }
}
