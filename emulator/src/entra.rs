//! Entra ID stand-in: RSA signing keys, OpenID metadata (v1 and v2), JWKS, the
//! client-credentials token endpoint, the device code sign-in of an emulated administrator
//! (delegated Graph tokens with `scp`, for `accessgate setup`), and minting of the bearer
//! tokens Entra attaches to custom-extension callouts.
//!
//! Why: accessgate validates callout tokens against the tenant's published keys and obtains
//! Graph tokens with client credentials; both need an issuer it can reach locally. Tokens are
//! compact JWS built by hand (RS256 by default; PS256 and friends on request) with
//! `kid` = RFC 7638 thumbprint of the JWK. Token and secret values are never logged.

use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{self, KeyPair as _, RsaEncoding, RsaPublicKeyComponents};
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use crate::faults::{self, FaultTarget};
use crate::state::{AppState, KeySlot, Shared};

/// First-party app id of "Azure AD Identity Governance - Entitlement Management", the `appid`
/// (v1) / `azp` (v2) of callout tokens.
pub const ELM_APP_ID: &str = "810dcf14-1858-4bf2-8134-4c369fa3235b";
/// Default audience of callout tokens.
pub const DEFAULT_CALLOUT_AUDIENCE: &str = "api://accessgate";
/// Audience of Graph tokens.
pub const GRAPH_AUDIENCE: &str = "https://graph.microsoft.com";
/// Well-known app id of Microsoft Graph (accepted as audience too).
pub const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";
/// The application role the Graph tokens carry.
pub const GRAPH_ROLE: &str = "EntitlementManagement.ReadWrite.All";
/// Audience of Key Vault tokens.
pub const VAULT_AUDIENCE: &str = "https://vault.azure.net";
/// Audience of Storage tokens.
pub const STORAGE_AUDIENCE: &str = "https://storage.azure.com";
/// Audience of federated (workload identity) tokens.
pub const FEDERATION_AUDIENCE: &str = "api://AzureADTokenExchange";
/// `client_assertion_type` of RFC 7523 client assertions.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Lifetime of Graph tokens, as Entra reports it.
pub const GRAPH_TOKEN_LIFETIME_SECS: i64 = 3599;
/// `grant_type` of the device authorization grant (RFC 8628) at the token endpoint.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// Object id of the emulated administrator who signs in with a device code (the `oid` of
/// delegated Graph tokens).
pub const DEVICE_USER_OBJECT_ID: &str = "dddddddd-0000-0000-0000-00000000ad01";
/// User principal name of that administrator.
pub const DEVICE_USER_UPN: &str = "admin@accessgate-emulator.example";
/// Seconds a device code stays valid, as Entra reports it.
pub const DEVICE_CODE_LIFETIME_SECS: u64 = 900;
/// Scopes of a sign-in that grant nothing on Graph (OpenID Connect and refresh tokens).
const OIDC_SCOPES: [&str; 4] = ["openid", "profile", "offline_access", "email"];
/// What the administrator consents to when a device code asks for
/// `https://graph.microsoft.com/.default` and no `PUT /_emulator/device-user` limits it.
pub const DEVICE_USER_DEFAULT_SCOPES: [&str; 6] = [
    "EntitlementManagement.ReadWrite.All",
    "LifecycleWorkflows.ReadWrite.All",
    "PrivilegedAccess-CustomExt.ReadWrite.All",
    "Application.ReadWrite.All",
    "AppRoleAssignment.ReadWrite.All",
    "Directory.Read.All",
];

/// An RSA-2048 signing key with its public JWK members precomputed.
pub struct SigningKey {
    kid: String,
    pair: KeyPair,
    n: Vec<u8>,
    e: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a fresh RSA-2048 key (tens of milliseconds: call from a blocking context).
    pub fn generate() -> anyhow::Result<Self> {
        let pair = KeyPair::generate(KeySize::Rsa2048)
            .map_err(|_| anyhow!("RSA key generation failed"))?;
        let public = pair.public_key();
        let n = public.modulus().big_endian_without_leading_zero().to_vec();
        let e = public.exponent().big_endian_without_leading_zero().to_vec();
        let kid = jwk_thumbprint(&b64url(&n), &b64url(&e));
        Ok(Self { kid, pair, n, e })
    }

    /// RFC 7638 thumbprint of the public JWK; also used as `x5t`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as published in the JWKS.
    pub fn jwk(&self) -> Value {
        json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": b64url(&self.n),
            "e": b64url(&self.e),
        })
    }

    fn sign(&self, alg: &str, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        let encoding: &'static dyn RsaEncoding = match alg {
            "RS256" => &signature::RSA_PKCS1_SHA256,
            "RS384" => &signature::RSA_PKCS1_SHA384,
            "RS512" => &signature::RSA_PKCS1_SHA512,
            "PS256" => &signature::RSA_PSS_SHA256,
            "PS384" => &signature::RSA_PSS_SHA384,
            "PS512" => &signature::RSA_PSS_SHA512,
            other => bail!("unsupported alg {other:?} (RS256/384/512, PS256/384/512 or none)"),
        };
        let mut sig = vec![0u8; self.pair.public_modulus_len()];
        self.pair
            .sign(encoding, &SystemRandom::new(), message, &mut sig)
            .map_err(|_| anyhow!("RSA signing failed"))?;
        Ok(sig)
    }

    fn verify_rs256(&self, message: &[u8], sig: &[u8]) -> bool {
        RsaPublicKeyComponents {
            n: &self.n,
            e: &self.e,
        }
        .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
        .is_ok()
    }
}

