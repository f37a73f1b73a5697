//! Entra stand-in: metadata, JWKS, minted tokens, key rotation, token endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use accessgate_emulator::{EmulatorConfig, IssuerVersion, MintOptions, SignWith};
use aws_lc_rs::signature::{self, RsaPublicKeyComponents};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

async fn get_json(url: &str) -> Value {
    let resp = common::http().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "GET {url}");
    resp.json().await.unwrap()
}

fn decode_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// Verifies with jsonwebtoken against the JWKS; returns the claims.
fn verify_with_jwks(
    token: &str,
    jwks: &Value,
    alg: Algorithm,
) -> jsonwebtoken::errors::Result<Value> {
    let kid = decode_part(token, 0)["kid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let Some(jwk) = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
    else {
        return Err(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat.into());
    };
    let key =
        DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap())?;
    let mut validation = Validation::new(alg);
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(token, &key, &validation).map(|data| data.claims)
}

#[tokio::test]
async fn metadata_v1_and_v2_point_at_the_emulator() {
    let emu = common::start().await;
    let base = emu.base_url();
    let tenant = EmulatorConfig::default().tenant_id;
    assert!(base.starts_with("http://127.0.0.1:"));

    let v1 = get_json(&emu.metadata_url_v1()).await;
    assert_eq!(v1["issuer"], format!("{base}/{tenant}/"));
    assert_eq!(v1["jwks_uri"], format!("{base}/{tenant}/discovery/keys"));
    assert_eq!(
        v1["token_endpoint"],
        format!("{base}/{tenant}/oauth2/token")
    );

    let v2 = get_json(&emu.metadata_url_v2()).await;
    assert_eq!(v2["issuer"], format!("{base}/{tenant}/v2.0"));
    assert_eq!(
        v2["jwks_uri"],
        format!("{base}/{tenant}/discovery/v2.0/keys")
    );
    assert_eq!(
        v2["token_endpoint"],
        format!("{base}/{tenant}/oauth2/v2.0/token")
    );

    let stats = emu.stats();
    assert_eq!(stats.metadata_fetches, 2);

    let other = common::http()
        .get(format!(
            "{base}/99999999-0000-0000-0000-000000000000/.well-known/openid-configuration"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 400);
}

#[tokio::test]
async fn jwks_publishes_the_key_that_signs_callout_tokens() {
    let emu = common::start().await;
    let v1 = get_json(&emu.metadata_url_v1()).await;
    let jwks = get_json(v1["jwks_uri"].as_str().unwrap()).await;
    let jwks_v2 = get_json(
        get_json(&emu.metadata_url_v2()).await["jwks_uri"]
            .as_str()
            .unwrap(),
    )
    .await;
    assert_eq!(jwks, jwks_v2);
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let jwk = &keys[0];
    for member in ["kty", "use", "kid", "x5t", "n", "e"] {
        assert!(jwk[member].is_string(), "JWK member {member}");
    }
    assert_eq!(jwk["kty"], "RSA");
    assert_eq!(jwk["use"], "sig");
    // kid is the RFC 7638 thumbprint.
    let canonical = format!(
        r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
        jwk["e"].as_str().unwrap(),
        jwk["n"].as_str().unwrap()
    );
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    assert_eq!(jwk["kid"], URL_SAFE_NO_PAD.encode(digest.as_ref()));

    let token = emu.mint_callout_token(&MintOptions::default()).unwrap();
    let header = decode_part(&token, 0);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["kid"], jwk["kid"]);

    // Independent verification 1: aws-lc-rs with the published n/e.
    let (signing_input, sig) = token.rsplit_once('.').unwrap();
    let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    let e = URL_SAFE_NO_PAD.decode(jwk["e"].as_str().unwrap()).unwrap();
    assert_eq!(n.len(), 256, "RSA-2048 modulus");
    RsaPublicKeyComponents { n: &n, e: &e }
        .verify(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            signing_input.as_bytes(),
            &URL_SAFE_NO_PAD.decode(sig).unwrap(),
        )
        .expect("signature verifies with the published key");

    // Independent verification 2: jsonwebtoken, with the default claims.
    let claims = verify_with_jwks(&token, &jwks, Algorithm::RS256).unwrap();
    let tenant = EmulatorConfig::default().tenant_id;
    assert_eq!(claims["iss"], format!("{}/{tenant}/", emu.base_url()));
    assert_eq!(claims["aud"], "api://accessgate");
    assert_eq!(claims["appid"], "810dcf14-1858-4bf2-8134-4c369fa3235b");
    assert_eq!(claims["tid"], tenant.as_str());
    assert_eq!(claims["ver"], "1.0");
    assert!(claims["oid"].is_string() && claims["sub"].is_string());
    assert_eq!(emu.stats().jwks_fetches, 2);
}

