//! PoP signed requests as Entra/MSAL build them: member order, key binding, signatures, and
//! every forgery knob.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use accessgate_emulator::{MintOptions, PopKey, PopKeyKind, PopOptions};
use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::Digest as _;

fn part(token: &str, i: usize) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(token.split('.').nth(i).unwrap())
        .unwrap()
}

fn json_part(token: &str, i: usize) -> Value {
    serde_json::from_slice(&part(token, i)).unwrap()
}

fn keys_in_order(token: &str, i: usize) -> Vec<String> {
    match serde_json::from_slice::<Value>(&part(token, i)).unwrap() {
        Value::Object(m) => m.keys().cloned().collect(),
        _ => panic!("not an object"),
    }
}

fn signing_input(token: &str) -> &str {
    &token[..token.rfind('.').unwrap()]
}

fn verify(jwk: &Value, alg: &str, token: &str) -> bool {
    let sig = part(token, 2);
    let msg = signing_input(token).as_bytes();
    let b = |k: &str| URL_SAFE_NO_PAD.decode(jwk[k].as_str().unwrap()).unwrap();
    match alg {
        "RS256" | "PS256" => {
            let params = if alg == "RS256" {
                &signature::RSA_PKCS1_2048_8192_SHA256
            } else {
                &signature::RSA_PSS_2048_8192_SHA256
            };
            RsaPublicKeyComponents {
                n: b("n"),
                e: b("e"),
            }
            .verify(params, msg, &sig)
            .is_ok()
        }
        "ES256" => {
            let mut point = vec![4u8];
            point.extend(b("x"));
            point.extend(b("y"));
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(msg, &sig)
                .is_ok()
        }
        _ => false,
    }
}

/// RFC 7638 computed here, independently of the emulator.
fn thumbprint(jwk: &Value) -> String {
    let canonical = if jwk["kty"] == "EC" {
        format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["crv"].as_str().unwrap(),
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap()
        )
    } else {
        format!(
            r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
            jwk["e"].as_str().unwrap(),
            jwk["n"].as_str().unwrap()
        )
    };
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()))
}