/// base64url without padding.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7638 thumbprint of an RSA JWK given its base64url `n` and `e`.
pub fn jwk_thumbprint(n: &str, e: &str) -> String {
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    b64url(&Sha256::digest(canonical.as_bytes()))
}

/// Token version of a minted callout token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IssuerVersion {
    /// `iss` = `{base}/{tenant}/`, `appid`, `ver` "1.0" (what Entra sends to ELM extensions).
    #[default]
    V1,
    /// `iss` = `{base}/{tenant}/v2.0`, `azp`, `ver` "2.0".
    V2,
}

/// Which key signs a minted token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignWith {
    /// The current published key.
    #[default]
    Current,
    /// A key that is never published in the JWKS.
    Unknown,
}

/// Options of `POST /_emulator/tokens/callout` and [`crate::Emulator::mint_callout_token`];
/// every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MintOptions {
    /// `aud`; default `api://accessgate`.
    pub audience: Option<String>,
    /// `appid` (v1) / `azp` (v2); default the ELM first-party app id.
    pub app_id: Option<String>,
    pub issuer_version: Option<IssuerVersion>,
    /// Overrides `tid` and the tenant in `iss`.
    pub tenant_id: Option<String>,
    /// Overrides `iss` verbatim.
    pub issuer: Option<String>,
    /// Default 3600; negative gives an already expired token.
    pub expires_in_secs: Option<i64>,
    /// `nbf` relative to now; default -300.
    pub not_before_offset_secs: Option<i64>,
    /// Header `kid` (and `x5t`) override.
    pub kid: Option<String>,
    pub sign_with: Option<SignWith>,
    /// Flip a byte of the signature.
    pub tamper_signature: bool,
    /// JWS `alg`: RS256 (default), RS384, RS512, PS256, PS384, PS512, or `none` (no signature).
    pub alg: Option<String>,
    /// Extension: claims merged into the payload last; a `null` value removes the claim.
    pub extra_claims: Option<Map<String, Value>>,
}

/// Mints a callout token (see [`MintOptions`]).
pub(crate) fn mint_callout_token(state: &Shared, opts: &MintOptions) -> anyhow::Result<String> {
    let now = jiff::Timestamp::now().as_second();
    let tenant = opts
        .tenant_id
        .clone()
        .unwrap_or_else(|| state.cfg.tenant_id.clone());
    let version = opts.issuer_version.unwrap_or_default();
    let issuer = opts.issuer.clone().unwrap_or_else(|| match version {
        IssuerVersion::V1 => state.issuer_v1(&tenant),
        IssuerVersion::V2 => state.issuer_v2(&tenant),
    });
    let app_id = opts.app_id.clone().unwrap_or_else(|| ELM_APP_ID.to_owned());
    let exp = now + opts.expires_in_secs.unwrap_or(3600);
    let nbf = now + opts.not_before_offset_secs.unwrap_or(-300);

    let mut claims = Map::new();
    claims.insert(
        "aud".into(),
        json!(
            opts.audience
                .clone()
                .unwrap_or_else(|| DEFAULT_CALLOUT_AUDIENCE.to_owned())
        ),
    );
    claims.insert("iss".into(), json!(issuer));
    claims.insert("iat".into(), json!(now));
    claims.insert("nbf".into(), json!(nbf));
    claims.insert("exp".into(), json!(exp));
    claims.insert("aio".into(), json!(random_opaque()));
    match version {
        IssuerVersion::V1 => {
            claims.insert("appid".into(), json!(app_id));
            claims.insert("appidacr".into(), json!("2"));
            claims.insert("idp".into(), json!(state.issuer_v1(&tenant)));
        }
        IssuerVersion::V2 => {
            claims.insert("azp".into(), json!(app_id));
            claims.insert("azpacr".into(), json!("2"));
        }
    }
    claims.insert("idtyp".into(), json!("app"));
    claims.insert("oid".into(), json!(state.elm_object_id));
    claims.insert("rh".into(), json!(random_opaque()));
    claims.insert("sub".into(), json!(state.elm_object_id));
    claims.insert("tid".into(), json!(tenant));
    claims.insert("uti".into(), json!(random_opaque()));
    claims.insert(
        "ver".into(),
        json!(match version {
            IssuerVersion::V1 => "1.0",
            IssuerVersion::V2 => "2.0",
        }),
    );
    if let Some(extra) = &opts.extra_claims {
        for (name, value) in extra {
            if value.is_null() {
                claims.shift_remove(name);
            } else {
                claims.insert(name.clone(), value.clone());
            }
        }
    }

    let key = match opts.sign_with.unwrap_or_default() {
        SignWith::Current => state
            .lock()
            .current_key()
            .context("no signing key (internal error)")?,
        SignWith::Unknown => state.unknown_key.clone(),
    };
    encode_jws(
        &key,
        opts.alg.as_deref().unwrap_or("RS256"),
        opts.kid.as_deref(),
        &Value::Object(claims),
        opts.tamper_signature,
    )
}

/// See [`crate::Emulator::sign_as_tenant`].
pub(crate) fn sign_as_tenant(
    state: &Shared,
    signing_input: &str,
) -> anyhow::Result<(String, String)> {
    let key = state
        .lock()
        .current_key()
        .context("no signing key (internal error)")?;
    let sig = key.sign("RS256", signing_input.as_bytes())?;
    Ok((b64url(&sig), key.kid().to_owned()))
}

