//! Key Vault stand-in (REST API 7.x): secrets, certificates (RSA-2048, self-signed, made with
//! rcgen) with their PEM secret, and `sign` with a certificate's key, behind bearer tokens with
//! audience `https://vault.azure.net` and RBAC roles of the calling principal.
//!
//! Why: accessgate can read its Graph client secret or certificate from Key Vault with a managed
//! identity, or have the vault sign its client assertion; rotation, missing roles and faults
//! must be reproducible locally. One vault per emulator: `{base}/vaults/accessgate`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, KeyPair as _, RsaPublicKeyComponents};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::entra::{self, Caller, TokenError, VAULT_AUDIENCE};
use crate::faults::{self, FaultTarget};
use crate::principals::{KV_CERTIFICATE_USER, KV_CRYPTO_USER, KV_SECRETS_USER};
use crate::state::{AppState, Shared};

/// Name of the emulated vault (path segment after `/vaults/`).
pub const VAULT_NAME: &str = "accessgate";
const RECOVERY_LEVEL: &str = "Recoverable+Purgeable";
const PEM_CONTENT_TYPE: &str = "application/x-pem-file";

/// The vault's objects. Certificates own a key of the same name.
#[derive(Default)]
pub(crate) struct Vault {
    secrets: BTreeMap<String, Vec<SecretVersion>>,
    certificates: BTreeMap<String, Vec<Arc<CertVersion>>>,
}

struct SecretVersion {
    version: String,
    value: String,
    content_type: Option<String>,
    created: i64,
}

/// One version of a certificate with its key pair.
pub(crate) struct CertVersion {
    pub version: String,
    pub der: Vec<u8>,
    pub x5t: String,
    pub x5t_s256: String,
    pub not_before: i64,
    pub not_after: i64,
    pub created: i64,
    pub exportable: bool,
    key: aws_lc_rs::rsa::KeyPair,
    n: Vec<u8>,
    e: Vec<u8>,
}

impl CertVersion {
    /// Verifies `sig` over `message` with the certificate's public key.
    pub fn verify(
        &self,
        params: &'static signature::RsaParameters,
        message: &[u8],
        sig: &[u8],
    ) -> bool {
        RsaPublicKeyComponents {
            n: &self.n,
            e: &self.e,
        }
        .verify(params, message, sig)
        .is_ok()
    }
}

/// Options of `POST /_emulator/keyvault/certificates/{name}` and
/// [`crate::Emulator::create_certificate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CertificateOptions {
    /// Validity from now; 0 or negative gives an already expired certificate. Default 365.
    pub valid_days: i64,
    /// Whether the private key is in the certificate's secret (default true).
    pub exportable: bool,
    /// Register the certificate on the Graph app for client assertions (default true).
    pub register_with_app: bool,
}

impl Default for CertificateOptions {
    fn default() -> Self {
        Self {
            valid_days: 365,
            exportable: true,
            register_with_app: true,
        }
    }
}

/// What [`crate::Emulator::create_certificate`] made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateInfo {
    /// `{vault}/certificates/{name}/{version}`.
    pub id: String,
    /// `{vault}/keys/{name}/{version}`.
    pub kid: String,
    /// base64url SHA-1 of the DER.
    pub x5t: String,
    /// base64url SHA-256 of the DER.
    pub x5t_s256: String,
    /// notAfter, unix seconds.
    pub not_after: i64,
}

pub(crate) fn vault_url(state: &Shared) -> String {
    format!("{}/vaults/{VAULT_NAME}", state.base_url)
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 127
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        bail!("invalid Key Vault object name {name:?} (1-127 letters, digits and dashes)");
    }
    Ok(())
}

fn new_version() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Adds a secret version (the latest wins); returns its id.
pub(crate) fn put_secret(
    state: &Shared,
    name: &str,
    value: &str,
    content_type: Option<String>,
) -> anyhow::Result<String> {
    check_name(name)?;
    let version = new_version();
    let id = format!("{}/secrets/{name}/{version}", vault_url(state));
    state
        .lock()
        .vault
        .secrets
        .entry(name.to_owned())
        .or_default()
        .push(SecretVersion {
            version,
            value: value.to_owned(),
            content_type,
            created: jiff::Timestamp::now().as_second(),
        });
    tracing::info!(%name, "Key Vault secret version added");
    Ok(id)
}

