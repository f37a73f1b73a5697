//! PoP signed requests as Entra/MSAL build them: member order, key binding, RFC 7638
//! thumbprints, signatures, and every forgery knob.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use accessgate_emulator::pop::jwk_thumbprint;
use accessgate_emulator::{MintOptions, PopKey, PopKeyKind, PopOptions};
use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use sha2::Digest as _;

fn part(token: &str, i: usize) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(token.split('.').nth(i).unwrap())
        .unwrap()
}

fn json_part(token: &str, i: usize) -> Value {
    serde_json::from_slice(&part(token, i)).unwrap()
}

fn keys_of(value: &Value) -> Vec<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

fn keys_in_order(token: &str, i: usize) -> Vec<String> {
    keys_of(&json_part(token, i))
}

fn obj(v: Value) -> Option<Map<String, Value>> {
    Some(v.as_object().unwrap().clone())
}

fn signing_input(token: &str) -> &str {
    &token[..token.rfind('.').unwrap()]
}

fn cnf_jwk(token: &str) -> Value {
    json_part(token, 1)["cnf"]["jwk"].clone()
}

/// Claims of the inner access token.
fn at_claims(token: &str) -> Value {
    json_part(json_part(token, 1)["at"].as_str().unwrap(), 1)
}

/// Verifies `token`'s signature with `jwk`, independently of the emulator (aws-lc-rs).
fn verify(jwk: &Value, alg: &str, token: &str) -> bool {
    let sig = part(token, 2);
    let msg = signing_input(token).as_bytes();
    let b = |k: &str| URL_SAFE_NO_PAD.decode(jwk[k].as_str().unwrap()).unwrap();
    match alg {
        "RS256" | "PS256" => {
            let weak = b("n").len() < 256;
            let params = match (alg, weak) {
                ("RS256", false) => &signature::RSA_PKCS1_2048_8192_SHA256,
                ("RS256", true) => &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
                ("PS256", false) => &signature::RSA_PSS_2048_8192_SHA256,
                _ => panic!("aws-lc-rs verifies PSS from 2048 bits only"),
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
    let s = |k: &str| jwk[k].as_str().unwrap().to_owned();
    let canonical = if jwk["kty"] == "EC" {
        format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            s("crv"),
            s("x"),
            s("y")
        )
    } else {
        format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, s("e"), s("n"))
    };
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()))
}