/// The audience of a resource (v1 `resource`, managed identity `resource`), or `None` when the
/// emulator issues no tokens for it.
pub fn audience_of_resource(resource: &str) -> Option<&'static str> {
    match resource.trim_end_matches('/') {
        "https://graph.microsoft.com" | GRAPH_APP_ID => Some(GRAPH_AUDIENCE),
        "https://vault.azure.net" => Some(VAULT_AUDIENCE),
        "https://storage.azure.com" => Some(STORAGE_AUDIENCE),
        "https://management.azure.com" => Some(crate::arm::ARM_AUDIENCE),
        _ => None,
    }
}

/// The audience of a v2 `scope` (`{resource}/.default`).
pub fn audience_of_scope(scope: &str) -> Option<&'static str> {
    scope
        .split_whitespace()
        .find_map(|s| s.strip_suffix("/.default").and_then(audience_of_resource))
}

/// Mints a Graph access token for `client_id` (v1-style claims, as Entra issues them for
/// `https://graph.microsoft.com/.default`).
pub(crate) fn mint_graph_token(state: &Shared, client_id: &str) -> anyhow::Result<String> {
    mint_access_token(state, client_id, GRAPH_AUDIENCE)
}

/// Mints an app-only access token for the principal `client_id` and `audience`: Graph tokens
/// carry the principal's Graph permissions as `roles`; Key Vault and Storage tokens no roles.
pub(crate) fn mint_access_token(
    state: &Shared,
    client_id: &str,
    audience: &str,
) -> anyhow::Result<String> {
    let now = jiff::Timestamp::now().as_second();
    let tenant = &state.cfg.tenant_id;
    let (principal, key) = {
        let inner = state.lock();
        let principal = inner
            .principals
            .get(client_id)
            .cloned()
            .with_context(|| format!("unknown principal {client_id}"))?;
        let key = inner
            .current_key()
            .context("no signing key (internal error)")?;
        (principal, key)
    };
    let mut claims = Map::new();
    claims.insert("aud".into(), json!(audience));
    claims.insert("iss".into(), json!(state.issuer_v1(tenant)));
    claims.insert("iat".into(), json!(now - 300));
    claims.insert("nbf".into(), json!(now - 300));
    claims.insert("exp".into(), json!(now + GRAPH_TOKEN_LIFETIME_SECS));
    claims.insert("aio".into(), json!(random_opaque()));
    claims.insert("app_displayname".into(), json!("accessgate"));
    claims.insert("appid".into(), json!(client_id));
    claims.insert(
        "appidacr".into(),
        json!(match principal.kind {
            crate::principals::PrincipalKind::Application => "1",
            _ => "2",
        }),
    );
    claims.insert("idp".into(), json!(state.issuer_v1(tenant)));
    claims.insert("idtyp".into(), json!("app"));
    claims.insert("oid".into(), json!(principal.object_id));
    claims.insert("rh".into(), json!(random_opaque()));
    if audience == GRAPH_AUDIENCE && !principal.graph_permissions.is_empty() {
        claims.insert("roles".into(), json!(principal.graph_permissions));
    }
    claims.insert("sub".into(), json!(principal.object_id));
    claims.insert("tenant_region_scope".into(), json!("EU"));
    claims.insert("tid".into(), json!(tenant));
    claims.insert("uti".into(), json!(random_opaque()));
    claims.insert("ver".into(), json!("1.0"));
    encode_jws(&key, "RS256", None, &Value::Object(claims), false)
}

/// `iss` of the emulated Kubernetes service-account tokens.
pub(crate) fn federation_issuer(state: &Shared) -> String {
    format!("{}/workload-identity", state.base_url)
}

/// Mints a projected service-account token as Kubernetes writes it to
/// `AZURE_FEDERATED_TOKEN_FILE` (signed by the current Entra key; `kid` in the header).
pub(crate) fn mint_federated_token(
    state: &Shared,
    expires_in_secs: i64,
    subject: Option<&str>,
) -> anyhow::Result<String> {
    let now = jiff::Timestamp::now().as_second();
    let claims = json!({
        "aud": [FEDERATION_AUDIENCE],
        "exp": now + expires_in_secs,
        "iat": now,
        "nbf": now,
        "iss": federation_issuer(state),
        "sub": subject.unwrap_or(&state.cfg.federated_subject),
        "kubernetes.io": {
            "namespace": "accessgate",
            "serviceaccount": {"name": "accessgate", "uid": uuid::Uuid::new_v4()},
        },
    });
    let key = state
        .lock()
        .current_key()
        .context("no signing key (internal error)")?;
    encode_jws(&key, "RS256", None, &claims, false)
}

fn encode_jws(
    key: &SigningKey,
    alg: &str,
    kid_override: Option<&str>,
    claims: &Value,
    tamper: bool,
) -> anyhow::Result<String> {
    let kid = kid_override.unwrap_or(key.kid());
    let header = if alg == "none" {
        json!({"typ": "JWT", "alg": "none"})
    } else {
        json!({"typ": "JWT", "alg": alg, "x5t": kid, "kid": kid})
    };
    let signing_input = format!(
        "{}.{}",
        b64url(&serde_json::to_vec(&header)?),
        b64url(&serde_json::to_vec(claims)?)
    );
    let mut sig = if alg == "none" {
        Vec::new()
    } else {
        key.sign(alg, signing_input.as_bytes())?
    };
    if tamper {
        match sig.get_mut(10) {
            Some(byte) => *byte ^= 0x01,
            None => sig.push(0),
        }
    }
    Ok(format!("{signing_input}.{}", b64url(&sig)))
}

