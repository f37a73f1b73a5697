//! Lifecycle Workflows custom task extensions end to end: the real binary takes the emulator's
//! task callouts (PoP from Lifecycle Workflows' app id, bound to the `lifecycle_workflows`
//! extension), decides them with the policy's task rules (by workflow, task, or category read
//! from Graph) and resumes the task processing result with `completed` or `failed`; a leaver
//! task opens a de-provisioning ticket and completes when it closes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use accessgate_emulator::{CloseTicket, SendOptions, Shape, TaskView, World};
use common::*;
use serde_json::json;

const SN_PASSWORD: &str = "sn-lcw-password-not-printed";
const JOINER: &str = "e0000000-0000-0000-0000-00000000000a";
const LEAVER: &str = "e0000000-0000-0000-0000-00000000000b";
const TASK: &str = "e1000000-0000-0000-0000-000000000001";
const WITH_MANAGER: &str = "a0000000-0000-0000-0000-000000000001";
const NO_MANAGER: &str = "a0000000-0000-0000-0000-000000000003";

const POLICY: &str = r#"
version = 1

[checks.hr]
require_manager = true

[tickets.deprovision]
table = "sc_req_item"
fields = { short_description = "Leaver: remove access of {target} ({upn})", description = "Task {task} of workflow {workflow}. {explanation}" }

[[rules]]
name = "joiners-need-a-manager"
categories = ["joiner"]
checks = ["hr"]

[[rules]]
name = "leavers-are-deprovisioned"
categories = ["leaver"]
ticket = "deprovision"

[[rules]]
name = "requests"
decision = "continue"
"#;

fn world() -> World {
    serde_json::from_value(json!({
        "users": [
            {"id": WITH_MANAGER, "displayName": "Lee", "userPrincipalName": "lee@fabrikam.example", "accountEnabled": true, "manager": "a0000000-0000-0000-0000-000000000002"},
            {"id": "a0000000-0000-0000-0000-000000000002", "displayName": "Mo", "accountEnabled": true},
            {"id": NO_MANAGER, "displayName": "Nia", "accountEnabled": true}
        ],
        "workflows": [
            {"id": JOINER, "displayName": "Onboard", "category": "joiner", "tasks": [{"id": TASK}]},
            {"id": LEAVER, "displayName": "Offboard", "category": "leaver", "tasks": [{"id": TASK}]}
        ],
        "servicenow": {"tables": {"sc_req_item": []}}
    }))
    .unwrap()
}

async fn start(policy: &str) -> Harness {
    let h = Harness::start_with_servicenow(
        &policy_file(policy),
        "",
        "poll_interval_seconds = 1",
        "",
        SN_PASSWORD,
    )
    .await;
    h.emu().load_world(&world()).unwrap();
    h
}

fn task(result: &str, workflow: &str, subject: &str) -> SendOptions {
    SendOptions {
        shape: Shape::Lifecycle,
        request_id: Some(result.into()),
        workflow_id: Some(workflow.into()),
        workflow_name: Some(
            if workflow == LEAVER {
                "Offboard"
            } else {
                "Onboard"
            }
            .into(),
        ),
        task_id: Some(TASK.into()),
        target_object_id: Some(subject.into()),
        target_display_name: Some("Lee".into()),
        subject_upn: Some("lee@fabrikam.example".into()),
        timeout: Some("PT1H".into()),
        ..SendOptions::default()
    }
}