/// Creates a certificate version (RSA-2048 key, self-signed, CN = name) with its PEM secret
/// (RSA key generation: call from a blocking context).
pub(crate) fn create_certificate(
    state: &Shared,
    name: &str,
    opts: &CertificateOptions,
) -> anyhow::Result<CertificateInfo> {
    check_name(name)?;
    let now = jiff::Timestamp::now().as_second();
    let (not_before, not_after) = if opts.valid_days > 0 {
        (now - 300, now + opts.valid_days.saturating_mul(86_400))
    } else {
        (
            now - 30 * 86_400,
            now + opts.valid_days.saturating_mul(86_400) - 60,
        )
    };
    let key_pair =
        rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .context("generating the certificate key")?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).context("certificate parameters")?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, name);
    params.distinguished_name = dn;
    params.not_before =
        time::OffsetDateTime::from_unix_timestamp(not_before).context("notBefore")?;
    params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).context("notAfter")?;
    let cert = params
        .self_signed(&key_pair)
        .context("self-signing the certificate")?;
    let der = cert.der().to_vec();
    let cert_pem = cert.pem();
    let key = aws_lc_rs::rsa::KeyPair::from_pkcs8(&key_pair.serialize_der())
        .map_err(|_| anyhow!("loading the certificate key"))?;
    let public = key.public_key();
    let n = public.modulus().big_endian_without_leading_zero().to_vec();
    let e = public.exponent().big_endian_without_leading_zero().to_vec();
    let x5t = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &der));
    let x5t_s256 = URL_SAFE_NO_PAD.encode(Sha256::digest(&der));
    let version = new_version();
    let secret_value = if opts.exportable {
        format!("{}{cert_pem}", key_pair.serialize_pem())
    } else {
        cert_pem
    };
    let record = Arc::new(CertVersion {
        version: version.clone(),
        der,
        x5t: x5t.clone(),
        x5t_s256: x5t_s256.clone(),
        not_before,
        not_after,
        created: now,
        exportable: opts.exportable,
        key,
        n,
        e,
    });
    let vault = vault_url(state);
    {
        let mut inner = state.lock();
        inner
            .vault
            .certificates
            .entry(name.to_owned())
            .or_default()
            .push(record.clone());
        inner
            .vault
            .secrets
            .entry(name.to_owned())
            .or_default()
            .push(SecretVersion {
                version: version.clone(),
                value: secret_value,
                content_type: Some(PEM_CONTENT_TYPE.to_owned()),
                created: now,
            });
        if opts.register_with_app {
            inner.app_certs.push(record);
        }
    }
    tracing::info!(%name, %x5t_s256, not_after, register_with_app = opts.register_with_app, "Key Vault certificate created");
    Ok(CertificateInfo {
        id: format!("{vault}/certificates/{name}/{version}"),
        kid: format!("{vault}/keys/{name}/{version}"),
        x5t,
        x5t_s256,
        not_after,
    })
}

/// Key Vault routes, to be merged at the root.
pub(crate) fn routes() -> Router<AppState> {
    let base = format!("/vaults/{VAULT_NAME}");
    Router::new()
        .route(&format!("{base}/secrets/{{name}}"), get(get_secret_latest))
        .route(
            &format!("{base}/secrets/{{name}}/{{version}}"),
            get(get_secret_version),
        )
        .route(
            &format!("{base}/certificates/{{name}}"),
            get(get_certificate_latest),
        )
        .route(
            &format!("{base}/certificates/{{name}}/{{version}}"),
            get(get_certificate_version),
        )
        .route(&format!("{base}/keys/{{name}}/sign"), post(sign_latest))
        .route(
            &format!("{base}/keys/{{name}}/{{version}}/sign"),
            post(sign_version),
        )
}

fn kv_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// The common prologue: count, fault, api-version, bearer token, RBAC role.
async fn admit(
    state: &AppState,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    role: &str,
    action: &str,
    resource: &str,
) -> Result<Caller, Response> {
    state.lock().stats.key_vault_requests += 1;
    if let Some(resp) = faults::apply(state, FaultTarget::Keyvault).await {
        return Err(resp);
    }
    match query.get("api-version") {
        Some(v) if v.starts_with("7.") => {}
        _ => {
            return Err(kv_error(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                "The request URI contains an invalid api-version",
            ));
        }
    }
    let caller = match entra::verify_access_token(
        state,
        headers,
        &[VAULT_AUDIENCE, "https://vault.azure.net/"],
    ) {
        Ok(caller) => caller,
        Err(err) => return Err(unauthorized(state, &err)),
    };
    let allowed = state
        .lock()
        .principal_by_oid(&caller.oid)
        .map(|p| p.key_vault_roles.iter().any(|r| r == role));
    match allowed {
        Some(true) => Ok(caller),
        Some(false) => Err(forbidden(&caller, action, resource)),
        None => Err(unauthorized(
            state,
            &TokenError::Invalid("AKV10022: Invalid audience or principal.".into()),
        )),
    }
}