fn random_opaque() -> String {
    b64url(uuid::Uuid::new_v4().as_bytes())
}

/// Why a Graph bearer token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum TokenError {
    #[error("Access token is empty.")]
    Missing,
    #[error("Access token validation failure. {0}")]
    Invalid(String),
    #[error("Lifetime validation failed, the token is expired.")]
    Expired,
}

/// The authenticated caller of a Graph or Key Vault route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    /// `appid` (v1) or `azp` (v2).
    pub client_id: String,
    pub oid: String,
    pub roles: Vec<String>,
    /// Delegated scopes (the space-separated `scp` claim); empty for app-only tokens.
    pub scp: Vec<String>,
}

impl Caller {
    /// Whether the token carries one of `permissions` as an application role or a delegated
    /// scope.
    pub fn holds(&self, permissions: &[&str]) -> bool {
        self.roles
            .iter()
            .chain(&self.scp)
            .any(|p| permissions.contains(&p.as_str()))
    }

    /// An app-only token (no delegated scopes).
    pub fn is_app_only(&self) -> bool {
        self.scp.is_empty()
    }
}

/// Decoded parts of a compact JWS (no verification).
pub(crate) struct Jws<'a> {
    pub header: Value,
    pub claims: Value,
    pub signing_input: &'a str,
    pub signature: Vec<u8>,
}

/// Splits and decodes a compact JWS; the error says what is malformed.
pub(crate) fn decode_jws(token: &str) -> Result<Jws<'_>, &'static str> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("Invalid JWT token. The token is not in JWS compact format.");
    };
    let decode_json = |part: &str| -> Option<Value> {
        URL_SAFE_NO_PAD
            .decode(part)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
    };
    let header = decode_json(h).ok_or("Invalid JWT header.")?;
    let claims = decode_json(p).ok_or("Invalid JWT payload.")?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| "Invalid signature encoding.")?;
    let signing_input = token
        .get(..h.len() + 1 + p.len())
        .ok_or("Invalid JWT token.")?;
    Ok(Jws {
        header,
        claims,
        signing_input,
        signature,
    })
}

/// The bearer token of an `Authorization` header, if any.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Some(token.trim())
        }
        _ => None,
    }
}

/// Validates an access token minted by this emulator: RS256 signature by a published key,
/// issuer, one of `audiences`, tenant and lifetime.
pub(crate) fn verify_access_token(
    state: &Shared,
    headers: &HeaderMap,
    audiences: &[&str],
) -> Result<Caller, TokenError> {
    let token = bearer_token(headers).ok_or(TokenError::Missing)?;
    let invalid = |why: &str| TokenError::Invalid(why.to_owned());
    let jws = decode_jws(token).map_err(invalid)?;
    let (header, claims) = (&jws.header, &jws.claims);
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(invalid("Invalid signing algorithm."));
    }
    let kid = header.get("kid").and_then(Value::as_str).unwrap_or("");
    let keys = state.lock().published_keys();
    let key = keys
        .iter()
        .find(|k| k.kid() == kid)
        .ok_or_else(|| invalid("Invalid signature: signing key not found."))?;
    if !key.verify_rs256(jws.signing_input.as_bytes(), &jws.signature) {
        return Err(invalid("Invalid signature."));
    }
    let claim = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or("");
    if !audiences.contains(&claim("aud")) {
        return Err(invalid("Invalid audience."));
    }
    let tenant = &state.cfg.tenant_id;
    if claim("iss") != state.issuer_v1(tenant) && claim("iss") != state.issuer_v2(tenant) {
        return Err(invalid("Invalid issuer."));
    }
    if claim("tid") != tenant.as_str() {
        return Err(invalid("Invalid tenant."));
    }
    let now = jiff::Timestamp::now().as_second();
    let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    let nbf = claims.get("nbf").and_then(Value::as_i64).unwrap_or(0);
    if exp <= now - 300 || nbf > now + 300 {
        return Err(TokenError::Expired);
    }
    let client_id = match claim("appid") {
        "" => claim("azp"),
        id => id,
    }
    .to_owned();
    let roles = claims
        .get("roles")
        .and_then(Value::as_array)
        .map(|roles| {
            roles
                .iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let scp = claim("scp").split_whitespace().map(str::to_owned).collect();
    Ok(Caller {
        client_id,
        oid: claim("oid").to_owned(),
        roles,
        scp,
    })
}

/// Validates a Graph bearer token minted by this emulator for a known principal or the emulated
/// administrator (see [`verify_access_token`]); authorization is the caller's business.
pub(crate) fn verify_graph_token(
    state: &Shared,
    headers: &HeaderMap,
) -> Result<Caller, TokenError> {
    let caller = verify_access_token(
        state,
        headers,
        &[
            "https://graph.microsoft.com",
            "https://graph.microsoft.com/",
            GRAPH_APP_ID,
        ],
    )?;
    // The emulated administrator of device code sign-ins is a user, not a service principal.
    if caller.oid != DEVICE_USER_OBJECT_ID && state.lock().principal_by_oid(&caller.oid).is_none() {
        return Err(TokenError::Invalid(
            "Invalid principal: the token's oid is not a service principal of the tenant.".into(),
        ));
    }
    Ok(caller)
}

/// Replaces the client secret the Graph app accepts.
pub(crate) fn set_client_secret(state: &Shared, secret: &str) -> anyhow::Result<()> {
    if secret.is_empty() {
        bail!("the client secret must not be empty");
    }
    secret.clone_into(&mut state.lock().client_secret);
    tracing::info!("Graph app client secret rotated");
    Ok(())
}

/// Generates a new current key; the previous keys stay published unless `retire_old`.
pub(crate) async fn rotate_keys(state: &AppState, retire_old: bool) -> anyhow::Result<String> {
    let key = tokio::task::spawn_blocking(SigningKey::generate)
        .await
        .context("key generation task")??;
    let kid = key.kid().to_owned();
    let mut inner = state.lock();
    if retire_old {
        for slot in &mut inner.keys {
            slot.published = false;
        }
    }
    inner.keys.push(KeySlot {
        key: Arc::new(key),
        published: true,
    });
    tracing::info!(%kid, retire_old, "signing key rotated");
    Ok(kid)
}

/// Entra routes: metadata, JWKS, token endpoints.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/{tenant}/.well-known/openid-configuration",
            get(metadata_v1),
        )
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(metadata_v2),
        )
        .route("/{tenant}/discovery/keys", get(jwks))
        .route("/{tenant}/discovery/v2.0/keys", get(jwks))
        .route("/{tenant}/oauth2/token", post(token_v1))
        .route("/{tenant}/oauth2/v2.0/token", post(token_v2))
        .route("/{tenant}/oauth2/v2.0/devicecode", post(device_code))
}