#[tokio::test]
async fn mint_options_shape_the_token() {
    let emu = common::start().await;
    let jwks = get_json(&emu.jwks_url()).await;
    let tenant = EmulatorConfig::default().tenant_id;

    let v2 = emu
        .mint_callout_token(&MintOptions {
            issuer_version: Some(IssuerVersion::V2),
            audience: Some("api://other".into()),
            app_id: Some("ce79fdc4-cd1d-4ea5-8139-e74d7dbe0bb7".into()),
            ..MintOptions::default()
        })
        .unwrap();
    let claims = verify_with_jwks(&v2, &jwks, Algorithm::RS256).unwrap();
    assert_eq!(claims["iss"], format!("{}/{tenant}/v2.0", emu.base_url()));
    assert_eq!(claims["azp"], "ce79fdc4-cd1d-4ea5-8139-e74d7dbe0bb7");
    assert!(claims.get("appid").is_none());
    assert_eq!(claims["ver"], "2.0");
    assert_eq!(claims["aud"], "api://other");

    let ps = emu
        .mint_callout_token(&MintOptions {
            alg: Some("PS256".into()),
            ..MintOptions::default()
        })
        .unwrap();
    assert_eq!(decode_part(&ps, 0)["alg"], "PS256");
    verify_with_jwks(&ps, &jwks, Algorithm::PS256).unwrap();

    let other_tenant = emu
        .mint_callout_token(&MintOptions {
            tenant_id: Some("99999999-0000-0000-0000-000000000000".into()),
            ..MintOptions::default()
        })
        .unwrap();
    let claims = decode_part(&other_tenant, 1);
    assert_eq!(claims["tid"], "99999999-0000-0000-0000-000000000000");
    assert_eq!(
        claims["iss"],
        format!("{}/99999999-0000-0000-0000-000000000000/", emu.base_url())
    );

    let verbatim = emu
        .mint_callout_token(&MintOptions {
            issuer: Some("https://sts.windows.net/x/".into()),
            kid: Some("not-a-kid".into()),
            extra_claims: Some(serde_json::from_value(json!({"oid": null, "custom": 7})).unwrap()),
            ..MintOptions::default()
        })
        .unwrap();
    assert_eq!(decode_part(&verbatim, 0)["kid"], "not-a-kid");
    let claims = decode_part(&verbatim, 1);
    assert_eq!(claims["iss"], "https://sts.windows.net/x/");
    assert!(claims.get("oid").is_none());
    assert_eq!(claims["custom"], 7);

    let expired = emu
        .mint_callout_token(&MintOptions {
            expires_in_secs: Some(-600),
            ..MintOptions::default()
        })
        .unwrap();
    let err = verify_with_jwks(&expired, &jwks, Algorithm::RS256).unwrap_err();
    assert_eq!(
        *err.kind(),
        jsonwebtoken::errors::ErrorKind::ExpiredSignature
    );

    let unknown = emu
        .mint_callout_token(&MintOptions {
            sign_with: Some(SignWith::Unknown),
            ..MintOptions::default()
        })
        .unwrap();
    assert!(verify_with_jwks(&unknown, &jwks, Algorithm::RS256).is_err());

    let tampered = emu
        .mint_callout_token(&MintOptions {
            tamper_signature: true,
            ..MintOptions::default()
        })
        .unwrap();
    let err = verify_with_jwks(&tampered, &jwks, Algorithm::RS256).unwrap_err();
    assert_eq!(
        *err.kind(),
        jsonwebtoken::errors::ErrorKind::InvalidSignature
    );

    let none = emu
        .mint_callout_token(&MintOptions {
            alg: Some("none".into()),
            ..MintOptions::default()
        })
        .unwrap();
    assert!(none.ends_with('.'));
    assert_eq!(decode_part(&none, 0)["alg"], "none");
}

