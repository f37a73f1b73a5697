//! Graph stand-in: resume state machine, validation, timeouts, faults, GET request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use accessgate_emulator::graph::{
    CALLBACK_DATA_ODATA_TYPE, CALLBACK_DATA_PROPERTIES, CALLOUT_INSTANCE_STATUSES, DENIABLE_STAGES,
    REQUEST_STAGES, RESUME_PARAMETERS, RESUME_STATES, STAGES, validate_resume_body,
};
use accessgate_emulator::{FaultSpec, FaultTarget, MintOptions, RegisterRequest};
use serde_json::{Value, json};

const REQ: &str = "6a1d2b2c-0000-4000-8000-000000000001";
const SII: &str = "957d0c50-466b-4840-bb5b-c92cea7141ff";

fn fixture(name: &str) -> Value {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn register(emu: &accessgate_emulator::RunningEmulator, stage: &str, timeout: &str) {
    emu.register_request(&RegisterRequest {
        id: Some(REQ.into()),
        stage: Some(stage.into()),
        stage_instance_id: Some(SII.into()),
        timeout: Some(timeout.into()),
        request_type: None,
    })
    .unwrap();
}

async fn control_view(emu: &accessgate_emulator::RunningEmulator, id: &str) -> Value {
    let resp = common::http()
        .get(format!("{}/_emulator/requests/{id}", emu.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn graph_get(
    emu: &accessgate_emulator::RunningEmulator,
    token: &str,
    id: &str,
) -> (u16, Value) {
    let resp = common::http()
        .get(format!(
            "{}/v1.0/identityGovernance/entitlementManagement/assignmentRequests/{id}",
            emu.base_url()
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn resume_happy_path_leaves_waiting_for_callback() {
    let emu = common::start().await;
    let token = common::graph_token(&emu).await;
    // Registration over HTTP, as the contract describes.
    let resp = common::http()
        .post(format!("{}/_emulator/requests", emu.base_url()))
        .json(&json!({"id": REQ, "stage": "assignmentRequestCreated", "stage_instance_id": SII, "timeout": "PT1H"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    let (status, before) = graph_get(&emu, &token, REQ).await;
    assert_eq!(status, 200);
    assert_eq!(before["status"], "WaitingForCallback");
    assert_eq!(before["customExtensionCalloutInstances"][0]["id"], SII);
    assert_eq!(
        before["customExtensionCalloutInstances"][0]["status"],
        "waitingForCallback"
    );

    let (status, body) = common::post_resume(
        &emu,
        &token,
        REQ,
        &common::resume_body("assignmentRequestCreated", SII),
    )
    .await;
    assert_eq!(status, 204, "{body}");

    let (_, after) = graph_get(&emu, &token, REQ).await;
    assert_ne!(after["status"], "WaitingForCallback");
    let instance = &after["customExtensionCalloutInstances"][0];
    assert_eq!(instance["status"], "callbackReceived");
    assert_eq!(instance["detail"], "checked by tests");
    for member in [
        "id",
        "status",
        "detail",
        "customExtensionId",
        "externalCorrelationId",
    ] {
        assert!(instance.get(member).is_some(), "{member}");
    }

    let view = control_view(&emu, REQ).await;
    assert_eq!(view["status"], after["status"]);
    assert_eq!(view["resume_calls"], 1);
    assert_eq!(view["callouts"][0]["decision"], "continue");
    assert_eq!(view["callouts"][0]["status"], "callbackReceived");
    assert_eq!(view["callouts"][0]["stage"], "assignmentRequestCreated");

    let resumes: Value = common::http()
        .get(format!("{}/_emulator/resumes", emu.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resumes.as_array().unwrap().len(), 1);
    assert_eq!(resumes[0]["request_id"], REQ);
    assert_eq!(resumes[0]["stage_instance_id"], SII);
    assert_eq!(resumes[0]["state"], Value::Null);
    assert!(resumes[0]["at"].is_string());

    let stats: Value = common::http()
        .get(format!("{}/_emulator/stats", emu.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["resume_calls"], 1);
    assert_eq!(stats["resume_accepted"], 1);
    assert_eq!(stats["resume_rejected"], 0);
}

#[tokio::test]
async fn deny_is_recorded_and_second_resume_is_not_waiting() {
    let emu = common::start().await;
    let token = common::graph_token(&emu).await;
    register(&emu, "assignmentRequestApproved", "PT1H");
    let mut body = common::resume_body("assignmentRequestApproved", SII);
    body["data"]["state"] = json!("denied");
    let (status, _) = common::post_resume(&emu, &token, REQ, &body).await;
    assert_eq!(status, 204);
    let view = emu.request(REQ).unwrap();
    assert_eq!(view.callouts[0].decision.as_deref(), Some("denied"));
    assert_eq!(view.status, "Denied");

    let (status, err) = common::post_resume(&emu, &token, REQ, &body).await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], "BadRequest");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not waiting for callback")
    );
    assert_eq!(emu.stats().resume_rejected, 1);
    assert_eq!(emu.request(REQ).unwrap().resume_calls, 2);
    assert_eq!(emu.resumes().len(), 1);
}

#[tokio::test]
async fn beta_and_action_name_paths_resume_too() {
    let emu = common::start().await;
    let token = common::graph_token(&emu).await;
    for (i, path) in [
        "v1.0/identityGovernance/entitlementManagement/assignmentRequests/{id}/microsoft.graph.resume",
        "beta/identityGovernance/entitlementManagement/assignmentRequests/{id}/resume",
        "beta/identityGovernance/entitlementManagement/accessPackageAssignmentRequests/{id}/resume",
    ]
    .iter()
    .enumerate()
    {
        let id = format!("00000000-0000-0000-0000-00000000000{i}");
        let sii = format!("11111111-0000-0000-0000-00000000000{i}");
        emu.register_request(&RegisterRequest {
            id: Some(id.clone()),
            stage_instance_id: Some(sii.clone()),
            ..RegisterRequest::default()
        })
        .unwrap();
        let resp = common::http()
            .post(format!("{}/{}", emu.base_url(), path.replace("{id}", &id)))
            .bearer_auth(&token)
            .json(&common::resume_body("assignmentRequestCreated", &sii))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204, "{path}");
    }
    let versions: Vec<String> = emu.resumes().into_iter().map(|r| r.api_version).collect();
    assert_eq!(versions, ["v1.0", "beta", "beta"]);
}

#[tokio::test]
async fn resume_requires_a_valid_graph_token() {
    let emu = common::start().await;
    register(&emu, "assignmentRequestCreated", "PT1H");
    let body = common::resume_body("assignmentRequestCreated", SII);

    let resp = common::http()
        .post(common::resume_url(&emu, REQ))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "InvalidAuthenticationToken");

    // A callout token (wrong audience) is not a Graph token.
    let callout = emu.mint_callout_token(&MintOptions::default()).unwrap();
    let (status, err) = common::post_resume(&emu, &callout, REQ, &body).await;
    assert_eq!(status, 401);
    assert_eq!(err["error"]["code"], "InvalidAuthenticationToken");

    // A Graph token after its key was retired.
    let token = common::graph_token(&emu).await;
    emu.rotate_keys(true).await.unwrap();
    let (status, _) = common::post_resume(&emu, &token, REQ, &body).await;
    assert_eq!(status, 401);

    let fresh = emu.mint_graph_token().unwrap();
    let (status, _) = common::post_resume(&emu, &fresh, REQ, &body).await;
    assert_eq!(status, 204);
    assert_eq!(emu.stats().resume_rejected, 3);
}

#[tokio::test]
async fn unknown_request_is_404() {
    let emu = common::start().await;
    let token = common::graph_token(&emu).await;
    let (status, err) = common::post_resume(
        &emu,
        &token,
        "no-such-request",
        &common::resume_body("assignmentRequestCreated", SII),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "ResourceNotFound");
    let (status, err) = graph_get(&emu, &token, "no-such-request").await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "ResourceNotFound");
}

/// Each body Graph would reject is answered 400 BadRequest and leaves the request waiting.
#[tokio::test]
async fn resume_validation_rejects_what_graph_rejects() {
    let emu = common::start().await;
    let token = common::graph_token(&emu).await;
    register(&emu, "assignmentRequestGranted", "PT1H");
    let good = || common::resume_body("assignmentRequestGranted", SII);

    let mut cases: Vec<(&str, Value)> = Vec::new();
    let mut v = good();
    v["extra"] = json!(1);
    cases.push(("unknown top-level parameter", v));
    let mut v = good();
    v.as_object_mut().unwrap().remove("type");
    cases.push(("missing type", v));
    let mut v = good();
    v["type"] = json!("assignmentRequestGranted");
    cases.push(("type without prefix", v));
    let mut v = good();
    v["type"] = json!("microsoft.graph.accessPackageCustomExtensionStage.assignmentRequestCreated");
    cases.push(("type stage differs from data.stage", v));
    let mut v = good();
    v.as_object_mut().unwrap().remove("data");
    cases.push(("missing data", v));
    let mut v = good();
    v["source"] = json!(5);
    cases.push(("source not a string", v));
    let mut v = good();
    v["data"]["@odata.type"] = json!("#microsoft.graph.customExtensionData");
    cases.push(("wrong @odata.type", v));
    let mut v = good();
    v["data"].as_object_mut().unwrap().remove("@odata.type");
    cases.push(("missing @odata.type", v));
    let mut v = good();
    v["data"]["stage"] = json!("AssignmentRequestGranted");
    v["type"] = json!("microsoft.graph.accessPackageCustomExtensionStage.AssignmentRequestGranted");
    cases.push(("stage not an exact enum member", v));
    let mut v = good();
    v["data"]["stage"] = json!("assignmentRequestCreated");
    v["type"] = json!("microsoft.graph.accessPackageCustomExtensionStage.assignmentRequestCreated");
    cases.push(("stage differs from the callout's", v));
    let mut v = good();
    v["data"]["customExtensionStageInstanceId"] = json!("00000000-0000-0000-0000-000000000000");
    cases.push(("foreign stage instance id", v));
    let mut v = good();
    v["data"]
        .as_object_mut()
        .unwrap()
        .remove("customExtensionStageInstanceId");
    cases.push(("missing stage instance id", v));
    let mut v = good();
    v["data"]["state"] = json!("denied");
    cases.push(("deny on the granted stage", v));
    let mut v = good();
    v["data"]["customExtensionStageInstanceDetail"] = json!("x".repeat(1001));
    cases.push(("detail over 1000 chars", v));
    let mut v = good();
    v["data"]["approvalStage"] = json!({});
    cases.push(("property not on the type", v));
    let mut v = good();
    v["data"]["operationStatus"] = json!("Completed");
    cases.push(("LCW property", v));

    for (name, body) in &cases {
        let (status, err) = common::post_resume(&emu, &token, REQ, body).await;
        assert_eq!(status, 400, "{name}: {err}");
        assert_eq!(err["error"]["code"], "BadRequest", "{name}");
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}"
        );
    }
    let resp = common::http()
        .post(common::resume_url(&emu, REQ))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "invalid JSON");

    let view = emu.request(REQ).unwrap();
    assert_eq!(view.status, "WaitingForCallback");
    assert_eq!(emu.stats().resume_rejected, cases.len() as u64 + 1);

    // Boundary values that Graph accepts.
    let mut v = good();
    v["data"]["customExtensionStageInstanceDetail"] = json!("é".repeat(1000));
    v["data"]["@odata.type"] = json!(CALLBACK_DATA_ODATA_TYPE);
    v["data"]["state"] = Value::Null;
    v.as_object_mut().unwrap().remove("source");
    let (status, err) = common::post_resume(&emu, &token, REQ, &v).await;
    assert_eq!(status, 204, "{err}");
}

#[test]
fn deny_and_cancel_are_accepted_on_created_and_approved_only() {
    for stage in STAGES {
        for state in RESUME_STATES {
            let mut v = common::resume_body(stage, SII);
            v["data"]["state"] = json!(state);
            let ok = validate_resume_body(&serde_json::to_vec(&v).unwrap()).is_ok();
            assert_eq!(ok, DENIABLE_STAGES.contains(&stage), "{stage} {state}");
        }
    }
    let mut v = common::resume_body("assignmentRequestCreated", SII);
    v["data"]["state"] = json!("delivered");
    assert!(validate_resume_body(&serde_json::to_vec(&v).unwrap()).is_err());
}

/// The validator's names come from the Graph schema: prove it against the fixture extract.
#[test]
fn validation_constants_match_the_graph_schema_fixture() {
    let v1 = fixture("graph-v1.0-resume-extract.json");
    let schemas = &v1["components"]["schemas"];
    let names = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };

    let stages = names(&schemas["microsoft.graph.accessPackageCustomExtensionStage"]["enum"]);
    assert_eq!(stages, STAGES);
    let beta = fixture("graph-beta-resume-extract.json");
    assert_eq!(
        names(
            &beta["components"]["schemas"]["microsoft.graph.accessPackageCustomExtensionStage"]["enum"]
        ),
        STAGES
    );
    for stage in REQUEST_STAGES.iter().chain(DENIABLE_STAGES.iter()) {
        assert!(stages.iter().any(|s| s == stage), "{stage}");
    }

    let callback = &schemas["microsoft.graph.accessPackageAssignmentRequestCallbackData"];
    assert_eq!(
        callback["allOf"][0]["$ref"],
        "#/components/schemas/microsoft.graph.customExtensionData"
    );
    let mut properties: Vec<&str> = callback["allOf"][1]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    properties.sort_unstable();
    let mut expected = CALLBACK_DATA_PROPERTIES.to_vec();
    expected.sort_unstable();
    assert_eq!(properties, expected);
    assert_eq!(
        callback["allOf"][1]["properties"]["stage"]["$ref"],
        "#/components/schemas/microsoft.graph.accessPackageCustomExtensionStage"
    );
    assert_eq!(
        format!(
            "microsoft.graph.{}",
            callback["allOf"][1]["title"].as_str().unwrap()
        ),
        CALLBACK_DATA_ODATA_TYPE
    );

    let resume = &v1["paths"]["/identityGovernance/entitlementManagement/assignmentRequests/{accessPackageAssignmentRequest-id}/microsoft.graph.resume"]
        ["post"];
    let body = &resume["requestBody"]["content"]["application/json"]["schema"]["properties"];
    let mut parameters: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    parameters.sort_unstable();
    let mut expected = RESUME_PARAMETERS.to_vec();
    expected.sort_unstable();
    assert_eq!(parameters, expected);
    let action = v1["x-csdl-actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "resume")
        .unwrap();
    let action_params: Vec<&str> = action["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .filter(|n| *n != "bindingParameter")
        .collect();
    assert_eq!(action_params, RESUME_PARAMETERS);

    let request_states = names(&schemas["microsoft.graph.accessPackageRequestState"]["enum"]);
    for state in RESUME_STATES {
        assert!(request_states.iter().any(|s| s == state), "{state}");
    }
    let statuses = names(&schemas["microsoft.graph.customExtensionCalloutInstanceStatus"]["enum"]);
    assert_eq!(statuses, CALLOUT_INSTANCE_STATUSES);
    for used in ["waitingForCallback", "callbackReceived", "callbackTimedOut"] {
        assert!(statuses.iter().any(|s| s == used));
    }
    let instance = schemas["microsoft.graph.customExtensionCalloutInstance"]["properties"]
        .as_object()
        .unwrap();
    let mut instance_props: Vec<&str> = instance.keys().map(String::as_str).collect();
    instance_props.sort_unstable();
    assert_eq!(
        instance_props,
        [
            "customExtensionId",
            "detail",
            "externalCorrelationId",
            "id",
            "status"
        ]
    );
}

/// The Graph GET answer uses only properties of `accessPackageAssignmentRequest` and
/// `customExtensionCalloutInstance`.
#[tokio::test]
async fn get_request_matches_the_graph_schema_fixture() {
    let emu = common::start().await;
    let token = common::graph_token(&emu).await;
    register(&emu, "assignmentRequestCreated", "PT1H");
    let (_, body) = graph_get(&emu, &token, REQ).await;
    let schemas = fixture("graph-v1.0-resume-extract.json")["components"]["schemas"].clone();
    let request_props =
        schemas["microsoft.graph.accessPackageAssignmentRequest"]["allOf"][1]["properties"]
            .as_object()
            .unwrap()
            .clone();
    for key in body.as_object().unwrap().keys() {
        assert!(
            key == "id" || key.starts_with("@odata") || request_props.contains_key(key),
            "{key}"
        );
    }
    let states = schemas["microsoft.graph.accessPackageRequestState"]["enum"]
        .as_array()
        .unwrap()
        .clone();
    assert!(states.contains(&body["state"]));
    let types = schemas["microsoft.graph.accessPackageRequestType"]["enum"]
        .as_array()
        .unwrap()
        .clone();
    assert!(types.contains(&body["requestType"]));
    let instance_props = schemas["microsoft.graph.customExtensionCalloutInstance"]["properties"]
        .as_object()
        .unwrap()
        .clone();
    for key in body["customExtensionCalloutInstances"][0]
        .as_object()
        .unwrap()
        .keys()
    {
        assert!(instance_props.contains_key(key), "{key}");
    }
}

#[tokio::test]
async fn waiting_request_times_out() {
    let emu = common::start().await;
    let token = common::graph_token(&emu).await;
    register(&emu, "assignmentRequestCreated", "PT0.4S");
    assert_eq!(
        emu.request(REQ).unwrap().callouts[0].status,
        "waitingForCallback"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;

    let (_, body) = graph_get(&emu, &token, REQ).await;
    assert_eq!(
        body["customExtensionCalloutInstances"][0]["status"],
        "callbackTimedOut"
    );
    assert_ne!(body["status"], "WaitingForCallback");
    let view = control_view(&emu, REQ).await;
    assert_eq!(view["callouts"][0]["status"], "callbackTimedOut");
    assert_eq!(view["callouts"][0]["decision"], Value::Null);

    let (status, err) = common::post_resume(
        &emu,
        &token,
        REQ,
        &common::resume_body("assignmentRequestCreated", SII),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not waiting for callback")
    );
}

#[tokio::test]
async fn graph_fault_answers_429_with_retry_after_n_times_then_succeeds() {
    let emu = common::start().await;
    let token = common::graph_token(&emu).await;
    register(&emu, "assignmentRequestCreated", "PT1H");
    let resp = common::http()
        .post(format!("{}/_emulator/faults", emu.base_url()))
        .json(&json!({"target": "graph", "status": 429, "retry_after_secs": 1, "count": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let body = common::resume_body("assignmentRequestCreated", SII);
    for _ in 0..2 {
        let resp = common::http()
            .post(common::resume_url(&emu, REQ))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "1");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["code"], "TooManyRequests");
    }
    let (status, _) = common::post_resume(&emu, &token, REQ, &body).await;
    assert_eq!(status, 204);
    let stats = emu.stats();
    assert_eq!(
        (
            stats.resume_calls,
            stats.resume_accepted,
            stats.resume_rejected
        ),
        (3, 1, 0)
    );
}

#[tokio::test]
async fn token_fault_and_delay_then_clear() {
    let emu = common::start().await;
    emu.set_fault(&FaultSpec {
        target: FaultTarget::Token,
        status: Some(503),
        retry_after_secs: None,
        count: None,
        delay_ms: None,
        ..FaultSpec::default()
    })
    .unwrap();
    for _ in 0..3 {
        let resp = common::http()
            .post(emu.token_url())
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503, "until cleared");
    }
    let resp = common::http()
        .delete(format!("{}/_emulator/faults", emu.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let _ = common::graph_token(&emu).await;

    let resp = common::http()
        .post(format!("{}/_emulator/faults", emu.base_url()))
        .json(&json!({"target": "graph", "delay_ms": 300, "count": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let token = emu.mint_graph_token().unwrap();
    let started = Instant::now();
    let (status, _) = graph_get(&emu, &token, "missing").await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(status, 404, "a delay alone answers normally");
    let started = Instant::now();
    let _ = graph_get(&emu, &token, "missing").await;
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "count 1 delays once"
    );

    let bad = common::http()
        .post(format!("{}/_emulator/faults", emu.base_url()))
        .json(&json!({"target": "graph", "status": 200}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn registration_rejects_stages_that_cannot_wait() {
    let emu = common::start().await;
    for stage in [
        "assignmentOneDayBeforeExpiration",
        "CustomExtensionConnectionTest",
    ] {
        let resp = common::http()
            .post(format!("{}/_emulator/requests", emu.base_url()))
            .json(&json!({"id": REQ, "stage": stage}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{stage}");
    }
    let resp = common::http()
        .post(format!("{}/_emulator/requests", emu.base_url()))
        .json(&json!({"timeout": "soon"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = common::http()
        .get(format!("{}/_emulator/requests/{REQ}", emu.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}
