//! Callout intake through the real binary: both wire shapes for every stage, the connection test,
//! and every kind of bad input (each a 4xx with a reason code logged under its correlation id,
//! and no job).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

const STAGES: [&str; 6] = [
    "assignmentRequestCreated",
    "assignmentRequestApproved",
    "assignmentRequestGranted",
    "assignmentRequestRemoved",
    "assignmentFourteenDaysBeforeExpiration",
    "assignmentOneDayBeforeExpiration",
];

#[tokio::test(flavor = "multi_thread")]
async fn every_stage_in_both_wire_shapes_is_acknowledged_and_handled() {
    let h = Harness::start("").await;
    let emu = h.emu();
    let mut waiting = Vec::new();
    for shape in [Shape::Flat, Shape::Envelope] {
        for stage in STAGES {
            let r = h
                .send(SendOptions {
                    shape,
                    stage: Some(stage.into()),
                    ..Default::default()
                })
                .await;
            assert_eq!(r.status, Some(202), "{shape:?} {stage}: {r:?}");
            assert_eq!(r.attempts, 1);
            let job =
                h.ag.wait_log("job done", |v| {
                    v["stage_instance_id"] == r.stage_instance_id.as_str()
                        && (v["message"] == "resumed"
                            || v["message"] == "notification only: this stage gets no resume")
                })
                .await;
            if stage.contains("Expiration") {
                assert_eq!(
                    job["message"],
                    "notification only: this stage gets no resume"
                );
            } else {
                waiting.push(r.stage_instance_id.clone());
            }
        }
    }
    for sid in &waiting {
        let rec = resumed(&emu, sid).await;
        assert_eq!(rec.state, None, "policy default is continue");
    }
    // Only request stages are resumed: 4 stages x 2 shapes.
    assert_eq!(emu.resumes().len(), 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_test_is_acknowledged_and_unsupported_callouts_are_refused_not_queued() {
    let h = Harness::start("").await;
    let r = h
        .send(SendOptions {
            stage: Some("CustomExtensionConnectionTest".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(r.status, Some(202));
    // A stage accessgate does not handle promises a callback it would never make: 422, named.
    let body = flat_body("assignmentRequestSomethingNew", "r-new", "s-new");
    let (status, v, _) = post(
        &h,
        Some(h.pop(PopOptions::default())),
        Some("application/json"),
        body.into_bytes(),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["code"], "unsupported_callout", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("assignmentRequestSomethingNew"),
        "{v}"
    );
    // A Lifecycle Workflows task callout signed for the entitlement-management extension is
    // refused (the task extension is another extension), never queued.
    let lcw = br#"{"type":"lifecycleEvent","source":"sample","data":{"callbackUriPath":"/identityGovernance/lifecycleWorkflows/workflows/w/tasks/t/taskProcessingResults/r/resume","subject":{"id":"u","manager":{"id":"m"}},"task":{"id":"t","displayName":"Send to ServiceNow"},"taskProcessingResult":{"id":"r","createdDateTime":"2026-12-04T00:00:00Z"},"workflow":{"id":"w","displayName":"Leaver","workflowVerson":1}}}"#;
    let (status, v, _) = post(
        &h,
        Some(h.pop(PopOptions::default())),
        Some("application/json"),
        lcw.to_vec(),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lifecycle_workflows")
    );
    // An authenticated object with no stage, ids or callback (an undocumented endpoint test): 202.
    let (status, v, _) = post(
        &h,
        Some(h.pop(PopOptions::default())),
        Some("application/json"),
        br#"{"source":"x"}"#.to_vec(),
    )
    .await;
    assert_eq!((status, v["status"].as_str()), (202, Some("ignored")));
    h.ag.wait_log("connection test", |v| {
        v["message"] == "connection test acknowledged"
    })
    .await;
    h.ag.wait_log("ignored", |v| {
        v["message"] == "a body with no stage, ids or callback acknowledged and ignored"
    })
    .await;
    h.ag.wait_log("the refusal", |v| v["reason"] == "unsupported_callout")
        .await;
    let counts = h.job_counts().await;
    assert_eq!(counts, serde_json::json!({}), "nothing queued: {counts}");
}

/// Posts a body with headers; returns status, JSON body and correlation id.
async fn post(
    h: &Harness,
    auth: Option<String>,
    ct: Option<&str>,
    body: Vec<u8>,
) -> (u16, serde_json::Value, String) {
    let p = post_raw(&h.callout_url(), auth.as_deref(), ct, body).await;
    assert!(
        !p.correlation_id.is_empty(),
        "every answer names its correlation id"
    );
    (p.status, p.body, p.correlation_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_4xx_with_a_reason_logged_under_its_correlation_id_and_no_job() {
    let h = Harness::start("").await;
    // A PoP signed request is single-use: every case gets a fresh one.
    let good = || h.pop(PopOptions::default());
    let body = flat_body("assignmentRequestCreated", "r1", "s1");
    let json = Some("application/json");
    let mut huge = b"{\"pad\":\"".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 1024 * 1024 + 10));
    huge.extend(b"\"}");
    // (name, authorization, content type, body, status, public code, logged reason)
    type Case<'a> = (
        &'a str,
        Option<String>,
        Option<&'a str>,
        Vec<u8>,
        u16,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        ("malformed JSON", Some(good()), json, b"{\"Stage\":".to_vec(), 400, "malformed_json", "malformed_json"),
        ("not an object", Some(good()), json, b"[1,2]".to_vec(), 400, "not_an_object", "not_an_object"),
        ("wrong content type", Some(good()), Some("text/plain"), body.clone().into_bytes(), 415, "unsupported_media_type", "unsupported_media_type"),
        ("body over 1 MiB", Some(good()), json, huge, 413, "body_too_large", "body_too_large"),
        ("missing stage instance id", Some(good()), json,
            br#"{"Stage":"assignmentRequestCreated","AccessPackageAssignmentRequestId":"r"}"#.to_vec(), 400, "missing_field", "missing_field"),
        ("missing request id", Some(good()), json,
            br#"{"Stage":"assignmentRequestCreated","CustomExtensionStageInstanceId":"s"}"#.to_vec(), 400, "missing_field", "missing_field"),
        ("missing stage", Some(good()), json,
            br#"{"CustomExtensionStageInstanceId":"s","AccessPackageAssignmentRequestId":"r"}"#.to_vec(), 400, "missing_field", "missing_field"),
        ("stage of the wrong type", Some(good()), json,
            br#"{"Stage":{"x":1},"CustomExtensionStageInstanceId":"s","AccessPackageAssignmentRequestId":"r"}"#.to_vec(), 400, "invalid_field", "invalid_field"),
        // The OpenAPI description types these as strings: a number is refused, not coerced.
        ("stage as a number", Some(good()), json,
            br#"{"Stage":7,"CustomExtensionStageInstanceId":"s","AccessPackageAssignmentRequestId":"r"}"#.to_vec(), 400, "invalid_field", "invalid_field"),
        ("stage instance id as a number", Some(good()), json,
            br#"{"Stage":"assignmentRequestCreated","CustomExtensionStageInstanceId":12,"AccessPackageAssignmentRequestId":"r"}"#.to_vec(), 400, "invalid_field", "invalid_field"),
        // Duplicate members, as in tokens: two readers could see two different callouts.
        ("duplicate member", Some(good()), json,
            br#"{"Stage":"assignmentRequestCreated","CustomExtensionStageInstanceId":"s","AccessPackageAssignmentRequestId":"r","AccessPackageAssignmentRequestId":"r2"}"#.to_vec(), 400, "duplicate_member", "duplicate_member"),
        ("duplicate member in data", Some(good()), json,
            br#"{"type":"x","data":{"stage":"assignmentRequestCreated","stage":"assignmentRequestApproved","customExtensionStageInstanceId":"s","accessPackageAssignmentRequestId":"r"}}"#.to_vec(), 400, "duplicate_member", "duplicate_member"),
        // Members are read whatever their case: two spellings in one object are ambiguous.
        ("Stage and stage", Some(good()), json,
            br#"{"Stage":"assignmentRequestCreated","stage":"assignmentRequestApproved","CustomExtensionStageInstanceId":"s","AccessPackageAssignmentRequestId":"r"}"#.to_vec(), 400, "ambiguous_member", "ambiguous_member"),
        ("two casings of an id in data", Some(good()), json,
            br#"{"type":"x","data":{"stage":"assignmentRequestCreated","customExtensionStageInstanceId":"s","CustomExtensionStageInstanceId":"s2","accessPackageAssignmentRequestId":"r"}}"#.to_vec(), 400, "ambiguous_member", "ambiguous_member"),
        ("data and Data", Some(good()), json,
            br#"{"type":"x","data":{"stage":"assignmentRequestCreated","customExtensionStageInstanceId":"s","accessPackageAssignmentRequestId":"r"},"Data":{}}"#.to_vec(), 400, "ambiguous_member", "ambiguous_member"),
        ("id with path characters", Some(good()), json,
            br#"{"Stage":"assignmentRequestCreated","CustomExtensionStageInstanceId":"s","AccessPackageAssignmentRequestId":"../users"}"#.to_vec(), 400, "invalid_field", "invalid_field"),
        ("no Authorization", None, json, body.clone().into_bytes(), 401, "unauthorized", "missing_authorization"),
        ("garbled Authorization", Some("PoP".into()), json, body.clone().into_bytes(), 401, "unauthorized", "malformed_authorization"),
        ("Basic scheme", Some("Basic dXNlcjpwYXNz".into()), json, body.clone().into_bytes(), 401, "unauthorized", "unsupported_scheme"),
        ("not a JWT", Some("PoP not.a.jwt".into()), json, body.clone().into_bytes(), 401, "unauthorized", "pop_not_base64url"),
        ("bearer in direct mode", Some(format!("Bearer {}", h.token(MintOptions::default()))), json, body.clone().into_bytes(), 401, "unauthorized", "bearer_not_accepted"),
    ];
    for (name, auth, ct, body, status, public, reason) in cases {
        let (got, v, cid) = post(&h, auth, ct, body).await;
        assert_eq!(got, status, "{name}: {v}");
        assert_eq!(v["error"]["code"], public, "{name}");
        assert_eq!(v["error"]["correlationId"], cid.as_str(), "{name}");
        let line =
            h.ag.wait_log(name, |l| {
                l["reason"] == reason && l["correlation_id"] == cid.as_str()
            })
            .await;
        assert!(line["level"] == "WARN", "{name}: {line}");
    }
    let counts = h.job_counts().await;
    assert_eq!(
        counts,
        serde_json::json!({}),
        "no job may be queued by bad input: {counts}"
    );
    assert!(h.emu().resumes().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn capture_keeps_the_body_and_token_summary_but_never_the_token() {
    let h = Harness::start("[capture]\nenabled = true\n").await;
    let auth = h.pop(PopOptions::default());
    let token = auth.trim_start_matches("PoP ").to_string();
    let body = flat_body("assignmentRequestCreated", "r-cap", "s-cap");
    let (status, _, cid) = post(
        &h,
        Some(auth.clone()),
        Some("application/json"),
        body.into_bytes(),
    )
    .await;
    assert_eq!(status, 202);
    let dir = h.dir.path().join("data/capture");
    let file = eventually(10, "capture file", || {
        std::fs::read_dir(&dir)
            .ok()?
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().contains(&cid))
    })
    .await;
    let text = std::fs::read_to_string(file.path()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["body"]["CustomExtensionStageInstanceId"], "s-cap");
    assert_eq!(v["token"]["aud"], "https://management.azure.com");
    assert_eq!(v["token"]["appid"], "810dcf14-1858-4bf2-8134-4c369fa3235b");
    assert!(v["token"]["header"]["kid"].is_string());
    assert_eq!(v["token"]["pop"]["header"]["typ"], "pop");
    assert_eq!(v["token"]["pop"]["extension"], "elm");
    assert_eq!(v["token"]["pop"]["u"], "management.azure.com");
    assert_eq!(
        v["token"]["pop"]["p"],
        h.emu().config().logic_app_resource.as_str()
    );
    // Neither the signed request, its signature, nor the inner access token or its signature.
    let payload: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let at = payload["at"].as_str().unwrap();
    for secret in [
        token.as_str(),
        token.rsplit('.').next().unwrap(),
        at,
        at.rsplit('.').next().unwrap(),
    ] {
        assert!(
            !text.contains(secret),
            "capture must not contain tokens or signatures"
        );
    }
}