fn unauthorized(state: &Shared, err: &TokenError) -> Response {
    let message = match err {
        TokenError::Missing => "AKV10000: Request is missing a Bearer or PoP token.".to_owned(),
        TokenError::Expired => "AKV10032: Token expired.".to_owned(),
        TokenError::Invalid(why) if why.contains("issuer") => "AKV10032: Invalid issuer.".into(),
        TokenError::Invalid(why) if why.contains("audience") => {
            "AKV10022: Invalid audience.".into()
        }
        TokenError::Invalid(why) if why.starts_with("AKV") => why.clone(),
        TokenError::Invalid(_) => "AKV10031: Invalid token.".into(),
    };
    let mut resp = kv_error(StatusCode::UNAUTHORIZED, "Unauthorized", &message);
    let challenge = format!(
        "Bearer authorization=\"{}/{}\", resource=\"{VAULT_AUDIENCE}\"",
        state.base_url, state.cfg.tenant_id
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    resp
}

fn forbidden(caller: &Caller, action: &str, resource: &str) -> Response {
    let message = format!(
        "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nCaller: appid={};oid={}\r\nAction: '{action}'\r\nResource: '{resource}'\r\nAssignment: (not found)\r\n",
        caller.client_id, caller.oid
    );
    (
        StatusCode::FORBIDDEN,
        Json(json!({"error": {
            "code": "Forbidden",
            "message": message,
            "innererror": {"code": "ForbiddenByRbac"},
        }})),
    )
        .into_response()
}

fn resource_id(state: &Shared, kind: &str, name: &str) -> String {
    format!(
        "/subscriptions/22222222-3333-4444-5555-666666666666/resourcegroups/rg-accessgate/providers/microsoft.keyvault/vaults/{VAULT_NAME}/{kind}/{name} (emulator at {})",
        state.base_url
    )
}

async fn get_secret_latest(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    get_secret(state, name, None, query, headers).await
}

async fn get_secret_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    get_secret(state, name, Some(version), query, headers).await
}

async fn get_secret(
    state: AppState,
    name: String,
    version: Option<String>,
    query: HashMap<String, String>,
    headers: HeaderMap,
) -> Response {
    let resource = resource_id(&state, "secrets", &name);
    if let Err(resp) = admit(
        &state,
        &query,
        &headers,
        KV_SECRETS_USER,
        "Microsoft.KeyVault/vaults/secrets/getSecret/action",
        &resource,
    )
    .await
    {
        return resp;
    }
    let vault = vault_url(&state);
    let inner = state.lock();
    let found = inner
        .vault
        .secrets
        .get(&name)
        .and_then(|versions| match &version {
            None => versions.last(),
            Some(v) => versions.iter().find(|s| &s.version == v),
        });
    let Some(secret) = found else {
        drop(inner);
        return kv_error(
            StatusCode::NOT_FOUND,
            "SecretNotFound",
            &format!(
                "A secret with (name/id) {name} was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
            ),
        );
    };
    let managed = inner.vault.certificates.contains_key(&name);
    let mut body = json!({
        "value": secret.value,
        "id": format!("{vault}/secrets/{name}/{}", secret.version),
        "attributes": {
            "enabled": true,
            "created": secret.created,
            "updated": secret.created,
            "recoveryLevel": RECOVERY_LEVEL,
        },
        "tags": {},
    });
    if let Some(obj) = body.as_object_mut() {
        if let Some(ct) = &secret.content_type {
            obj.insert("contentType".into(), json!(ct));
        }
        if managed {
            obj.insert("managed".into(), json!(true));
            obj.insert(
                "kid".into(),
                json!(format!("{vault}/keys/{name}/{}", secret.version)),
            );
        }
    }
    drop(inner);
    Json(body).into_response()
}

async fn get_certificate_latest(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    get_certificate(state, name, None, query, headers).await
}

async fn get_certificate_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    get_certificate(state, name, Some(version), query, headers).await
}

