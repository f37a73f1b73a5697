//! Entra-like callout sender: body shapes, registration, client timeout and retry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use accessgate_emulator::sender::{self, CalloutFields};
use accessgate_emulator::{SendOptions, SendReport, Shape};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::Target;
use serde_json::{Value, json};

fn fixture(name: &str) -> Value {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn opts(target: &Target) -> SendOptions {
    SendOptions {
        target_url: target.url.clone(),
        ..SendOptions::default()
    }
}

fn payload_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Claims of the access token in an `Authorization` value: the bearer token itself, or the
/// `at` inside a PoP signed request.
fn claims_of(authorization: &str) -> Value {
    if let Some(token) = authorization.strip_prefix("Bearer ") {
        return payload_of(token);
    }
    let shr = payload_of(authorization.strip_prefix("PoP ").unwrap());
    payload_of(shr["at"].as_str().unwrap())
}

/// Recursively checks that every key of `body` is a property of `schema` (JSON-schema objects).
fn keys_in_schema(body: &Value, schema: &Value, path: &str, missing: &mut Vec<String>) {
    let Some(obj) = body.as_object() else { return };
    let props = &schema["properties"];
    for (key, value) in obj {
        let sub = &props[key];
        if sub.is_null() {
            missing.push(format!("{path}/{key}"));
        } else if value.is_object() {
            keys_in_schema(value, sub, &format!("{path}/{key}"), missing);
        }
    }
}

/// The ELM trigger schema merged with the V2 request-workflow additions.
fn merged_trigger_schema() -> Value {
    fn merge(into: &mut Value, from: &Value) {
        if let (Some(a), Some(b)) = (into.as_object_mut(), from.as_object()) {
            for (key, value) in b {
                match a.get_mut(key) {
                    Some(existing) if existing.is_object() => merge(existing, value),
                    _ => {
                        a.insert(key.clone(), value.clone());
                    }
                }
            }
        }
    }
    let mut schema = fixture("elm-logicapp-trigger-schema.json");
    merge(
        &mut schema,
        &fixture("elm-v2-request-workflow-additions.json"),
    );
    schema
}

#[tokio::test]
async fn accepting_target_gets_one_attempt_with_an_entra_like_callout() {
    let emu = common::start().await;
    let target = Target::start(202, Duration::ZERO).await;
    let report = emu.send_callout(&opts(&target)).await.unwrap();
    assert_eq!(report.status, Some(202));
    assert_eq!(report.attempts, 1);
    assert_eq!(report.error, None);
    assert!(report.latency_ms > 0.0);
    assert_eq!(target.count(), 1);

    assert!(
        target
            .header(0, "content-type")
            .unwrap()
            .starts_with("application/json")
    );
    // PoP by default: the inner token is for management.azure.com and bound to the PoP key.
    let auth = target.header(0, "authorization").unwrap();
    assert!(auth.starts_with("PoP "), "{auth}");
    let shr = payload_of(auth.strip_prefix("PoP ").unwrap());
    let claims = claims_of(&auth);
    assert_eq!(claims["aud"], "https://management.azure.com");
    assert_eq!(claims["appid"], "810dcf14-1858-4bf2-8134-4c369fa3235b");
    assert_eq!(claims["cnf"]["kid"], shr["cnf"]["jwk"]["kid"]);
    assert_eq!(shr["m"], "POST");
    assert_eq!(shr["u"], "management.azure.com");
    assert_eq!(shr["p"], emu.config().logic_app_resource.as_str());

    let body = target.body(0);
    assert_eq!(
        body["AccessPackageAssignmentRequestId"],
        report.request_id.as_str()
    );
    assert_eq!(
        body["CustomExtensionStageInstanceId"],
        report.stage_instance_id.as_str()
    );
    assert_eq!(body["Stage"], "assignmentRequestCreated");
    assert_eq!(
        body["CallbackUriPath"],
        format!(
            "/identityGovernance/entitlementManagement/assignmentRequests/{}/resume",
            report.request_id
        )
    );
    assert_eq!(
        body["CallbackConfiguration"]["DurationBeforeTimeout"],
        "PT1H"
    );

    let view = emu.request(&report.request_id).unwrap();
    assert_eq!(view.status, "WaitingForCallback");
    assert_eq!(view.callouts[0].stage_instance_id, report.stage_instance_id);
}

#[tokio::test]
async fn slow_target_gets_two_attempts() {
    let emu = common::start().await;
    let target = Target::start(202, Duration::from_millis(1500)).await;
    let report = emu.send_callout(&opts(&target)).await.unwrap();
    assert_eq!(report.attempts, 2);
    assert_eq!(report.status, None);
    assert!(
        report.error.as_deref().unwrap().contains("timeout"),
        "{report:?}"
    );
    assert!(report.latency_ms >= 1900.0, "{report:?}");
    assert!(report.latency_ms < 4000.0, "{report:?}");
    assert_eq!(target.count(), 2);
    // Both attempts carry the same callout.
    assert_eq!(target.body(0), target.body(1));
}

#[tokio::test]
async fn each_attempt_carries_a_fresh_signed_request() {
    let emu = common::start().await;
    let target = Target::start(503, Duration::ZERO).await;
    let report = emu.send_callout(&opts(&target)).await.unwrap();
    assert_eq!(report.attempts, 2);
    let (a, b) = (
        target.header(0, "authorization").unwrap(),
        target.header(1, "authorization").unwrap(),
    );
    assert!(a.starts_with("PoP ") && b.starts_with("PoP "));
    assert_ne!(a, b, "a receiver refuses a replayed signed request");
    let (pa, pb) = (
        payload_of(a.strip_prefix("PoP ").unwrap()),
        payload_of(b.strip_prefix("PoP ").unwrap()),
    );
    assert_ne!(pa["nonce"], pb["nonce"]);
    assert_eq!(target.body(0), target.body(1));
}

/// RS256 signature of a PoP token checked with its own `cnf.jwk`, independently of the emulator.
fn pop_signature_verifies(shr: &str) -> bool {
    let jwk = payload_of(shr)["cnf"]["jwk"].clone();
    let b = |k: &str| URL_SAFE_NO_PAD.decode(jwk[k].as_str().unwrap()).unwrap();
    let (input, sig) = shr.rsplit_once('.').unwrap();
    aws_lc_rs::signature::RsaPublicKeyComponents {
        n: b("n"),
        e: b("e"),
    }
    .verify(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        input.as_bytes(),
        &URL_SAFE_NO_PAD.decode(sig).unwrap(),
    )
    .is_ok()
}

#[tokio::test]
async fn a_retry_after_500_carries_a_new_valid_signed_request() {
    let emu = common::start().await;
    let target = Target::start_with(&[500, 202], Duration::ZERO).await;
    let report = emu.send_callout(&opts(&target)).await.unwrap();
    assert_eq!(
        (report.status, report.attempts, report.error),
        (Some(202), 2, None)
    );
    let shrs: Vec<String> = (0..2)
        .map(|i| {
            let auth = target.header(i, "authorization").unwrap();
            auth.strip_prefix("PoP ").expect("PoP scheme").to_owned()
        })
        .collect();
    assert_ne!(shrs[0], shrs[1]);
    let now = jiff::Timestamp::now().as_second();
    for shr in &shrs {
        assert!(pop_signature_verifies(shr));
        let p = payload_of(shr);
        assert!((p["ts"].as_i64().unwrap() - now).abs() <= 5);
        assert_eq!(
            claims_of(&format!("PoP {shr}"))["cnf"]["kid"],
            p["cnf"]["jwk"]["kid"]
        );
    }
    assert_ne!(payload_of(&shrs[0])["nonce"], payload_of(&shrs[1])["nonce"]);
    assert_eq!(target.body(0), target.body(1));
}

#[tokio::test]
async fn pop_options_and_bearer_reach_the_target_through_every_backend() {
    let emu = common::start().await;
    let target = Target::start(202, Duration::ZERO).await;
    let pop = accessgate_emulator::PopOptions {
        m: Some(json!("PUT")),
        key: Some(accessgate_emulator::PopKeyKind::EcP256),
        ..Default::default()
    };
    // In process, over the send route, and by the free function through the emulator's URL.
    emu.send_callout(&SendOptions {
        pop: Some(pop.clone()),
        ..opts(&target)
    })
    .await
    .unwrap();
    let resp = common::http()
        .post(format!("{}/_emulator/callouts/send", emu.base_url()))
        .json(&json!({"target_url": target.url, "pop": {"m": "PUT", "key": "ecp256"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    sender::send_callout(&SendOptions {
        emulator_url: Some(emu.base_url()),
        pop: Some(pop),
        ..opts(&target)
    })
    .await
    .unwrap();
    for i in 0..3 {
        let auth = target.header(i, "authorization").unwrap();
        let shr = payload_of(auth.strip_prefix("PoP ").unwrap());
        assert_eq!(
            (shr["m"].as_str(), shr["cnf"]["jwk"]["kty"].as_str()),
            (Some("PUT"), Some("EC")),
            "{i}"
        );
    }

    // Bearer: a plain callout token (default audience), minted locally or remotely.
    let resp = common::http()
        .post(format!("{}/_emulator/callouts/send", emu.base_url()))
        .json(&json!({"target_url": target.url, "auth": "bearer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    sender::send_callout(&SendOptions {
        emulator_url: Some(emu.base_url()),
        auth: accessgate_emulator::AuthScheme::Bearer,
        ..opts(&target)
    })
    .await
    .unwrap();
    for i in 3..5 {
        let auth = target.header(i, "authorization").unwrap();
        assert!(auth.starts_with("Bearer "), "{auth}");
        let claims = claims_of(&auth);
        assert_eq!(claims["aud"], "api://accessgate");
        assert!(claims.get("cnf").is_none());
    }
}

#[tokio::test]
async fn failing_target_gets_two_attempts() {
    let emu = common::start().await;
    let target = Target::start(503, Duration::ZERO).await;
    let report = emu.send_callout(&opts(&target)).await.unwrap();
    assert_eq!(report.attempts, 2);
    assert_eq!(report.status, Some(503));
    assert!(report.error.is_some());
    assert_eq!(target.count(), 2);
}

#[tokio::test]
async fn client_errors_and_refused_connections() {
    let emu = common::start().await;
    let target = Target::start(401, Duration::ZERO).await;
    let report = emu.send_callout(&opts(&target)).await.unwrap();
    assert_eq!(
        (report.status, report.attempts),
        (Some(401), 1),
        "4xx is not retried"
    );

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let report = emu
        .send_callout(&SendOptions {
            target_url: format!("http://127.0.0.1:{port}/callout"),
            maximum_retries: Some(0),
            ..SendOptions::default()
        })
        .await
        .unwrap();
    assert_eq!((report.status, report.attempts), (None, 1));
    assert!(report.error.unwrap().contains("connection"));
}

#[tokio::test]
async fn flat_body_matches_the_elm_trigger_schema() {
    let schema = merged_trigger_schema();
    let fields = CalloutFields::from_options(&SendOptions::default());
    let body = sender::flat_body(&fields);
    let mut missing = Vec::new();
    keys_in_schema(&body, &schema, "", &mut missing);
    assert!(
        missing.is_empty(),
        "keys not in the trigger schema: {missing:?}"
    );
    // Every top-level property of the schema is sent for a request stage.
    let sent: BTreeSet<&String> = body.as_object().unwrap().keys().collect();
    let declared: BTreeSet<&String> = schema["properties"].as_object().unwrap().keys().collect();
    assert_eq!(sent, declared);
    for key in ["Id", "Target", "State", "Status", "AssignmentPolicy"] {
        assert!(body["Assignment"].get(key).is_some(), "Assignment.{key}");
    }
    for key in ["ConnectedOrganization", "Id", "ObjectId", "DisplayName"] {
        assert!(
            body["Assignment"]["Target"].get(key).is_some(),
            "Target.{key}"
        );
    }
    assert!(body["Answers"].is_array());
    let stage = body["Stage"].as_str().unwrap();
    assert!(accessgate_emulator::graph::STAGES.contains(&stage));
}

#[tokio::test]
async fn envelope_body_matches_the_documented_callout_data() {
    let docs = fixture("graph-v1.0-resume-extract.json")["x-docs-only-types"].clone();
    let fields = CalloutFields::from_options(&SendOptions::default());
    let body = sender::envelope_body(&fields);
    let top: BTreeSet<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(top, BTreeSet::from(["source", "type", "data"]));
    let data = body["data"].as_object().unwrap();
    assert_eq!(
        data["@odata.type"],
        "#microsoft.graph.accessPackageAssignmentRequestCalloutData"
    );
    let doc = &docs["microsoft.graph.accessPackageAssignmentRequestCalloutData"];
    let mut declared: BTreeSet<&str> = doc["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    declared.extend(
        doc["relationships"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str),
    );
    declared.insert("@odata.type");
    let sent: BTreeSet<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(sent, declared);
    let callback = &data["callbackConfiguration"];
    let schema_props = fixture("graph-v1.0-resume-extract.json")["components"]["schemas"]
        ["microsoft.graph.customExtensionCallbackConfiguration"]["properties"]
        .clone();
    assert!(schema_props.get("timeoutDuration").is_some());
    assert_eq!(callback["timeoutDuration"], "PT1H");

    // Pre-expiration: accessPackageAssignmentCalloutData, no callbackUriPath.
    let pre = sender::envelope_body(&CalloutFields::from_options(&SendOptions {
        stage: Some("assignmentFourteenDaysBeforeExpiration".into()),
        ..SendOptions::default()
    }));
    let doc = &docs["microsoft.graph.accessPackageAssignmentCalloutData"];
    let mut declared: BTreeSet<&str> = doc["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    declared.extend(
        doc["relationships"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str),
    );
    declared.insert("@odata.type");
    let sent: BTreeSet<&str> = pre["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(sent, declared);
    assert_eq!(
        pre["data"]["@odata.type"],
        "#microsoft.graph.accessPackageAssignmentCalloutData"
    );
}

#[tokio::test]
async fn pre_expiration_and_connection_test_are_sent_but_not_registered() {
    let emu = common::start().await;
    let target = Target::start(202, Duration::ZERO).await;
    let stages = [
        "assignmentFourteenDaysBeforeExpiration",
        "assignmentOneDayBeforeExpiration",
        "CustomExtensionConnectionTest",
    ];
    let mut index = 0;
    for stage in stages {
        for shape in [Shape::Flat, Shape::Envelope] {
            let report = emu
                .send_callout(&SendOptions {
                    stage: Some(stage.into()),
                    shape,
                    ..opts(&target)
                })
                .await
                .unwrap();
            assert_eq!(report.status, Some(202));
            assert!(
                emu.request(&report.request_id).is_none(),
                "{stage} is not registered"
            );
            let body = target.body(index);
            index += 1;
            match shape {
                Shape::Flat => {
                    assert_eq!(body["Stage"], stage);
                    assert!(body.get("CallbackUriPath").is_none(), "{stage}");
                    let mut missing = Vec::new();
                    keys_in_schema(&body, &merged_trigger_schema(), "", &mut missing);
                    assert!(missing.is_empty(), "{missing:?}");
                }
                Shape::Envelope => {
                    assert_eq!(body["data"]["stage"], stage);
                    assert!(body["data"].get("callbackUriPath").is_none(), "{stage}");
                }
                Shape::Lifecycle => unreachable!("not sent in this loop"),
            }
        }
    }
}

#[tokio::test]
async fn authorization_and_body_overrides_are_sent_verbatim() {
    let emu = common::start().await;
    let target = Target::start(202, Duration::ZERO).await;
    emu.send_callout(&SendOptions {
        authorization: Some(String::new()),
        ..opts(&target)
    })
    .await
    .unwrap();
    assert_eq!(target.header(0, "authorization"), None);

    emu.send_callout(&SendOptions {
        authorization: Some("PoP abc.def.ghi".into()),
        body: Some(r#"{"hello":"world"}"#.into()),
        ..opts(&target)
    })
    .await
    .unwrap();
    assert_eq!(
        target.header(1, "authorization").as_deref(),
        Some("PoP abc.def.ghi")
    );
    assert_eq!(target.body(1), json!({"hello": "world"}));

    emu.send_callout(&SendOptions {
        auth: accessgate_emulator::AuthScheme::Bearer,
        token: Some(accessgate_emulator::MintOptions {
            audience: Some("api://custom".into()),
            ..Default::default()
        }),
        ..opts(&target)
    })
    .await
    .unwrap();
    assert_eq!(
        claims_of(&target.header(2, "authorization").unwrap())["aud"],
        "api://custom"
    );
}

#[tokio::test]
async fn send_route_and_remote_library_sender_register_and_resume() {
    let emu = common::start().await;
    let target = Target::start(202, Duration::ZERO).await;

    // Over HTTP: POST /_emulator/callouts/send.
    let resp = common::http()
        .post(format!("{}/_emulator/callouts/send", emu.base_url()))
        .json(&json!({"target_url": target.url, "shape": "envelope", "stage": "assignmentRequestApproved", "timeout": "PT2H"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let report: SendReport = resp.json().await.unwrap();
    assert_eq!((report.status, report.attempts), (Some(202), 1));
    let body = target.body(0);
    assert_eq!(body["data"]["stage"], "assignmentRequestApproved");
    assert_eq!(
        body["data"]["callbackConfiguration"]["timeoutDuration"],
        "PT2H"
    );
    assert_eq!(
        emu.request(&report.request_id).unwrap().callouts[0].stage,
        "assignmentRequestApproved"
    );

    // The free function, through a running emulator's URL.
    let report = sender::send_callout(&SendOptions {
        emulator_url: Some(emu.base_url()),
        stage: Some("assignmentRequestGranted".into()),
        ..opts(&target)
    })
    .await
    .unwrap();
    assert_eq!(report.status, Some(202));
    let body = target.body(1);
    assert!(emu.request(&report.request_id).is_some());

    // Resume exactly as accessgate would: {graph}/v1.0 + CallbackUriPath.
    let token = common::graph_token(&emu).await;
    let resp = common::http()
        .post(format!(
            "{}/v1.0{}",
            emu.graph_url(),
            body["CallbackUriPath"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .json(&common::resume_body(
            body["Stage"].as_str().unwrap(),
            body["CustomExtensionStageInstanceId"].as_str().unwrap(),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(
        emu.request(&report.request_id).unwrap().callouts[0].status,
        "callbackReceived"
    );

    // Without an emulator there is nothing to mint with.
    let err = sender::send_callout(&opts(&target)).await.unwrap_err();
    assert!(err.to_string().contains("emulator_url"));
    let bad = common::http()
        .post(format!("{}/_emulator/callouts/send", emu.base_url()))
        .json(&json!({"target_url": target.url, "timeout": "forever"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}
