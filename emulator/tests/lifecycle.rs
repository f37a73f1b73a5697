//! Lifecycle Workflows stand-in: the task callout the sender builds, the task processing
//! result's state machine, the resume's validation and authorization, timeouts, GET.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use accessgate_emulator::lifecycle::{
    CALLBACK_DATA_PROPERTIES, LCW_APP_ID, OPERATION_STATUSES, RESUME_PARAMETERS,
};
use accessgate_emulator::{Grants, RegisterTask, SendOptions, Shape};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::Target;
use serde_json::{Value, json};

const WF: &str = "f0000000-0000-0000-0000-0000000000aa";
const TASK: &str = "f1000000-0000-0000-0000-0000000000bb";
const RESULT: &str = "f2000000-0000-0000-0000-0000000000cc";
const SUBJECT: &str = "0b000000-0000-0000-0000-000000000042";

fn fixture(name: &str) -> Value {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn register(emu: &accessgate_emulator::RunningEmulator, timeout: &str, apps: Option<Vec<String>>) {
    emu.register_task(&RegisterTask {
        id: Some(RESULT.into()),
        workflow_id: WF.into(),
        task_id: TASK.into(),
        subject_id: SUBJECT.into(),
        timeout: Some(timeout.into()),
        authorized_apps: apps,
    })
    .unwrap();
}

fn url(emu: &accessgate_emulator::RunningEmulator, version: &str, action: &str) -> String {
    format!(
        "{}/{version}/identityGovernance/lifecycleWorkflows/workflows/{WF}/tasks/{TASK}/taskProcessingResults/{RESULT}{action}",
        emu.base_url()
    )
}

async fn post(
    emu: &accessgate_emulator::RunningEmulator,
    token: &str,
    body: &Value,
) -> (u16, Value) {
    let resp = common::http()
        .post(url(emu, "v1.0", "/resume"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn completed() -> Value {
    json!({"data": {"operationStatus": "completed"}, "source": "tests", "type": "lifecycleEvent"})
}

/// The validator's names come from the Graph schema: prove it against the fixture extract.
#[test]
fn validation_constants_match_the_graph_schema_fixture() {
    let x = fixture("graph-v1.0-lcw-extract.json");
    let schemas = &x["components"]["schemas"];
    let statuses: Vec<&str> =
        schemas["microsoft.graph.identityGovernance.customTaskExtensionOperationStatus"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
    assert_eq!(statuses, OPERATION_STATUSES);
    let data = &schemas["microsoft.graph.identityGovernance.customTaskExtensionCallbackData"]["allOf"]
        [1]["properties"];
    let props: Vec<&str> = data
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(props, CALLBACK_DATA_PROPERTIES);
    let path = x["paths"].as_object().unwrap().values().next().unwrap();
    let params: Vec<&str> =
        path["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
    let mut want = RESUME_PARAMETERS.to_vec();
    want.sort_unstable();
    let mut got = params.clone();
    got.sort_unstable();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_task_completes_once_and_then_is_not_in_progress() {
    let emu = common::start().await;
    register(&emu, "PT1H", None);
    let token = common::graph_token(&emu).await;
    assert_eq!(emu.task(RESULT).unwrap().processing_status, "inProgress");
    let (status, _) = post(&emu, &token, &completed()).await;
    assert_eq!(status, 204);
    let t = emu.task(RESULT).unwrap();
    assert_eq!(t.processing_status, "completed");
    assert_eq!(t.resume.unwrap()["data"]["operationStatus"], "completed");
    // A second resume is refused: the result no longer waits.
    let (status, err) = post(&emu, &token, &completed()).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(emu.task(RESULT).unwrap().resume_calls, 2);
    // GET shows the state (what accessgate reads to tell "no longer waiting").
    let resp = common::http()
        .get(url(&emu, "v1.0", ""))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["processingStatus"], "completed");
}

#[tokio::test]
async fn failed_and_the_docs_casing_are_accepted_and_the_namespaced_action_too() {
    let emu = common::start().await;
    register(&emu, "PT1H", None);
    let token = common::graph_token(&emu).await;
    let resp = common::http()
        .post(url(&emu, "beta", "/microsoft.graph.identityGovernance.resume"))
        .bearer_auth(&token)
        .json(&json!({"data": {"operationStatus": "Failed"}, "source": "sample", "type": "lifecycleEvent"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let t = emu.task(RESULT).unwrap();
    assert_eq!(
        (t.processing_status.as_str(), t.resume_version.as_deref()),
        ("failed", Some("beta"))
    );
}

#[tokio::test]
async fn bad_bodies_wrong_ids_and_unauthorized_apps_are_refused() {
    let emu = common::start().await;
    register(&emu, "PT1H", Some(vec!["someone-else".into()]));
    let token = common::graph_token(&emu).await;
    // Not in authorizedApps and no LifecycleWorkflows.ReadWrite.All: 403.
    let (status, err) = post(&emu, &token, &completed()).await;
    assert_eq!(status, 403, "{err}");
    // With the permission, the resume goes through.
    let client = emu.config().graph_client_id.clone();
    let grants = Grants {
        graph_permissions: Some(vec!["LifecycleWorkflows.ReadWrite.All".into()]),
        ..Grants::default()
    };
    emu.set_grants(&client, &grants).unwrap();
    let token = common::graph_token(&emu).await;
    let (status, err) = post(
        &emu,
        &token,
        &json!({"data": {"operationStatus": "unknownFutureValue"}}),
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknownFutureValue")
    );
    let other_task =
        url(&emu, "v1.0", "/resume").replace(TASK, "f1000000-0000-0000-0000-000000000099");
    let resp = common::http()
        .post(other_task)
        .bearer_auth(&token)
        .json(&completed())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let (status, _) = post(&emu, &token, &completed()).await;
    assert_eq!(status, 204);
}

#[tokio::test]
async fn a_task_not_resumed_within_its_window_fails() {
    let emu = common::start().await;
    register(&emu, "PT1S", None);
    let token = common::graph_token(&emu).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let t = emu.task(RESULT).unwrap();
    assert_eq!(t.processing_status, "failed");
    assert!(t.failure_reason.unwrap().contains("timeout"));
    let (status, _) = post(&emu, &token, &completed()).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_sender_sends_the_lcw_shape_signed_by_lifecycle_workflows() {
    let emu = common::start().await;
    let target = Target::start(202, Duration::ZERO).await;
    let report = emu
        .send_callout(&SendOptions {
            target_url: target.url.clone(),
            shape: Shape::Lifecycle,
            request_id: Some(RESULT.into()),
            workflow_id: Some(WF.into()),
            task_id: Some(TASK.into()),
            target_object_id: Some(SUBJECT.into()),
            manager_id: Some("0b000000-0000-0000-0000-000000000043".into()),
            subject_upn: Some("lee@contoso.example".into()),
            timeout: Some("PT5M".into()),
            ..SendOptions::default()
        })
        .await
        .unwrap();
    assert_eq!(report.status, Some(202));
    let body = target.body(0);
    // Every key the sender writes is in Microsoft's LCW trigger schema (the data's
    // @odata.type is the Graph type name the schema's Logic App ignores).
    let schema = fixture("lcw-logicapp-trigger-schema.json");
    let mut missing = Vec::new();
    keys_in(&body, &schema, "", &mut missing);
    assert_eq!(missing, vec!["/data/@odata.type".to_owned()]);
    assert_eq!(body["data"]["taskProcessingResult"]["id"], RESULT);
    assert_eq!(
        body["data"]["callbackUriPath"],
        format!(
            "/identityGovernance/lifecycleWorkflows/workflows/{WF}/tasks/{TASK}/taskProcessingResults/{RESULT}/resume"
        )
    );
    // The PoP's inner token is Lifecycle Workflows', bound to its extension's Logic App.
    let auth = target.header(0, "authorization").unwrap();
    let shr = auth.strip_prefix("PoP ").unwrap();
    let claims = payload(shr);
    assert_eq!(claims["p"], emu.config().lcw_logic_app_resource);
    let at = payload(claims["at"].as_str().unwrap());
    assert_eq!(
        at["appid"].as_str().or(at["azp"].as_str()),
        Some(LCW_APP_ID)
    );
    // The result waits, with the window the extension gives.
    assert_eq!(emu.task(RESULT).unwrap().processing_status, "inProgress");
}

fn payload(jws: &str) -> Value {
    let part = jws.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn keys_in(body: &Value, schema: &Value, path: &str, missing: &mut Vec<String>) {
    let Some(obj) = body.as_object() else { return };
    for (key, value) in obj {
        let sub = &schema["properties"][key];
        if sub.is_null() {
            missing.push(format!("{path}/{key}"));
        } else {
            keys_in(value, sub, &format!("{path}/{key}"), missing);
        }
    }
}