fn entra_error(status: StatusCode, error: &str, code: u32, description: &str) -> Response {
    let body = json!({
        "error": error,
        "error_description": format!(
            "AADSTS{code}: {description} Trace ID: {} Correlation ID: {} Timestamp: {}",
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
            jiff::Timestamp::now(),
        ),
        "error_codes": [code],
        "timestamp": jiff::Timestamp::now().to_string(),
        "trace_id": uuid::Uuid::new_v4(),
        "correlation_id": uuid::Uuid::new_v4(),
    });
    (status, Json(body)).into_response()
}

fn unknown_tenant(tenant: &str) -> Response {
    entra_error(
        StatusCode::BAD_REQUEST,
        "invalid_tenant",
        90002,
        &format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID."),
    )
}

async fn metadata_v1(State(state): State<AppState>, Path(tenant): Path<String>) -> Response {
    metadata(&state, &tenant, false).await
}

async fn metadata_v2(State(state): State<AppState>, Path(tenant): Path<String>) -> Response {
    metadata(&state, &tenant, true).await
}

async fn metadata(state: &AppState, tenant: &str, v2: bool) -> Response {
    state.lock().stats.metadata_fetches += 1;
    if let Some(resp) = faults::apply(state, FaultTarget::Metadata).await {
        return resp;
    }
    if tenant != state.cfg.tenant_id {
        return unknown_tenant(tenant);
    }
    let base = format!("{}/{tenant}", state.base_url);
    let doc = if v2 {
        json!({
            "token_endpoint": format!("{base}/oauth2/v2.0/token"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("{base}/discovery/v2.0/keys"),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": state.issuer_v2(tenant),
            "request_uri_parameter_supported": false,
            "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
            "end_session_endpoint": format!("{base}/oauth2/v2.0/logout"),
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
        })
    } else {
        json!({
            "token_endpoint": format!("{base}/oauth2/token"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("{base}/discovery/keys"),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
            "scopes_supported": ["openid"],
            "issuer": state.issuer_v1(tenant),
            "microsoft_multi_refresh_token": true,
            "authorization_endpoint": format!("{base}/oauth2/authorize"),
            "end_session_endpoint": format!("{base}/oauth2/logout"),
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
        })
    };
    Json(doc).into_response()
}

async fn jwks(State(state): State<AppState>, Path(tenant): Path<String>) -> Response {
    state.lock().stats.jwks_fetches += 1;
    if let Some(resp) = faults::apply(&state, FaultTarget::Jwks).await {
        return resp;
    }
    if tenant != state.cfg.tenant_id {
        return unknown_tenant(&tenant);
    }
    let keys: Vec<Value> = state
        .lock()
        .published_keys()
        .iter()
        .map(|k| k.jwk())
        .collect();
    Json(json!({ "keys": keys })).into_response()
}

/// Form of the token endpoints (v2 uses `scope`, v1 uses `resource`).
#[derive(Debug, Default, Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
    resource: Option<String>,
    client_assertion: Option<String>,
    client_assertion_type: Option<String>,
    device_code: Option<String>,
}

async fn token_v1(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    token(&state, &tenant, &headers, form, false).await
}

async fn token_v2(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    token(&state, &tenant, &headers, form, true).await
}

async fn token(
    state: &AppState,
    tenant: &str,
    headers: &HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
    v2: bool,
) -> Response {
    state.lock().stats.token_requests += 1;
    if let Some(resp) = faults::apply(state, FaultTarget::Token).await {
        return resp;
    }
    if tenant != state.cfg.tenant_id {
        return unknown_tenant(tenant);
    }
    let Ok(Form(form)) = form else {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'.",
        );
    };
    // client_secret_basic: credentials in the Authorization header.
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| {
            pair.split_once(':')
                .map(|(id, secret)| (id.to_owned(), secret.to_owned()))
        });
    let (client_id, client_secret) = match (&form.client_id, &form.client_secret, basic) {
        (_, _, Some((id, secret))) => (Some(id), Some(secret)),
        (id, secret, None) => (id.clone(), secret.clone()),
    };

    match form.grant_type.as_deref() {
        Some("client_credentials") => {}
        Some(DEVICE_CODE_GRANT) if v2 => return redeem_device_code(state, &form),
        None => {
            return entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'grant_type'.",
            );
        }
        Some(_) => {
            return entra_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant type. The emulator supports 'client_credentials', and the device code grant at the v2 endpoint.",
            );
        }
    }
    let Some(client_id) = client_id.filter(|id| !id.is_empty()) else {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        );
    };
    if !state.lock().principals.contains_key(&client_id) {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'."
            ),
        );
    }
    let credential = match (form.client_assertion.as_deref(), client_secret.as_deref()) {
        (Some(assertion), _) if !assertion.is_empty() => {
            if form.client_assertion_type.as_deref() != Some(CLIENT_ASSERTION_TYPE) {
                return entra_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    50027,
                    &format!("Invalid client_assertion_type: expected '{CLIENT_ASSERTION_TYPE}'."),
                );
            }
            check_client_assertion(state, tenant, &client_id, assertion)
        }
        (_, None | Some("")) => Err(entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000216,
            "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type.",
        )),
        (_, Some(secret)) => {
            let accepted = client_id == state.cfg.graph_client_id && {
                let inner = state.lock();
                constant_time_eq(secret.as_bytes(), inner.client_secret.as_bytes())
            };
            if accepted {
                Ok(())
            } else {
                Err(entra_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000215,
                    &format!(
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                    ),
                ))
            }
        }
    };
    if let Err(resp) = credential {
        return resp;
    }
    let audience = if v2 {
        form.scope.as_deref().and_then(audience_of_scope)
    } else {
        form.resource.as_deref().and_then(audience_of_resource)
    };
    let Some(audience) = audience else {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            "The provided value for scope/resource is not valid. The emulator issues tokens only for https://graph.microsoft.com/.default, https://vault.azure.net/.default and https://storage.azure.com/.default.",
        );
    };
    match mint_access_token(state, &client_id, audience) {
        Ok(access_token) => {
            tracing::debug!(%client_id, %audience, "issued access token");
            let mut body = json!({
                "token_type": "Bearer",
                "expires_in": GRAPH_TOKEN_LIFETIME_SECS,
                "ext_expires_in": GRAPH_TOKEN_LIFETIME_SECS,
                "access_token": access_token,
            });
            if !v2 {
                let now = jiff::Timestamp::now().as_second();
                if let Some(obj) = body.as_object_mut() {
                    obj.insert(
                        "expires_on".into(),
                        json!((now + GRAPH_TOKEN_LIFETIME_SECS).to_string()),
                    );
                    obj.insert("resource".into(), json!(audience));
                }
            }
            (
                StatusCode::OK,
                [(header::CACHE_CONTROL, "no-store, no-cache")],
                Json(body),
            )
                .into_response()
        }
        Err(err) => {
            tracing::error!(error = %err, "minting an access token failed");
            entra_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                50000,
                "There was an error issuing a token.",
            )
        }
    }
}

