//! The baseline server (`accessgate-bench baseline`): the least a PoP-checking endpoint must do.
//! It verifies the SHR signature with `cnf.jwk` and the inner access token's signature with the
//! tenant key named by its `kid` (both RS256, aws-lc-rs, as accessgate does), reads the body and
//! answers 202. No claims, no replay cache, no queue: the gap to accessgate is what those cost.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// An RSA public key as `(n, e)` big-endian bytes.
type RsaKey = (Vec<u8>, Vec<u8>);

/// Runs the baseline until killed. Prints `{"message":"baseline listening","addr":...}`.
pub fn run(port: u16, jwks_url: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    rt.block_on(serve(port, jwks_url))
}

async fn serve(port: u16, jwks_url: &str) -> anyhow::Result<()> {
    let jwks: Value = reqwest::get(jwks_url)
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("fetching {jwks_url}"))?
        .json()
        .await
        .context("reading the JWKS")?;
    let keys = Arc::new(parse_jwks(&jwks)?);
    let app = Router::new()
        .route("/api/elm", post(elm))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(keys);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .context("binding")?;
    let addr = listener.local_addr()?;
    println!(
        "{}",
        serde_json::json!({"message": "baseline listening", "addr": addr.to_string()})
    );
    axum::serve(listener, app).await.context("serving")
}

fn b64(part: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(part).ok()
}

fn parse_jwks(jwks: &Value) -> anyhow::Result<HashMap<String, RsaKey>> {
    let mut out = HashMap::new();
    for k in jwks
        .get("keys")
        .and_then(Value::as_array)
        .context("JWKS without keys")?
    {
        let s = |name: &str| k.get(name).and_then(Value::as_str);
        if let (Some(kid), Some(n), Some(e)) = (s("kid"), s("n"), s("e"))
            && let (Some(n), Some(e)) = (b64(n), b64(e))
        {
            out.insert(kid.to_owned(), (n, e));
        }
    }
    if out.is_empty() {
        bail!("JWKS has no RSA key");
    }
    Ok(out)
}

async fn elm(
    State(keys): State<Arc<HashMap<String, RsaKey>>>,
    headers: HeaderMap,
    _body: Bytes,
) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if auth.is_some_and(|a| check(&keys, a)) {
        (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({"status": "accepted"})),
        )
            .into_response()
    } else {
        StatusCode::UNAUTHORIZED.into_response()
    }
}

/// Splits a compact JWS into its signing input, decoded payload and signature.
fn split_jws(token: &str) -> Option<(&str, Vec<u8>, Vec<u8>)> {
    let (input, sig) = token.rsplit_once('.')?;
    let (_, payload) = input.split_once('.')?;
    Some((input, b64(payload)?, b64(sig)?))
}

fn verify(key: (&[u8], &[u8]), input: &str, sig: &[u8]) -> bool {
    RsaPublicKeyComponents { n: key.0, e: key.1 }
        .verify(&RSA_PKCS1_2048_8192_SHA256, input.as_bytes(), sig)
        .is_ok()
}

/// The two signature checks, nothing else.
fn check(keys: &HashMap<String, RsaKey>, authorization: &str) -> bool {
    let Some((scheme, shr)) = authorization.split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("pop") {
        return false;
    }
    let Some((input, payload, sig)) = split_jws(shr.trim()) else {
        return false;
    };
    let Ok(payload) = serde_json::from_slice::<Value>(&payload) else {
        return false;
    };
    let jwk = &payload["cnf"]["jwk"];
    let (Some(n), Some(e)) = (
        jwk["n"].as_str().and_then(b64),
        jwk["e"].as_str().and_then(b64),
    ) else {
        return false;
    };
    if !verify((&n, &e), input, &sig) {
        return false;
    }
    let Some(at) = payload["at"].as_str() else {
        return false;
    };
    let Some((at_input, _, at_sig)) = split_jws(at) else {
        return false;
    };
    let kid = at_input
        .split_once('.')
        .and_then(|(h, _)| b64(h))
        .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
        .and_then(|h| h["kid"].as_str().map(str::to_owned));
    match kid.as_deref().and_then(|kid| keys.get(kid)) {
        Some((n, e)) => verify((n, e), at_input, &at_sig),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accessgate_emulator::{EmulatorConfig, MintOptions, PopOptions, SignWith};

    #[tokio::test]
    async fn checks_both_signatures() -> anyhow::Result<()> {
        let em = accessgate_emulator::start(EmulatorConfig::default(), ([127, 0, 0, 1], 0).into())
            .await?;
        let jwks: Value = reqwest::Client::builder()
            .no_proxy()
            .build()?
            .get(em.jwks_url())
            .send()
            .await?
            .json()
            .await?;
        let keys = parse_jwks(&jwks)?;
        let pop = |o: PopOptions| em.mint_pop(&o).map(|t| format!("PoP {t}"));

        assert!(check(&keys, &pop(PopOptions::default())?));
        let tampered = PopOptions {
            tamper_signature: true,
            ..PopOptions::default()
        };
        assert!(!check(&keys, &pop(tampered)?));
        let unknown_at_key = PopOptions {
            at: Some(MintOptions {
                sign_with: Some(SignWith::Unknown),
                ..MintOptions::default()
            }),
            ..PopOptions::default()
        };
        assert!(!check(&keys, &pop(unknown_at_key)?));
        assert!(!check(&keys, "Bearer x.y.z"));
        em.shutdown().await;
        Ok(())
    }
}