#[tokio::test]
async fn a_default_signed_request_is_what_entra_sends() {
    let emu = common::start().await;
    let token = emu.mint_pop(&PopOptions::default()).unwrap();
    assert_eq!(token.split('.').count(), 3);
    assert!(!token.contains('='), "base64url without padding");
    assert_eq!(keys_in_order(&token, 0), ["typ", "alg", "kid"]);
    assert_eq!(
        keys_in_order(&token, 1),
        ["at", "ts", "m", "u", "p", "nonce", "cnf"]
    );
    let (h, c) = (json_part(&token, 0), json_part(&token, 1));
    let jwk = &c["cnf"]["jwk"];
    assert_eq!(keys_of(&c["cnf"]), ["jwk"]);
    assert_eq!(keys_of(jwk), ["kty", "n", "e", "alg", "kid"]);
    let tp = thumbprint(jwk);
    assert_eq!(
        (&h["typ"], &h["alg"], &h["kid"]),
        (&json!("pop"), &json!("RS256"), &json!(tp))
    );
    assert_eq!((&jwk["kty"], &jwk["alg"]), (&json!("RSA"), &json!("RS256")));
    assert_eq!(jwk["kid"], tp.as_str());
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(jwk["n"].as_str().unwrap())
            .unwrap()
            .len(),
        256
    );
    assert_eq!(jwk, &emu.pop_key_jwk().unwrap());
    assert_eq!(c["m"], "POST");
    assert_eq!(c["u"], "management.azure.com");
    assert_eq!(
        c["p"],
        "/subscriptions/22222222-3333-4444-5555-666666666666/resourceGroups/rg-accessgate/providers/Microsoft.Logic/workflows/accessgate-elm"
    );
    let nonce = c["nonce"].as_str().unwrap();
    assert!(
        nonce.len() == 32
            && nonce
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    let now = jiff::Timestamp::now().as_second();
    assert!(c["ts"].is_i64() && (c["ts"].as_i64().unwrap() - now).abs() <= 5);
    assert!(
        verify(jwk, "RS256", &token),
        "signature verifies with cnf.jwk"
    );
    assert!(!verify(jwk, "PS256", &token));

    // The inner token: a normal v1 callout token for ARM, bound to the key, valid in the JWKS.
    let at = json_part(&token, 1)["at"].as_str().unwrap().to_owned();
    let claims = at_claims(&token);
    assert_eq!(claims["aud"], "https://management.azure.com");
    assert_eq!(claims["iss"], emu.issuer_v1().as_str());
    assert_eq!(claims["appid"], "810dcf14-1858-4bf2-8134-4c369fa3235b");
    assert_eq!(claims["ver"], "1.0");
    assert_eq!(claims["cnf"], json!({"kid": tp, "xms_ksl": "sw"}));
    let jwks: Value = common::http()
        .get(emu.jwks_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kid = json_part(&at, 0)["kid"].as_str().unwrap().to_string();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("the inner token's key is published");
    assert!(verify(key, "RS256", &at));

    // Every mint is a new request (fresh nonce and signature) by the same cached key.
    let again = emu.mint_pop(&PopOptions::default()).unwrap();
    assert_ne!(token, again);
    assert_ne!(json_part(&again, 1)["nonce"], c["nonce"]);
    assert_eq!(&cnf_jwk(&again), jwk);
}

#[test]
fn thumbprints_follow_rfc_7638() {
    let path = format!(
        "{}/fixtures/rfc7638-example-key.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let expected = fixture["thumbprint"].as_str().unwrap();
    assert_eq!(expected, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    // Optional members (alg, kid) and member order do not matter.
    assert_eq!(jwk_thumbprint(&fixture["jwk"]).unwrap(), expected);
    let bare = json!({"n": fixture["jwk"]["n"], "kty": "RSA", "e": "AQAB"});
    assert_eq!(jwk_thumbprint(&bare).unwrap(), expected);
    assert_eq!(
        thumbprint(&bare),
        expected,
        "the test's own computation agrees"
    );

    for kind in [PopKeyKind::Rsa2048, PopKeyKind::Rsa1024, PopKeyKind::EcP256] {
        let key = PopKey::generate(kind).unwrap();
        assert_eq!(key.kind(), kind);
        let jwk = key.public_jwk();
        assert_eq!(key.thumbprint(), thumbprint(&jwk), "{kind:?}");
        assert_eq!(jwk["kid"], key.thumbprint());
        assert_eq!(jwk_thumbprint(&jwk).unwrap(), key.thumbprint());
    }
    let ec = PopKey::generate(PopKeyKind::EcP256).unwrap().public_jwk();
    assert_eq!(keys_of(&ec), ["kty", "crv", "x", "y", "alg", "kid"]);
    assert_eq!((&ec["crv"], &ec["alg"]), (&json!("P-256"), &json!("ES256")));
    assert!(jwk_thumbprint(&json!({"kty": "oct", "k": "AA"})).is_err());
    assert!(jwk_thumbprint(&json!({"kty": "RSA", "n": "AA"})).is_err());
}

#[tokio::test]
async fn rs256_ps256_es256_and_rsa1024_sign_as_named() {
    let emu = common::start().await;
    let with = |o: PopOptions| emu.mint_pop(&o).unwrap();
    let ps = with(PopOptions {
        alg: Some("PS256".into()),
        ..Default::default()
    });
    assert_eq!(json_part(&ps, 0)["alg"], "PS256");
    assert!(verify(&cnf_jwk(&ps), "PS256", &ps));
    assert!(!verify(&cnf_jwk(&ps), "RS256", &ps));

    let ec = with(PopOptions {
        key: Some(PopKeyKind::EcP256),
        ..Default::default()
    });
    let jwk = cnf_jwk(&ec);
    assert_eq!(json_part(&ec, 0)["alg"], "ES256");
    assert_eq!(
        (jwk["kty"].as_str(), jwk["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );
    assert_eq!(json_part(&ec, 0)["kid"], thumbprint(&jwk).as_str());
    assert_eq!(at_claims(&ec)["cnf"]["kid"], thumbprint(&jwk).as_str());
    assert_eq!(part(&ec, 2).len(), 64, "JWS fixed-width r || s");
    assert!(verify(&jwk, "ES256", &ec));
    let ec2 = with(PopOptions {
        key: Some(PopKeyKind::EcP256),
        ..Default::default()
    });
    assert_eq!(cnf_jwk(&ec2), jwk, "the EC key is cached too");

    // The weak key: a 1024-bit public key in cnf and the binding; its signature cannot verify
    // (there is no private key), which does not matter: a receiver refuses the key first.
    let weak = with(PopOptions {
        key: Some(PopKeyKind::Rsa1024),
        ..Default::default()
    });
    let jwk = cnf_jwk(&weak);
    let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    assert_eq!(n.len(), 128);
    assert_eq!(json_part(&weak, 0)["kid"], thumbprint(&jwk).as_str());
    assert_eq!(at_claims(&weak)["cnf"]["kid"], thumbprint(&jwk).as_str());
    assert_eq!(part(&weak, 2).len(), 128);
    assert_eq!(n[0] & 0x80, 0x80, "a full 1024-bit modulus");
    let weak_other = with(PopOptions {
        key: Some(PopKeyKind::Rsa1024),
        sign_with_other_key: true,
        ..Default::default()
    });
    assert_eq!(cnf_jwk(&weak_other), jwk);
    assert_eq!(part(&weak_other, 2).len(), 128);
    assert!(!verify(&jwk, "RS256", &weak_other));
}

#[test]
fn pop_keys_sign_only_what_fits_them() {
    let rsa = PopKey::generate(PopKeyKind::Rsa2048).unwrap();
    let ec = PopKey::generate(PopKeyKind::EcP256).unwrap();
    let weak = PopKey::generate(PopKeyKind::Rsa1024).unwrap();
    assert_eq!(
        (rsa.default_alg(), ec.default_alg(), weak.default_alg()),
        ("RS256", "ES256", "RS256")
    );
    for alg in ["RS256", "PS256"] {
        assert_eq!(rsa.sign(alg, b"m").unwrap().len(), 256);
        assert_eq!(weak.sign(alg, b"m").unwrap().len(), 128);
        assert!(ec.sign(alg, b"m").is_err(), "{alg} with an EC key");
    }
    assert_eq!(ec.sign("ES256", b"m").unwrap().len(), 64);
    for alg in ["ES256", "HS256", "RS384", "PS512", "none", "rs256", ""] {
        assert!(rsa.sign(alg, b"m").is_err(), "{alg} with an RSA key");
        assert!(weak.sign(alg, b"m").is_err(), "{alg} with the weak key");
    }
    assert!(ec.sign("ES384", b"m").is_err());
    assert!(ec.sign_compact("RS256", "{}", "{}").is_err());

    // Debug names the key, never its material.
    let shown = format!("{rsa:?} {ec:?} {weak:?}");
    assert!(shown.contains(rsa.thumbprint()) && shown.contains("EcP256"));
    for key in [&rsa, &ec, &weak] {
        for member in ["n", "x"] {
            if let Some(v) = key.public_jwk()[member].as_str() {
                assert!(!shown.contains(v));
            }
        }
    }
}

#[tokio::test]
async fn header_and_payload_knobs_do_what_they_say() {
    let emu = common::start().await;
    let mint = |o: PopOptions| emu.mint_pop(&o).unwrap();

    let t = mint(PopOptions {
        typ: Some(Value::Null),
        kid: Some(json!("other")),
        header_extra: obj(json!({"jku": "https://evil.example/keys"})),
        ..Default::default()
    });
    assert_eq!(
        json_part(&t, 0),
        json!({"alg": "RS256", "kid": "other", "jku": "https://evil.example/keys"})
    );
    let t = mint(PopOptions {
        typ: Some(json!("JWT")),
        kid: Some(Value::Null),
        header_extra: obj(json!({"alg": null})),
        ..Default::default()
    });
    assert_eq!(json_part(&t, 0), json!({"typ": "JWT"}));
    assert!(verify(&cnf_jwk(&t), "RS256", &t), "still signed RS256");

    let t = mint(PopOptions {
        ts_offset_secs: Some(-600),
        m: Some(json!("GET")),
        u: Some(Value::Null),
        p: Some(json!("/x")),
        nonce: Some(json!(7)),
        cnf: Some(json!({"jku": "https://evil"})),
        claims_extra: obj(json!({"b": "hash", "at": null})),
        ..Default::default()
    });
    // Removals keep the remaining members in their order; additions go last.
    assert_eq!(keys_in_order(&t, 1), ["ts", "m", "p", "nonce", "cnf", "b"]);
    let c = json_part(&t, 1);
    let now = jiff::Timestamp::now().as_second();
    assert!((c["ts"].as_i64().unwrap() - (now - 600)).abs() <= 5);
    assert_eq!(
        (c["m"].as_str(), c["p"].as_str(), c["nonce"].as_i64()),
        (Some("GET"), Some("/x"), Some(7))
    );
    assert_eq!(c["cnf"], json!({"jku": "https://evil"}));
    assert_eq!(c["b"], "hash");

    let t = mint(PopOptions {
        ts: Some(json!("1700000000")),
        ts_offset_secs: Some(-600),
        ..Default::default()
    });
    assert_eq!(
        json_part(&t, 1)["ts"],
        "1700000000",
        "ts wins over the offset"
    );
    let t = mint(PopOptions {
        ts: Some(Value::Null),
        nonce: Some(Value::Null),
        cnf: Some(Value::Null),
        m: Some(Value::Null),
        p: Some(Value::Null),
        ..Default::default()
    });
    assert_eq!(keys_in_order(&t, 1), ["at", "u"]);
}

#[tokio::test]
async fn signature_knobs_do_what_they_say() {
    let emu = common::start().await;
    let jwk = emu.pop_key_jwk().unwrap();
    let mint = |o: PopOptions| emu.mint_pop(&o).unwrap();
    assert!(
        verify(&jwk, "RS256", &mint(PopOptions::default())),
        "control"
    );

    let t = mint(PopOptions {
        tamper_signature: true,
        ..Default::default()
    });
    assert_eq!(part(&t, 2).len(), 256);
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
    assert_eq!(cnf_jwk(&t), jwk);
    assert_eq!(json_part(&t, 0)["kid"], jwk["kid"]);
    assert_eq!(part(&t, 2).len(), 256);
    assert!(!verify(&jwk, "RS256", &t));
    let t = mint(PopOptions {
        key: Some(PopKeyKind::EcP256),
        sign_with_other_key: true,
        ..Default::default()
    });
    assert_eq!(part(&t, 2).len(), 64);
    assert!(!verify(&cnf_jwk(&t), "ES256", &t));
    for key in [PopKeyKind::Rsa2048, PopKeyKind::EcP256] {
        let t = mint(PopOptions {
            key: Some(key),
            alg: Some("none".into()),
            ..Default::default()
        });
        assert!(t.ends_with('.'));
        assert_eq!(json_part(&t, 0)["alg"], "none");
    }

    // An alg the key cannot make still lands in the header, with a signature that fails.
    let t = mint(PopOptions {
        alg: Some("ES256".into()),
        ..Default::default()
    });
    assert_eq!(json_part(&t, 0)["alg"], "ES256");
    assert_eq!(part(&t, 2).len(), 256);
    assert!(!verify(&jwk, "RS256", &t));
    // HS256 keyed with the public key's canonical JWK text (the algorithm-confusion forgery).
    let t = mint(PopOptions {
        alg: Some("HS256".into()),
        ..Default::default()
    });
    let canonical = format!(
        r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
        jwk["e"].as_str().unwrap(),
        jwk["n"].as_str().unwrap()
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, canonical.as_bytes());
    assert!(aws_lc_rs::hmac::verify(&key, signing_input(&t).as_bytes(), &part(&t, 2)).is_ok());
}

#[tokio::test]
async fn inner_token_knobs_do_what_they_say() {
    let emu = common::start().await;
    let mint = |o: PopOptions| emu.mint_pop(&o).unwrap();
    let t = mint(PopOptions {
        at_cnf: Some(json!({"kid": "someone-else"})),
        ..Default::default()
    });
    assert_eq!(at_claims(&t)["cnf"], json!({"kid": "someone-else"}));
    let t = mint(PopOptions {
        at_cnf: Some(Value::Null),
        ..Default::default()
    });
    assert!(at_claims(&t).get("cnf").is_none());
    let t = mint(PopOptions {
        at: Some(MintOptions {
            audience: Some("api://x".into()),
            extra_claims: obj(json!({"xms_extra": 1})),
            ..Default::default()
        }),
        ..Default::default()
    });
    let at = at_claims(&t);
    assert_eq!(
        (&at["aud"], &at["xms_extra"]),
        (&json!("api://x"), &json!(1))
    );
    assert!(
        at["cnf"]["kid"].is_string(),
        "the binding stays unless removed"
    );
    let t = mint(PopOptions {
        at: Some(MintOptions {
            extra_claims: obj(json!({"cnf": null})),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert!(
        at_claims(&t).get("cnf").is_none(),
        "extra_claims merge last"
    );
    let t = mint(PopOptions {
        at_token: Some("a.b.c".into()),
        ..Default::default()
    });
    assert_eq!(json_part(&t, 1)["at"], "a.b.c");
    assert!(verify(&cnf_jwk(&t), "RS256", &t));
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
    let t = key.sign_compact("PS256", "{}", "\u{1}").unwrap();
    assert_eq!(part(&t, 1), b"\x01");
    assert!(verify(&key.public_jwk(), "PS256", &t));

    let emu = common::start().await;
    let post = |body: String| {
        common::http()
            .post(format!("{}/_emulator/tokens/pop", emu.base_url()))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let resp: Value =
        post(json!({"alg": "PS256", "key": "rsa2048", "claims_extra": {"b": "x"}}).to_string())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let token = resp["token"].as_str().unwrap();
    assert_eq!(json_part(token, 0)["alg"], "PS256");
    assert_eq!(json_part(token, 1)["b"], "x");
    assert!(verify(&cnf_jwk(token), "PS256", token));
    // An empty body means every default.
    let resp: Value = post(String::new()).await.unwrap().json().await.unwrap();
    let token = resp["token"].as_str().unwrap();
    assert_eq!(cnf_jwk(token), emu.pop_key_jwk().unwrap());
    assert!(verify(&cnf_jwk(token), "RS256", token));
    let resp: Value = post(json!({"key": "ecp256"}).to_string())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        json_part(resp["token"].as_str().unwrap(), 0)["alg"],
        "ES256"
    );
    for bad in [json!({"nonsense": 1}), json!({"key": "ecp384"})] {
        assert_eq!(post(bad.to_string()).await.unwrap().status().as_u16(), 400);
    }
}

#[tokio::test]
async fn rsa4096_keys_sign_too() {
    let emu = common::start().await;
    let t = emu
        .mint_pop(&PopOptions {
            key: Some(PopKeyKind::Rsa4096),
            alg: Some("PS256".into()),
            ..Default::default()
        })
        .unwrap();
    let jwk = cnf_jwk(&t);
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(jwk["n"].as_str().unwrap())
            .unwrap()
            .len(),
        512
    );
    assert_eq!(json_part(&t, 0)["kid"], thumbprint(&jwk).as_str());
    assert!(verify(&jwk, "PS256", &t));
}