/// A device code waiting to be redeemed (RFC 8628, as Entra's `/devicecode` issues them).
#[derive(Debug, Clone)]
pub(crate) struct DeviceCode {
    pub client_id: String,
    /// Graph scopes asked for, without the resource prefix and the OpenID Connect scopes.
    pub scopes: Vec<String>,
    /// `https://graph.microsoft.com/.default` was asked for.
    pub default_scope: bool,
    /// Token requests so far; the first one is answered `authorization_pending`.
    pub polls: u32,
    pub expires: std::time::Instant,
}

/// Form of `POST /{tenant}/oauth2/v2.0/devicecode`.
#[derive(Debug, Default, Deserialize)]
struct DeviceCodeForm {
    client_id: Option<String>,
    scope: Option<String>,
}

/// The Graph scopes of a `scope` parameter, without `https://graph.microsoft.com/` (or the
/// Graph app id) and without the OpenID Connect scopes, and whether `.default` was among them.
/// The error is the first scope of another resource.
fn graph_scopes(scope: &str) -> Result<(Vec<String>, bool), String> {
    let mut scopes: Vec<String> = Vec::new();
    let mut default_scope = false;
    for s in scope.split_whitespace() {
        if OIDC_SCOPES.iter().any(|o| o.eq_ignore_ascii_case(s)) {
            continue;
        }
        let name = s
            .strip_prefix("https://graph.microsoft.com/")
            .or_else(|| s.strip_prefix(&format!("{GRAPH_APP_ID}/")))
            .unwrap_or(s);
        if name.contains('/') || name.contains(':') {
            return Err(s.to_owned());
        }
        if name == ".default" {
            default_scope = true;
        } else if !scopes.iter().any(|k| k.eq_ignore_ascii_case(name)) {
            scopes.push(name.to_owned());
        }
    }
    Ok((scopes, default_scope))
}

/// Eight upper-case letters, as Entra's user codes look.
fn user_code() -> String {
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(8)
        .map(|b| char::from(b'A' + b % 26))
        .collect()
}