#[tokio::test]
async fn mint_route_accepts_options_and_rejects_unknown_fields() {
    let emu = common::start().await;
    let url = format!("{}/_emulator/tokens/callout", emu.base_url());
    let resp = common::http()
        .post(&url)
        .json(&json!({"issuer_version": "v2", "audience": "api://x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let token = resp.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(decode_part(&token, 1)["ver"], "2.0");

    let empty = common::http().post(&url).send().await.unwrap();
    assert_eq!(empty.status(), 200);

    let typo = common::http()
        .post(&url)
        .json(&json!({"audiance": "api://x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(typo.status(), 400);

    let bad_alg = common::http()
        .post(&url)
        .json(&json!({"alg": "HS256"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_alg.status(), 400);
}

#[tokio::test]
async fn rotation_keeps_the_old_key_unless_retired() {
    let emu = common::start().await;
    let rotate = format!("{}/_emulator/keys/rotate", emu.base_url());
    let jwks_url = emu.jwks_url();

    let old_token = emu.mint_callout_token(&MintOptions::default()).unwrap();
    let old_kid = decode_part(&old_token, 0)["kid"]
        .as_str()
        .unwrap()
        .to_owned();

    let resp = common::http().post(&rotate).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let new_kid = resp.json::<Value>().await.unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_kid, old_kid);

    let jwks = get_json(&jwks_url).await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids.len(), 2);
    assert!(kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()));
    // Old tokens still verify; new tokens carry the new kid.
    verify_with_jwks(&old_token, &jwks, Algorithm::RS256).unwrap();
    let new_token = emu.mint_callout_token(&MintOptions::default()).unwrap();
    assert_eq!(decode_part(&new_token, 0)["kid"], new_kid.as_str());
    verify_with_jwks(&new_token, &jwks, Algorithm::RS256).unwrap();

    let resp = common::http()
        .post(&rotate)
        .json(&json!({"retire_old": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let newest = resp.json::<Value>().await.unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let jwks = get_json(&jwks_url).await;
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kid"], newest.as_str());
    assert!(verify_with_jwks(&old_token, &jwks, Algorithm::RS256).is_err());
    assert!(verify_with_jwks(&new_token, &jwks, Algorithm::RS256).is_err());
}

#[tokio::test]
async fn token_endpoint_issues_graph_tokens() {
    let emu = common::start().await;
    let cfg = EmulatorConfig::default();
    let resp = common::http()
        .post(emu.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", cfg.graph_client_id.as_str()),
            ("client_secret", cfg.graph_client_secret.as_str()),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    let token = body["access_token"].as_str().unwrap();
    let jwks = get_json(&emu.jwks_url()).await;
    let claims = verify_with_jwks(token, &jwks, Algorithm::RS256).unwrap();
    assert_eq!(claims["aud"], "https://graph.microsoft.com");
    assert_eq!(claims["appid"], cfg.graph_client_id.as_str());
    assert_eq!(claims["tid"], cfg.tenant_id.as_str());
    assert_eq!(
        claims["roles"],
        json!(accessgate_emulator::principals::DEFAULT_GRAPH_PERMISSIONS)
    );
    assert_eq!(emu.stats().token_requests, 1);

    // v1 endpoint with `resource`, and client_secret_basic.
    let resp = common::http()
        .post(format!("{}/{}/oauth2/token", emu.base_url(), cfg.tenant_id))
        .basic_auth(&cfg.graph_client_id, Some(&cfg.graph_client_secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("resource", "https://graph.microsoft.com"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn token_endpoint_rejects_bad_clients_like_entra() {
    let emu = common::start().await;
    let cfg = EmulatorConfig::default();
    let post = |form: Vec<(&'static str, String)>| {
        let url = emu.token_url();
        async move {
            let resp = common::http().post(url).form(&form).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let scope = || ("scope", "https://graph.microsoft.com/.default".to_owned());

    let (status, body) = post(vec![
        ("grant_type", "client_credentials".into()),
        ("client_id", cfg.graph_client_id.clone()),
        ("client_secret", "wrong".into()),
        scope(),
    ])
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_client");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS7000215: Invalid client secret provided.")
    );
    assert!(
        !body.to_string().contains(&cfg.graph_client_secret),
        "no secret echoed"
    );

    let (status, body) = post(vec![
        ("grant_type", "client_credentials".into()),
        ("client_id", "bbbbbbbb-0000-0000-0000-000000000009".into()),
        ("client_secret", cfg.graph_client_secret.clone()),
        scope(),
    ])
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "unauthorized_client");

    let (status, body) = post(vec![
        ("grant_type", "password".into()),
        ("client_id", cfg.graph_client_id.clone()),
        ("client_secret", cfg.graph_client_secret.clone()),
        scope(),
    ])
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "unsupported_grant_type");

    let (status, body) = post(vec![
        ("grant_type", "client_credentials".into()),
        ("client_id", cfg.graph_client_id.clone()),
        ("client_secret", cfg.graph_client_secret.clone()),
        ("scope", "https://unknown-resource.example/.default".into()),
    ])
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_scope");
    assert_eq!(emu.stats().token_requests, 4);
}
