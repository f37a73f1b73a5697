//! Legacy bearer ("Regular" token) validation through the real binary: each forged or wrong token is a 401 whose
//! specific reason is logged under the request's correlation id, and nothing is queued.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

async fn post_with(h: &Harness, token: &str) -> (u16, String, Option<String>) {
    let body = flat_body(
        "assignmentRequestCreated",
        "r-auth",
        &uuid::Uuid::new_v4().to_string(),
    );
    post_body_with(h, token, body).await
}

async fn post_body_with(h: &Harness, token: &str, body: String) -> (u16, String, Option<String>) {
    let p = post_raw(
        &h.callout_url(),
        Some(&format!("Bearer {token}")),
        Some("application/json"),
        body.into_bytes(),
    )
    .await;
    (p.status, p.correlation_id, p.challenge)
}

async fn expect_rejected(h: &Harness, name: &str, m: MintOptions, reason: &str) {
    let token = h.token(m);
    let (status, cid, challenge) = post_with(h, &token).await;
    assert_eq!(status, 401, "{name}");
    assert_eq!(
        challenge.as_deref(),
        Some("Bearer error=\"invalid_token\""),
        "{name}"
    );
    h.ag.wait_log(name, |l| {
        l["reason"] == reason && l["correlation_id"] == cid.as_str()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_tokens_are_refused_with_their_specific_reason() {
    let h = Harness::start_bearer("").await;
    let other_tenant = "99999999-2222-3333-4444-555555555555".to_string();
    let cases: Vec<(&str, MintOptions, &str)> = vec![
        (
            "expired",
            MintOptions {
                expires_in_secs: Some(-600),
                ..Default::default()
            },
            "token_expired",
        ),
        (
            "not yet valid",
            MintOptions {
                not_before_offset_secs: Some(600),
                ..Default::default()
            },
            "token_not_yet_valid",
        ),
        (
            "wrong audience",
            MintOptions {
                audience: Some("api://someone-else".into()),
                ..Default::default()
            },
            "wrong_audience",
        ),
        (
            "wrong issuer",
            MintOptions {
                issuer: Some("https://sts.windows.net/evil/".into()),
                ..Default::default()
            },
            "wrong_issuer",
        ),
        (
            "other tenant in iss and tid",
            MintOptions {
                tenant_id: Some(other_tenant.clone()),
                ..Default::default()
            },
            "wrong_issuer",
        ),
        (
            "wrong appid",
            MintOptions {
                app_id: Some("00000000-1111-2222-3333-444444444444".into()),
                ..Default::default()
            },
            "caller_not_allowed",
        ),
        (
            "v2 wrong azp",
            MintOptions {
                app_id: Some("00000000-1111-2222-3333-444444444444".into()),
                issuer_version: Some(IssuerVersion::V2),
                ..Default::default()
            },
            "caller_not_allowed",
        ),
        (
            "unknown kid",
            MintOptions {
                sign_with: Some(SignWith::Unknown),
                ..Default::default()
            },
            "unknown_signing_key",
        ),
        (
            "published kid, other key",
            MintOptions {
                sign_with: Some(SignWith::Unknown),
                kid: Some(h.emu().config().tenant_id.clone()),
                ..Default::default()
            },
            "unknown_signing_key",
        ),
        (
            "bad signature",
            MintOptions {
                tamper_signature: true,
                ..Default::default()
            },
            "bad_signature",
        ),
        (
            "alg none",
            MintOptions {
                alg: Some("none".into()),
                ..Default::default()
            },
            "algorithm_none",
        ),
        (
            "PS256",
            MintOptions {
                alg: Some("PS256".into()),
                ..Default::default()
            },
            "algorithm_not_allowed",
        ),
        (
            "RS512",
            MintOptions {
                alg: Some("RS512".into()),
                ..Default::default()
            },
            "algorithm_not_allowed",
        ),
    ];
    for (name, m, reason) in cases {
        expect_rejected(&h, name, m, reason).await;
    }
    // tid that disagrees with a correct issuer.
    let mut extra = serde_json::Map::new();
    extra.insert("tid".into(), serde_json::json!(other_tenant));
    expect_rejected(
        &h,
        "wrong tid",
        MintOptions {
            extra_claims: Some(extra),
            ..Default::default()
        },
        "wrong_tenant",
    )
    .await;
    let mut extra = serde_json::Map::new();
    extra.insert("exp".into(), serde_json::Value::Null);
    expect_rejected(
        &h,
        "no exp",
        MintOptions {
            extra_claims: Some(extra),
            ..Default::default()
        },
        "missing_claim",
    )
    .await;
    assert!(h.emu().resumes().is_empty());
    assert_eq!(h.job_counts().await, serde_json::json!({}));
}

#[tokio::test(flavor = "multi_thread")]
async fn v1_and_v2_tokens_of_both_callers_are_accepted() {
    let h = Harness::start_bearer("").await;
    for (version, app) in [
        (IssuerVersion::V1, "810dcf14-1858-4bf2-8134-4c369fa3235b"),
        (IssuerVersion::V2, "810dcf14-1858-4bf2-8134-4c369fa3235b"),
        (IssuerVersion::V1, "ce79fdc4-cd1d-4ea5-8139-e74d7dbe0bb7"),
    ] {
        let token = h.token(MintOptions {
            issuer_version: Some(version),
            app_id: Some(app.into()),
            ..Default::default()
        });
        let lcw = app.starts_with("ce79fdc4");
        let (status, _, _) = if lcw {
            post_body_with(
                &h,
                &token,
                LCW_BODY.replace("@ID@", &uuid::Uuid::new_v4().to_string()),
            )
            .await
        } else {
            post_with(&h, &token).await
        };
        assert_eq!(status, 202, "{version:?} {app}");
        if lcw {
            // Each product's caller sends its own product's callouts.
            let (status, _, _) = post_with(&h, &token).await;
            assert_eq!(
                status, 403,
                "an access package callout from Lifecycle Workflows"
            );
        }
    }
}

/// A Lifecycle Workflows task callout (`@ID@`: its processing result).
const LCW_BODY: &str = r#"{"type":"lifecycleEvent","source":"tests","data":{"subject":{"id":"u1"},"task":{"id":"t1"},"workflow":{"id":"w1"},"taskProcessingResult":{"id":"@ID@"}}}"#;

#[tokio::test(flavor = "multi_thread")]
async fn key_rotation_is_picked_up_on_an_unknown_kid_and_refetches_are_rate_limited() {
    let h = Harness::start_bearer("").await;
    let emu = h.emu();
    let (status, _, _) = post_with(&h, &h.token(MintOptions::default())).await;
    assert_eq!(status, 202);
    let before = emu.stats().jwks_fetches;
    // Entra rotates: new callouts are signed with a key we have not seen; it must be fetched.
    emu.rotate_keys(true).await.unwrap();
    let (status, _, _) = post_with(&h, &h.token(MintOptions::default())).await;
    assert_eq!(status, 202, "a rotated key must be picked up");
    let after_rotation = emu.stats().jwks_fetches;
    assert!(
        after_rotation > before,
        "the new kid must trigger a refetch"
    );
    // A flood of unknown kids right after: refused, and no more fetches within the minute.
    for _ in 0..20 {
        let (status, _, _) = post_with(
            &h,
            &h.token(MintOptions {
                sign_with: Some(SignWith::Unknown),
                ..Default::default()
            }),
        )
        .await;
        assert_eq!(status, 401);
    }
    assert_eq!(
        emu.stats().jwks_fetches,
        after_rotation,
        "unknown kids must not cause more than one refetch a minute"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_unavailable_is_a_503_not_a_401() {
    let emu = start_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    // Identity host that does not answer: nothing listens on this loopback port.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let path = write_config_with(
        dir.path(),
        &emu.handle(),
        &format!("audiences = [\"{AUDIENCE}\"]"),
        "",
    );
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        &format!("authority = \"{}\"", emu.base_url()),
        &format!("authority = \"{dead_url}\""),
        1,
    );
    std::fs::write(&path, text).unwrap();
    let ag = Accessgate::spawn(
        &path,
        vec![("ACCESSGATE_CREDENTIALS__CLIENT_SECRET".into(), "x".into())],
        &["serve"],
    )
    .await;
    let token = emu
        .handle()
        .mint_callout_token(&MintOptions::default())
        .unwrap();
    let resp = client()
        .post(ag.url("/api/elm"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(flat_body("assignmentRequestCreated", "r", "s"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    ag.wait_log("keys unavailable", |l| {
        l["reason"] == "signing_keys_unavailable"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_identity_host_is_asked_at_most_every_few_seconds() {
    let h = Harness::start_bearer("").await;
    let emu = h.emu();
    // Keys fetched at start; now metadata and JWKS fail. A flood of unknown kids must still
    // cause at most one refetch, and valid tokens keep working from the cache.
    let (status, _, _) = post_with(&h, &h.token(MintOptions::default())).await;
    assert_eq!(status, 202, "keys are cached before the outage");
    let before = emu.stats().jwks_fetches;
    emu.set_fault(&FaultSpec {
        target: FaultTarget::Jwks,
        status: Some(503),
        retry_after_secs: None,
        count: None,
        delay_ms: None,
        ..Default::default()
    })
    .unwrap();
    for _ in 0..10 {
        let (status, _, _) = post_with(
            &h,
            &h.token(MintOptions {
                sign_with: Some(SignWith::Unknown),
                ..Default::default()
            }),
        )
        .await;
        assert_eq!(status, 401);
    }
    let (status, _, _) = post_with(&h, &h.token(MintOptions::default())).await;
    assert_eq!(status, 202, "cached keys still validate");
    assert_eq!(
        emu.stats().jwks_fetches,
        before + 1,
        "one refetch for the first unknown kid, none after"
    );
}