fn find_cert(state: &Shared, name: &str, version: Option<&str>) -> Option<Arc<CertVersion>> {
    let inner = state.lock();
    let versions = inner.vault.certificates.get(name)?;
    match version {
        None => versions.last().cloned(),
        Some(v) => versions.iter().find(|c| c.version == v).cloned(),
    }
}

async fn get_certificate(
    state: AppState,
    name: String,
    version: Option<String>,
    query: HashMap<String, String>,
    headers: HeaderMap,
) -> Response {
    let resource = resource_id(&state, "certificates", &name);
    if let Err(resp) = admit(
        &state,
        &query,
        &headers,
        KV_CERTIFICATE_USER,
        "Microsoft.KeyVault/vaults/certificates/read",
        &resource,
    )
    .await
    {
        return resp;
    }
    let Some(cert) = find_cert(&state, &name, version.as_deref()) else {
        return kv_error(
            StatusCode::NOT_FOUND,
            "CertificateNotFound",
            &format!(
                "A certificate with (name/id) {name} was not found in this key vault. If you recently deleted this certificate you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
            ),
        );
    };
    let vault = vault_url(&state);
    let v = &cert.version;
    Json(json!({
        "id": format!("{vault}/certificates/{name}/{v}"),
        "kid": format!("{vault}/keys/{name}/{v}"),
        "sid": format!("{vault}/secrets/{name}/{v}"),
        "x5t": cert.x5t,
        "cer": STANDARD.encode(&cert.der),
        "attributes": {
            "enabled": true,
            "nbf": cert.not_before,
            "exp": cert.not_after,
            "created": cert.created,
            "updated": cert.created,
            "recoveryLevel": RECOVERY_LEVEL,
        },
        "policy": {
            "id": format!("{vault}/certificates/{name}/policy"),
            "key_props": {"exportable": cert.exportable, "kty": "RSA", "key_size": 2048, "reuse_key": false},
            "secret_props": {"contentType": PEM_CONTENT_TYPE},
            "x509_props": {"subject": format!("CN={name}"), "validity_months": 12},
        },
        "tags": {},
    }))
    .into_response()
}

async fn sign_latest(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sign(state, name, None, query, headers, body).await
}

async fn sign_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sign(state, name, Some(version), query, headers, body).await
}

#[derive(Deserialize)]
struct SignBody {
    alg: String,
    value: String,
}

async fn sign(
    state: AppState,
    name: String,
    version: Option<String>,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let resource = resource_id(&state, "keys", &name);
    if let Err(resp) = admit(
        &state,
        &query,
        &headers,
        KV_CRYPTO_USER,
        "Microsoft.KeyVault/vaults/keys/sign/action",
        &resource,
    )
    .await
    {
        return resp;
    }
    let bad = |message: &str| kv_error(StatusCode::BAD_REQUEST, "BadParameter", message);
    let Ok(req) = serde_json::from_slice::<SignBody>(&body) else {
        return bad("The request body must be {\"alg\": ..., \"value\": ...}.");
    };
    let encoding: &'static dyn signature::RsaEncoding = match req.alg.as_str() {
        "RS256" => &signature::RSA_PKCS1_SHA256,
        "PS256" => &signature::RSA_PSS_SHA256,
        other => return bad(&format!("Invalid algorithm '{other}' (RS256 or PS256).")),
    };
    let Ok(digest_bytes) = URL_SAFE_NO_PAD.decode(req.value.trim_end_matches('=')) else {
        return bad("The value is not base64url.");
    };
    let Ok(digest_value) = digest::Digest::import_less_safe(&digest_bytes, &digest::SHA256) else {
        return bad("Invalid digest length: RS256 and PS256 need a 32-byte SHA-256 digest.");
    };
    let Some(cert) = find_cert(&state, &name, version.as_deref()) else {
        return kv_error(
            StatusCode::NOT_FOUND,
            "KeyNotFound",
            &format!(
                "A key with (name/id) {name} was not found in this key vault. If you recently deleted this key you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
            ),
        );
    };
    let mut sig = vec![0u8; cert.key.public_modulus_len()];
    if cert
        .key
        .sign_digest(encoding, &digest_value, &mut sig)
        .is_err()
    {
        return kv_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "Signing failed.",
        );
    }
    Json(json!({
        "kid": format!("{}/keys/{name}/{}", vault_url(&state), cert.version),
        "value": URL_SAFE_NO_PAD.encode(&sig),
    }))
    .into_response()
}
