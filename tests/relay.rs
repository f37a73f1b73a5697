//! Relay mode: a Logic App with the AADPOP policy validates Entra's PoP and forwards the body
//! with its managed identity's bearer token. accessgate then accepts only that identity.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

const RELAY_AUDIENCE: &str = "api://accessgate-relay";
const MI_CLIENT_ID: &str = "5e1a0000-0000-0000-0000-00000000c11e";
const MI_OBJECT_ID: &str = "5e1a0000-0000-0000-0000-0000000000b1";

async fn relay() -> Harness {
    Harness::start_with(
        &format!(
            "mode = \"relay\"\nrelay_audiences = [\"{RELAY_AUDIENCE}\"]\nrelay_caller_ids = [\"{MI_CLIENT_ID}\", \"{MI_OBJECT_ID}\"]"
        ),
        "",
    )
    .await
}

fn mi_token(h: &Harness, app_id: &str, extra: Option<serde_json::Value>) -> String {
    h.token(MintOptions {
        audience: Some(RELAY_AUDIENCE.into()),
        app_id: Some(app_id.into()),
        extra_claims: extra.and_then(|v| v.as_object().cloned()),
        ..Default::default()
    })
}

async fn post(h: &Harness, auth: &str) -> Posted {
    let body = flat_body(
        "assignmentRequestCreated",
        &uuid::Uuid::new_v4().to_string(),
        &uuid::Uuid::new_v4().to_string(),
    );
    post_raw(
        &h.callout_url(),
        Some(auth),
        Some("application/json"),
        body.into_bytes(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_relaying_managed_identity_is_accepted_by_client_id_or_object_id() {
    let h = relay().await;
    // By client (app) id, v1 and v2 tokens.
    let r = h
        .send(SendOptions {
            auth: AuthScheme::Bearer,
            token: Some(MintOptions {
                audience: Some(RELAY_AUDIENCE.into()),
                app_id: Some(MI_CLIENT_ID.into()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert_eq!(r.status, Some(202), "{r:?}");
    let rec = resumed(&h.emu(), &r.stage_instance_id).await;
    assert_eq!(rec.request_id, r.request_id);
    let v2 = h.token(MintOptions {
        audience: Some(RELAY_AUDIENCE.into()),
        app_id: Some(MI_CLIENT_ID.into()),
        issuer_version: Some(IssuerVersion::V2),
        ..Default::default()
    });
    assert_eq!(post(&h, &format!("Bearer {v2}")).await.status, 202);
    // By object id: a token whose appid is not listed but whose oid is.
    let by_oid = mi_token(
        &h,
        "5e1a0000-0000-0000-0000-00000000ffff",
        Some(serde_json::json!({"oid": MI_OBJECT_ID})),
    );
    let p = post(&h, &format!("Bearer {by_oid}")).await;
    assert_eq!(p.status, 202, "{:?}", p.body);
    h.ag.wait_log("relay caller", |l| {
        l["message"] == "callout accepted and queued" && l["scheme"] == "relay"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_mode_refuses_everyone_but_the_relay() {
    let h = relay().await;
    let other_tenant = "99999999-2222-3333-4444-555555555555";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "Entra's own PoP, bypassing the relay",
            h.pop(PopOptions::default()),
            "pop_not_accepted",
        ),
        (
            "entitlement management's bearer token",
            format!(
                "Bearer {}",
                mi_token(&h, "810dcf14-1858-4bf2-8134-4c369fa3235b", None)
            ),
            "caller_not_allowed",
        ),
        (
            "another managed identity",
            format!(
                "Bearer {}",
                mi_token(&h, "5e1a0000-0000-0000-0000-00000000dead", None)
            ),
            "caller_not_allowed",
        ),
        (
            "the relay's identity for another audience",
            format!(
                "Bearer {}",
                h.token(MintOptions {
                    audience: Some("https://management.azure.com".into()),
                    app_id: Some(MI_CLIENT_ID.into()),
                    ..Default::default()
                })
            ),
            "wrong_audience",
        ),
        (
            "the relay's client id in another tenant",
            format!(
                "Bearer {}",
                h.token(MintOptions {
                    audience: Some(RELAY_AUDIENCE.into()),
                    app_id: Some(MI_CLIENT_ID.into()),
                    tenant_id: Some(other_tenant.into()),
                    ..Default::default()
                })
            ),
            "wrong_issuer",
        ),
        (
            "the relay's token, expired",
            format!(
                "Bearer {}",
                h.token(MintOptions {
                    audience: Some(RELAY_AUDIENCE.into()),
                    app_id: Some(MI_CLIENT_ID.into()),
                    expires_in_secs: Some(-600),
                    ..Default::default()
                })
            ),
            "token_expired",
        ),
        (
            "the relay's token, forged with an unpublished key",
            format!(
                "Bearer {}",
                h.token(MintOptions {
                    audience: Some(RELAY_AUDIENCE.into()),
                    app_id: Some(MI_CLIENT_ID.into()),
                    sign_with: Some(SignWith::Unknown),
                    ..Default::default()
                })
            ),
            "unknown_signing_key",
        ),
    ];
    for (name, auth, reason) in cases {
        let p = post(&h, &auth).await;
        assert_eq!(p.status, 401, "{name}");
        h.ag.wait_log(name, |l| {
            l["reason"] == reason && l["correlation_id"] == p.correlation_id.as_str()
        })
        .await;
    }
    assert_eq!(h.job_counts().await, serde_json::json!({}));
}