/// `POST /{tenant}/oauth2/v2.0/devicecode`: starts a device code sign-in of the emulated
/// administrator, who "signs in" by itself before the second poll.
async fn device_code(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    form: Result<Form<DeviceCodeForm>, FormRejection>,
) -> Response {
    state.lock().stats.token_requests += 1;
    if let Some(resp) = faults::apply(&state, FaultTarget::Token).await {
        return resp;
    }
    if tenant != state.cfg.tenant_id {
        return unknown_tenant(&tenant);
    }
    let form = form.map(|Form(f)| f).unwrap_or_default();
    let Some(client_id) = form.client_id.filter(|c| !c.is_empty()) else {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        );
    };
    let Some(scope) = form.scope.filter(|s| !s.trim().is_empty()) else {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'scope'.",
        );
    };
    let (scopes, default_scope) = match graph_scopes(&scope) {
        Ok(s) => s,
        Err(other) => {
            return entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                70011,
                &format!(
                    "The provided value for the input parameter 'scope' is not valid. The emulator's device code sign-in issues Microsoft Graph tokens only, not '{other}'."
                ),
            );
        }
    };
    let code = format!("{}{}", random_opaque(), random_opaque());
    let user = user_code();
    state.lock().device_codes.insert(
        code.clone(),
        DeviceCode {
            client_id,
            scopes,
            default_scope,
            polls: 0,
            expires: std::time::Instant::now()
                + std::time::Duration::from_secs(DEVICE_CODE_LIFETIME_SECS),
        },
    );
    let uri = format!("{}/_emulator/device", state.base_url);
    Json(json!({
        "device_code": code,
        "user_code": user,
        "verification_uri": uri,
        "expires_in": DEVICE_CODE_LIFETIME_SECS,
        "interval": 1,
        "message": format!(
            "To sign in, use a web browser to open the page {uri} and enter the code {user} to authenticate."
        ),
    }))
    .into_response()
}

/// The token request of a device code: `authorization_pending` at the first poll, then the
/// administrator's delegated Graph token (once; the code is spent).
fn redeem_device_code(state: &Shared, form: &TokenForm) -> Response {
    let code = form.device_code.as_deref().unwrap_or("");
    let mut inner = state.lock();
    let now = std::time::Instant::now();
    let Some(entry) = inner.device_codes.get_mut(code) else {
        drop(inner);
        return entra_error(
            StatusCode::BAD_REQUEST,
            "bad_verification_code",
            70019,
            "Verification code is unknown or was already redeemed.",
        );
    };
    if entry.expires <= now {
        inner.device_codes.remove(code);
        drop(inner);
        return entra_error(
            StatusCode::BAD_REQUEST,
            "expired_token",
            70020,
            "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
        );
    }
    if form
        .client_id
        .as_deref()
        .is_some_and(|c| !c.eq_ignore_ascii_case(&entry.client_id))
    {
        drop(inner);
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            70000,
            "The device code was issued to another client.",
        );
    }
    entry.polls += 1;
    if entry.polls == 1 {
        drop(inner);
        return entra_error(
            StatusCode::BAD_REQUEST,
            "authorization_pending",
            70016,
            "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
        );
    }
    let Some(entry) = inner.device_codes.remove(code) else {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "bad_verification_code",
            70019,
            "Verification code is unknown or was already redeemed.",
        );
    };
    let allowed = inner.device_user_scopes.clone();
    drop(inner);
    let mut requested = entry.scopes.clone();
    if entry.default_scope {
        let consented: Vec<String> = allowed.clone().unwrap_or_else(|| {
            DEVICE_USER_DEFAULT_SCOPES
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        });
        for s in consented {
            if !requested.iter().any(|r| r.eq_ignore_ascii_case(&s)) {
                requested.push(s);
            }
        }
    }
    let scp: Vec<String> = requested
        .into_iter()
        .filter(|s| {
            allowed
                .as_ref()
                .is_none_or(|a| a.iter().any(|x| x.eq_ignore_ascii_case(s)))
        })
        .collect();
    match mint_user_token(state, &entry.client_id, &scp) {
        Ok(access_token) => {
            tracing::debug!(client_id = %entry.client_id, scopes = %scp.join(" "), "issued delegated Graph token");
            (
                StatusCode::OK,
                [(header::CACHE_CONTROL, "no-store, no-cache")],
                Json(json!({
                    "token_type": "Bearer",
                    "scope": scp.iter().map(|s| format!("{GRAPH_AUDIENCE}/{s}")).collect::<Vec<_>>().join(" "),
                    "expires_in": GRAPH_TOKEN_LIFETIME_SECS,
                    "ext_expires_in": GRAPH_TOKEN_LIFETIME_SECS,
                    "access_token": access_token,
                })),
            )
                .into_response()
        }
        Err(err) => {
            tracing::error!(error = %err, "minting a delegated token failed");
            entra_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                50000,
                "There was an error issuing a token.",
            )
        }
    }
}

/// A delegated Graph token of the emulated administrator for `client_id` (v1 claims, `scp`,
/// `idtyp` "user", no `roles`), signed like the app-only ones.
pub(crate) fn mint_user_token(
    state: &Shared,
    client_id: &str,
    scopes: &[String],
) -> anyhow::Result<String> {
    let now = jiff::Timestamp::now().as_second();
    let tenant = &state.cfg.tenant_id;
    let key = state
        .lock()
        .current_key()
        .context("no signing key (internal error)")?;
    let claims = json!({
        "aud": GRAPH_AUDIENCE,
        "iss": state.issuer_v1(tenant),
        "iat": now - 300,
        "nbf": now - 300,
        "exp": now + GRAPH_TOKEN_LIFETIME_SECS,
        "acr": "1",
        "aio": random_opaque(),
        "amr": ["pwd", "mfa"],
        "app_displayname": "accessgate setup",
        "appid": client_id,
        "appidacr": "0",
        "idtyp": "user",
        "ipaddr": "127.0.0.1",
        "name": "Emulated Administrator",
        "oid": DEVICE_USER_OBJECT_ID,
        "rh": random_opaque(),
        "scp": scopes.join(" "),
        "sub": random_opaque(),
        "tenant_region_scope": "EU",
        "tid": tenant,
        "unique_name": DEVICE_USER_UPN,
        "upn": DEVICE_USER_UPN,
        "uti": random_opaque(),
        "ver": "1.0",
    });
    encode_jws(&key, "RS256", None, &claims, false)
}