#[tokio::test]
async fn a_default_signed_request_is_what_entra_sends() {
    let emu = common::start().await;
    let token = emu.mint_pop(&PopOptions::default()).unwrap();
    assert_eq!(keys_in_order(&token, 0), ["typ", "alg", "kid"]);
    assert_eq!(
        keys_in_order(&token, 1),
        ["at", "ts", "m", "u", "p", "nonce", "cnf"]
    );
    let (h, c) = (json_part(&token, 0), json_part(&token, 1));
    let jwk = &c["cnf"]["jwk"];
    assert_eq!(h["typ"], "pop");
    assert_eq!(h["alg"], "RS256");
    assert_eq!(h["kid"], thumbprint(jwk).as_str());
    assert_eq!(jwk["kid"], thumbprint(jwk).as_str());
    assert_eq!(jwk, &emu.pop_key_jwk().unwrap());
    assert_eq!(c["m"], "POST");
    assert_eq!(c["u"], "management.azure.com");
    assert_eq!(c["p"], emu.config().logic_app_resource.as_str());
    assert_eq!(c["nonce"].as_str().unwrap().len(), 32);
    let now = jiff::Timestamp::now().as_second();
    assert!((c["ts"].as_i64().unwrap() - now).abs() <= 5);
    assert!(
        verify(jwk, "RS256", &token),
        "signature verifies with cnf.jwk"
    );

    // The inner token: a normal callout token for ARM, bound to the key, valid in the JWKS.
    let at = c["at"].as_str().unwrap();
    let at_claims = json_part(at, 1);
    assert_eq!(at_claims["aud"], "https://management.azure.com");
    assert_eq!(
        at_claims["cnf"],
        json!({"kid": thumbprint(jwk), "xms_ksl": "sw"})
    );
    let jwks: Value = common::http()
        .get(emu.jwks_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kid = json_part(at, 0)["kid"].as_str().unwrap().to_string();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("the inner token's key is published");
    assert!(verify(key, "RS256", at));
    // Every mint is a new request (fresh nonce, fresh signature).
    assert_ne!(token, emu.mint_pop(&PopOptions::default()).unwrap());
}

#[tokio::test]
async fn ps256_es256_and_other_key_kinds_sign_as_named() {
    let emu = common::start().await;
    let ps = emu
        .mint_pop(&PopOptions {
            alg: Some("PS256".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(json_part(&ps, 0)["alg"], "PS256");
    assert!(verify(&json_part(&ps, 1)["cnf"]["jwk"], "PS256", &ps));
    assert!(!verify(&json_part(&ps, 1)["cnf"]["jwk"], "RS256", &ps));

    let ec = emu
        .mint_pop(&PopOptions {
            key: Some(PopKeyKind::Ecp256),
            ..Default::default()
        })
        .unwrap();
    let jwk = json_part(&ec, 1)["cnf"]["jwk"].clone();
    assert_eq!(json_part(&ec, 0)["alg"], "ES256");
    assert_eq!(
        (jwk["kty"].as_str(), jwk["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );
    assert_eq!(json_part(&ec, 0)["kid"], thumbprint(&jwk).as_str());
    assert!(verify(&jwk, "ES256", &ec));

    let weak = emu
        .mint_pop(&PopOptions {
            key: Some(PopKeyKind::Rsa1024),
            ..Default::default()
        })
        .unwrap();
    let n = URL_SAFE_NO_PAD
        .decode(json_part(&weak, 1)["cnf"]["jwk"]["n"].as_str().unwrap())
        .unwrap();
    assert_eq!(n.len(), 128);
}

#[tokio::test]
async fn forgery_knobs_do_what_they_say() {
    let emu = common::start().await;
    let jwk = emu.pop_key_jwk().unwrap();
    let mint = |o: PopOptions| emu.mint_pop(&o).unwrap();

    let t = mint(PopOptions {
        typ: Some(Value::Null),
        kid: Some(json!("other")),
        header_extra: Some(
            json!({"jku": "https://evil.example/keys"})
                .as_object()
                .unwrap()
                .clone(),
        ),
        ..Default::default()
    });
    let h = json_part(&t, 0);
    assert!(h.get("typ").is_none());
    assert_eq!(
        (h["kid"].as_str(), h["jku"].as_str()),
        (Some("other"), Some("https://evil.example/keys"))
    );

    let t = mint(PopOptions {
        ts_offset_secs: Some(-600),
        m: Some(json!("GET")),
        u: Some(Value::Null),
        p: Some(json!("/x")),
        nonce: Some(json!(7)),
        cnf: Some(json!({"jku": "https://evil"})),
        claims_extra: Some(
            json!({"b": "hash", "at": null})
                .as_object()
                .unwrap()
                .clone(),
        ),
        ..Default::default()
    });
    let c = json_part(&t, 1);
    let now = jiff::Timestamp::now().as_second();
    assert!((c["ts"].as_i64().unwrap() - (now - 600)).abs() <= 5);
    assert_eq!(
        (c["m"].as_str(), c["p"].as_str(), c["nonce"].as_i64()),
        (Some("GET"), Some("/x"), Some(7))
    );
    assert!(c.get("u").is_none() && c.get("at").is_none());
    assert_eq!(c["cnf"], json!({"jku": "https://evil"}));
    assert_eq!(c["b"], "hash");
    let t = mint(PopOptions {
        ts: Some(json!("1700000000")),
        ..Default::default()
    });
    assert_eq!(json_part(&t, 1)["ts"], "1700000000");

    // Signatures: tampered, unsigned, other key, none.
    let t = mint(PopOptions {
        tamper_signature: true,
        ..Default::default()
    });
    assert!(!verify(&jwk, "RS256", &t));
    let t = mint(PopOptions {
        unsigned: true,
        ..Default::default()
    });
    assert!(t.ends_with('.'));
    assert_eq!(json_part(&t, 0)["alg"], "RS256");
    let t = mint(PopOptions {
        sign_with_other_key: true,
        ..Default::default()
    });
    assert_eq!(json_part(&t, 1)["cnf"]["jwk"], jwk);
    assert!(!verify(&jwk, "RS256", &t));
    let t = mint(PopOptions {
        alg: Some("none".into()),
        ..Default::default()
    });
    assert!(t.ends_with('.'));
    assert_eq!(json_part(&t, 0)["alg"], "none");
    // HS256 with the public key as the HMAC secret (the confusion attack).
    let t = mint(PopOptions {
        alg: Some("HS256".into()),
        ..Default::default()
    });
    let key = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        format!(
            r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
            jwk["e"].as_str().unwrap(),
            jwk["n"].as_str().unwrap()
        )
        .as_bytes(),
    );
    assert!(aws_lc_rs::hmac::verify(&key, signing_input(&t).as_bytes(), &part(&t, 2)).is_ok());

    // The inner token: its cnf replaced or removed, its own claims overridden, or given verbatim.
    let t = mint(PopOptions {
        at_cnf: Some(json!({"kid": "someone-else"})),
        ..Default::default()
    });
    assert_eq!(
        json_part(json_part(&t, 1)["at"].as_str().unwrap(), 1)["cnf"],
        json!({"kid": "someone-else"})
    );
    let t = mint(PopOptions {
        at_cnf: Some(Value::Null),
        ..Default::default()
    });
    assert!(
        json_part(json_part(&t, 1)["at"].as_str().unwrap(), 1)
            .get("cnf")
            .is_none()
    );
    let t = mint(PopOptions {
        at: Some(MintOptions {
            audience: Some("api://x".into()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let at = json_part(json_part(&t, 1)["at"].as_str().unwrap(), 1);
    assert_eq!(at["aud"], "api://x");
    assert!(
        at["cnf"]["kid"].is_string(),
        "the binding stays unless removed"
    );
    let t = mint(PopOptions {
        at_token: Some("a.b.c".into()),
        ..Default::default()
    });
    assert_eq!(json_part(&t, 1)["at"], "a.b.c");
}

#[tokio::test]
async fn sign_compact_keeps_raw_json_and_the_control_route_mints() {
    let key = PopKey::generate(PopKeyKind::Rsa2048).unwrap();
    let raw = r#"{"p":"a","p":"b"}"#;
    let t = key
        .sign_compact("RS256", r#"{"alg":"RS256"}"#, raw)
        .unwrap();
    assert_eq!(part(&t, 1), raw.as_bytes(), "duplicated members survive");
    assert!(verify(&key.public_jwk(), "RS256", &t));
    assert_eq!(key.thumbprint(), thumbprint(&key.public_jwk()));

    let emu = common::start().await;
    let resp: Value = common::http()
        .post(format!("{}/_emulator/tokens/pop", emu.base_url()))
        .json(&json!({"alg": "PS256"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = resp["token"].as_str().unwrap();
    assert_eq!(json_part(token, 0)["alg"], "PS256");
    let bad = common::http()
        .post(format!("{}/_emulator/tokens/pop", emu.base_url()))
        .json(&json!({"nonsense": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
}