/// The task once it is no longer in progress.
async fn finished(emu: &Emulator, id: &str) -> TaskView {
    eventually(20, "the task resume", || {
        emu.task(id).filter(|t| t.processing_status != "inProgress")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiner_tasks_complete_or_fail_by_the_checks_with_the_schema_members() {
    let h = start(POLICY).await;
    let emu = h.emu();
    let ok = h.send(task("r-joiner-ok", JOINER, WITH_MANAGER)).await;
    assert_eq!(ok.status, Some(202), "{ok:?}");
    let bad = h.send(task("r-joiner-bad", JOINER, NO_MANAGER)).await;
    assert_eq!(bad.status, Some(202), "{bad:?}");

    let t = finished(&emu, "r-joiner-ok").await;
    assert_eq!(t.processing_status, "completed");
    let body = t.resume.unwrap();
    // Exactly what the Graph schema names: the lower-case enum member, nothing else in data.
    assert_eq!(body["data"], json!({"operationStatus": "completed"}));
    assert_eq!(body["type"], "lifecycleEvent");
    assert_eq!(t.resume_version.as_deref(), Some("v1.0"));

    let t = finished(&emu, "r-joiner-bad").await;
    assert_eq!(t.processing_status, "failed");
    assert_eq!(t.resume.unwrap()["data"]["operationStatus"], "failed");
    // Why is in the log (the task has no detail text), with the rule.
    let line =
        h.ag.wait_log("decision of the failed task", |l| {
            l["stage_instance_id"] == "r-joiner-bad" && l["rule"] == "joiners-need-a-manager"
        })
        .await;
    assert!(line.to_string().contains("manager"), "{line}");
    // The workflow's category was read from Graph, never taken from the callout.
    assert!(
        emu.graph_calls().iter().any(|c| c.path.contains("$batch")),
        "{:?}",
        emu.graph_calls()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaver_task_completes_when_its_deprovisioning_ticket_closes() {
    let h = start(POLICY).await;
    let emu = h.emu();
    let sent = h.send(task("r-leaver-1", LEAVER, WITH_MANAGER)).await;
    assert_eq!(sent.status, Some(202), "{sent:?}");
    let t = eventually(20, "the ticket", || {
        emu.servicenow_tickets()
            .into_iter()
            .find(|t| t.correlation_id == "accessgate:r-leaver-1")
    })
    .await;
    let sd = t
        .fields
        .get("short_description")
        .cloned()
        .unwrap_or_default();
    assert!(
        sd.contains("Lee") && sd.contains("lee@fabrikam.example"),
        "{sd}"
    );
    let desc = t.fields.get("description").cloned().unwrap_or_default();
    assert!(desc.contains("Offboard"), "{desc}");
    h.ag.wait_log("parked", |l| l["message"] == "job parked")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        emu.task("r-leaver-1").unwrap().processing_status,
        "inProgress"
    );
    emu.close_servicenow_ticket(
        &t.table,
        &t.sys_id,
        &CloseTicket {
            state: Some("3".into()),
            close_notes: Some("Access removed".into()),
            close_code: None,
        },
    )
    .unwrap();
    let done = finished(&emu, "r-leaver-1").await;
    assert_eq!(done.processing_status, "completed");
    assert_eq!(done.resume_calls, 1);
    for l in h.ag.log_lines() {
        assert!(!l.contains(SN_PASSWORD), "password in a log line: {l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_task_callout_is_one_job_and_one_resume() {
    let h = start(POLICY).await;
    let emu = h.emu();
    let first = h.send(task("r-dup-1", JOINER, WITH_MANAGER)).await;
    let again = h.send(task("r-dup-1", JOINER, WITH_MANAGER)).await;
    assert_eq!((first.status, again.status), (Some(202), Some(202)));
    finished(&emu, "r-dup-1").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(emu.task("r-dup-1").unwrap().resume_calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callouts_through_the_other_products_extension_or_caller_are_refused() {
    let h = start(POLICY).await;
    let emu = h.emu();
    // A task callout signed for the entitlement-management extension's Logic App.
    let mut o = task("r-kind-1", JOINER, WITH_MANAGER);
    o.pop = Some(accessgate_emulator::PopOptions {
        p: Some(json!(emu.config().logic_app_resource)),
        ..Default::default()
    });
    let r = h.send(o).await;
    assert_eq!(r.status, Some(403), "{r:?}");
    // An access package callout from Lifecycle Workflows' app id (through the ELM extension).
    let r = h
        .send(SendOptions {
            pop: Some(accessgate_emulator::PopOptions {
                at: Some(accessgate_emulator::MintOptions {
                    app_id: Some("ce79fdc4-cd1d-4ea5-8139-e74d7dbe0bb7".into()),
                    audience: Some("https://management.azure.com".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..SendOptions::default()
        })
        .await;
    assert_eq!(r.status, Some(403), "{r:?}");
    // The log line can trail the answer: wait for the second refusal's.
    h.ag.wait_log("the caller's refusal", |l| {
        l["reason"] == "callout_kind_mismatch"
            && l["error"]
                .as_str()
                .is_some_and(|e| e.contains("its caller"))
    })
    .await;
    let reasons: Vec<String> =
        h.ag.log_json()
            .iter()
            .filter(|l| l["reason"] == "callout_kind_mismatch")
            .map(|l| l["error"].as_str().unwrap_or_default().to_owned())
            .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("extension \"elm\""), "{reasons:?}");
    assert!(reasons[1].contains("its caller"), "{reasons:?}");
    // A task callout without its processing result's id is named, never a 202.
    let body: serde_json::Value = serde_json::from_str(
        r#"{"type":"lifecycleEvent","source":"x","data":{"subject":{"id":"u"},"task":{"id":"t"},"workflow":{"id":"w"},"taskProcessingResult":{}}}"#,
    )
    .unwrap();
    let r = h
        .send(SendOptions {
            body: Some(body.to_string()),
            ..task("r-kind-2", JOINER, WITH_MANAGER)
        })
        .await;
    assert_eq!(r.status, Some(400), "{r:?}");
    assert_eq!(emu.task("r-kind-1").unwrap().resume_calls, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_window_has_passed_is_not_resumed() {
    let h = start(POLICY).await;
    let emu = h.emu();
    // Started 3 h 1 min ago: the extension's window (PT3H by default) is over.
    let started = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(3 * 3600 + 60);
    let body = json!({"type": "lifecycleEvent", "source": "LifecycleWorkflows", "data": {
        "callbackUriPath": format!("/identityGovernance/lifecycleWorkflows/workflows/{JOINER}/tasks/{TASK}/taskProcessingResults/r-late-1/resume"),
        "subject": {"id": WITH_MANAGER}, "task": {"id": TASK}, "workflow": {"id": JOINER},
        "taskProcessingResult": {"id": "r-late-1", "createdDateTime": started.to_string()}}});
    let r = h
        .send(SendOptions {
            body: Some(body.to_string()),
            ..task("r-late-1", JOINER, WITH_MANAGER)
        })
        .await;
    assert_eq!(r.status, Some(202), "{r:?}");
    h.ag.wait_log("the dead job", |l| {
        l["stage_instance_id"] == "r-late-1" && l.to_string().contains("deadline")
    })
    .await;
    assert_eq!(emu.task("r-late-1").unwrap().resume_calls, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_the_extension_does_not_authorize_names_authorized_apps() {
    let h = start(POLICY).await;
    let emu = h.emu();
    let r = h
        .send(SendOptions {
            authorized_apps: Some(vec!["00000000-0000-0000-0000-0000000000ff".into()]),
            ..task("r-forbidden-1", JOINER, WITH_MANAGER)
        })
        .await;
    assert_eq!(r.status, Some(202), "{r:?}");
    let line =
        h.ag.wait_log("the refused resume", |l| {
            l.to_string().contains("authorizedApps")
        })
        .await;
    assert!(
        line.to_string().contains("Onboard") || line.to_string().contains(JOINER),
        "{line}"
    );
    assert_eq!(
        emu.task("r-forbidden-1").unwrap().processing_status,
        "inProgress"
    );
}