/// Limits what the administrator consents to at a device code sign-in (`None`: everything
/// asked for).
pub(crate) fn set_device_user_scopes(state: &Shared, scopes: Option<Vec<String>>) {
    state.lock().device_user_scopes = scopes;
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn invalid_client(code: u32, description: &str) -> Response {
    entra_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        code,
        description,
    )
}

fn aud_matches(claims: &Value, accepted: &[&str]) -> bool {
    match claims.get("aud") {
        Some(Value::String(aud)) => accepted.contains(&aud.as_str()),
        Some(Value::Array(auds)) => auds
            .iter()
            .any(|a| a.as_str().is_some_and(|a| accepted.contains(&a))),
        _ => false,
    }
}

/// Validates a `client_assertion`: an RFC 7523 JWT signed with a certificate registered on the
/// app, or a federated token from the emulated Kubernetes issuer. The error is the response to
/// send (built once per refused request, so its size does not matter).
#[allow(clippy::result_large_err)]
fn check_client_assertion(
    state: &Shared,
    tenant: &str,
    client_id: &str,
    assertion: &str,
) -> Result<(), Response> {
    let jws = decode_jws(assertion).map_err(|why| invalid_client(50027, why))?;
    let claim = |name: &str| jws.claims.get(name).and_then(Value::as_str).unwrap_or("");
    let now = jiff::Timestamp::now().as_second();
    let exp = jws.claims.get("exp").and_then(Value::as_i64);
    let nbf = jws.claims.get("nbf").and_then(Value::as_i64);
    let out_of_range = || {
        invalid_client(
            700024,
            "Client assertion is not within its valid time range.",
        )
    };

    if claim("iss") == federation_issuer(state) {
        let federated = client_id == state.cfg.graph_client_id
            || client_id == state.cfg.user_assigned_client_id;
        let no_match = || {
            invalid_client(
                70021,
                "No matching federated identity record found for presented assertion.",
            )
        };
        if !federated {
            return Err(no_match());
        }
        let kid = jws.header.get("kid").and_then(Value::as_str).unwrap_or("");
        let keys = state.lock().published_keys();
        let verified = jws.header.get("alg").and_then(Value::as_str) == Some("RS256")
            && keys.iter().any(|k| {
                k.kid() == kid && k.verify_rs256(jws.signing_input.as_bytes(), &jws.signature)
            });
        if !verified {
            return Err(invalid_client(
                700213,
                "The signature of the federated identity token could not be validated against the issuer's keys.",
            ));
        }
        if !aud_matches(&jws.claims, &[FEDERATION_AUDIENCE])
            || claim("sub") != state.cfg.federated_subject
        {
            return Err(no_match());
        }
        if exp.is_none_or(|exp| exp <= now) || nbf.is_some_and(|nbf| nbf > now + 300) {
            return Err(out_of_range());
        }
        return Ok(());
    }

    let alg = jws.header.get("alg").and_then(Value::as_str).unwrap_or("");
    let params: &'static signature::RsaParameters = match alg {
        "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
        "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
        _ => {
            return Err(invalid_client(
                5002738,
                &format!(
                    "Invalid JWT token. '{alg}' is not a supported signature algorithm (RS256, PS256)."
                ),
            ));
        }
    };
    let x5t_s256 = jws.header.get("x5t#S256").and_then(Value::as_str);
    let x5t = jws.header.get("x5t").and_then(Value::as_str);
    let cert = {
        let inner = state.lock();
        if client_id == state.cfg.graph_client_id {
            inner
                .app_certs
                .iter()
                .find(|c| {
                    x5t_s256.is_some_and(|t| t == c.x5t_s256)
                        || (x5t_s256.is_none() && x5t.is_some_and(|t| t == c.x5t))
                })
                .cloned()
        } else {
            None
        }
    };
    let Some(cert) = cert else {
        return Err(invalid_client(
            700027,
            "The certificate with identifier used to sign the client assertion is not registered on application.",
        ));
    };
    if !cert.verify(params, jws.signing_input.as_bytes(), &jws.signature) {
        return Err(invalid_client(
            700027,
            "Client assertion failed signature validation.",
        ));
    }
    let base = format!("{}/{tenant}", state.base_url);
    let audiences = [
        format!("{base}/oauth2/v2.0/token"),
        format!("{base}/oauth2/token"),
        format!("{base}/v2.0"),
    ];
    let audiences: Vec<&str> = audiences.iter().map(String::as_str).collect();
    if !aud_matches(&jws.claims, &audiences) {
        return Err(invalid_client(
            700021,
            "Client assertion audience claim does not match Realm issuer.",
        ));
    }
    if claim("iss") != client_id || claim("sub") != client_id {
        return Err(invalid_client(
            700023,
            "Client assertion 'iss' and 'sub' claims must both be the client id.",
        ));
    }
    if exp.is_none_or(|exp| exp <= now - 600) || nbf.is_some_and(|nbf| nbf > now + 300) {
        return Err(out_of_range());
    }
    if claim("jti").is_empty() {
        return Err(invalid_client(
            50027,
            "Invalid JWT token. The client assertion has no 'jti' claim.",
        ));
    }
    if cert.not_after <= now {
        return Err(invalid_client(
            700027,
            "Client assertion failed signature validation: the certificate has expired.",
        ));
    }
    Ok(())
}
