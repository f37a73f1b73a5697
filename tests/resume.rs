//! From acknowledged callout to Graph resume: policy decisions, duplicates, throttling, outages
//! past the deadline, and a crash right after the 202.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

fn policy(dir: &std::path::Path) -> String {
    let path = dir.join("policy.toml");
    std::fs::write(
        &path,
        r#"
[packages.finance]
display_name = "Finance Reports"
[[rules]]
name = "no-finance"
access_packages = ["finance"]
stages = ["assignmentRequestCreated"]
decision = "deny"
detail = "Finance Reports needs a ticket."
[[rules]]
name = "rest"
decision = "continue"
detail = "Checked by accessgate."
"#,
    )
    .unwrap();
    format!("[policy]\nfile = \"{}\"\n", path.display())
}

fn jobs_cli(h: &Harness, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_accessgate"))
        .args(["jobs"])
        .args(args)
        .arg("--config")
        .arg(&h.ag.config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_denies_and_continues_with_the_detail_approvers_see() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(&policy(dir.path())).await;
    let deny = h
        .send(SendOptions {
            access_package_name: Some("Finance Reports".into()),
            ..Default::default()
        })
        .await;
    let cont = h
        .send(SendOptions {
            access_package_name: Some("Sales".into()),
            ..Default::default()
        })
        .await;
    let granted = h
        .send(SendOptions {
            access_package_name: Some("Finance Reports".into()),
            stage: Some("assignmentRequestApproved".into()),
            ..Default::default()
        })
        .await;
    let d = resumed(&h.emu(), &deny.stage_instance_id).await;
    assert_eq!(d.state.as_deref(), Some("denied"));
    assert_eq!(d.detail.as_deref(), Some("Finance Reports needs a ticket."));
    let c = resumed(&h.emu(), &cont.stage_instance_id).await;
    assert_eq!(
        (c.state, c.detail.as_deref()),
        (None, Some("Checked by accessgate."))
    );
    let g = resumed(&h.emu(), &granted.stage_instance_id).await;
    assert_eq!(g.state, None, "rule is for the created stage only");
    let req = h.emu().request(&deny.request_id).unwrap();
    assert_eq!(req.callouts[0].status, "callbackReceived");
    assert_eq!(req.callouts[0].decision.as_deref(), Some("denied"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_callout_is_acknowledged_and_resumed_once() {
    let h = Harness::start("").await;
    let first = h.send(SendOptions::default()).await;
    let again = h
        .send(SendOptions {
            request_id: Some(first.request_id.clone()),
            stage_instance_id: Some(first.stage_instance_id.clone()),
            ..Default::default()
        })
        .await;
    assert_eq!((first.status, again.status), (Some(202), Some(202)));
    resumed(&h.emu(), &first.stage_instance_id).await;
    h.ag.wait_log("duplicate", |l| {
        l["message"] == "duplicate callout (same stage instance id) acknowledged; not queued again"
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let n = h
        .emu()
        .resumes()
        .iter()
        .filter(|r| r.stage_instance_id == first.stage_instance_id)
        .count();
    assert_eq!(n, 1);
    assert_eq!(
        h.emu().stats().resume_calls,
        1,
        "no second resume call at all"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn graph_throttling_is_retried_honouring_retry_after() {
    let h = Harness::start("").await;
    let emu = h.emu();
    emu.set_fault(&FaultSpec {
        target: FaultTarget::Graph,
        status: Some(429),
        retry_after_secs: Some(1),
        count: Some(2),
        delay_ms: None,
        ..Default::default()
    })
    .unwrap();
    let started = std::time::Instant::now();
    let r = h.send(SendOptions::default()).await;
    resumed(&emu, &r.stage_instance_id).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= std::time::Duration::from_secs(2),
        "two Retry-After: 1 waits must be honoured, took {elapsed:?}"
    );
    let s = emu.stats();
    assert_eq!((s.resume_calls, s.resume_accepted), (3, 1));
    // Three resume calls, one Graph token: it is cached until shortly before it expires.
    assert_eq!(s.token_requests, 1);
    h.ag.wait_log("retry", |l| {
        l["message"] == "attempt failed; will retry"
            && l["reason"].as_str().unwrap_or("").contains("429")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn graph_down_past_the_deadline_dead_letters_with_a_clear_reason_that_a_retry_cannot_undo() {
    let h = Harness::start("").await;
    let emu = h.emu();
    graph_down(&emu, None);
    // 10 s callback timeout, 5 s margin: the job must give up about 5 s after receipt.
    let r = h
        .send(SendOptions {
            timeout: Some("PT10S".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(r.status, Some(202));
    let line =
        h.ag.wait_log("dead letter", |l| {
            l["message"] == "job moved to dead letters"
                && l["stage_instance_id"] == r.stage_instance_id.as_str()
        })
        .await;
    let reason = line["reason"].as_str().unwrap();
    assert!(
        reason.contains("deadline") && reason.contains("503"),
        "{reason}"
    );
    assert!(emu.resumes().is_empty());
    let listed = jobs_cli(&h, &["list", "--status", "dead"]);
    assert!(
        listed.contains(&r.stage_instance_id) && listed.contains("deadline"),
        "{listed}"
    );
    let shown = jobs_cli(&h, &["show", &r.stage_instance_id]);
    assert!(shown.contains("\"status\": \"dead\""), "{shown}");
    // Entra has timed this callout out: a retry would be refused, so the CLI says so and the
    // job stays dead.
    let retried = jobs_cli(&h, &["retry", &r.stage_instance_id]);
    assert!(
        retried.contains("not requeued") && retried.contains("deadline"),
        "{retried}"
    );
    let shown = jobs_cli(&h, &["show", &r.stage_instance_id]);
    assert!(shown.contains("\"status\": \"dead\""), "{shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_after_the_202_loses_nothing() {
    let mut h = Harness::start("").await;
    let emu = h.emu();
    // Graph is down, so the job cannot finish before the crash.
    graph_down(&emu, None);
    let r = h.send(SendOptions::default()).await;
    assert_eq!(r.status, Some(202));
    h.ag.kill9();
    emu.clear_faults();
    h.ag.restart().await;
    let rec = resumed(&emu, &r.stage_instance_id).await;
    assert_eq!(rec.request_id, r.request_id);
    assert_eq!(emu.resumes().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn launch_and_continue_callouts_get_no_resume() {
    let h = Harness::start("").await;
    let body = serde_json::json!({
        "AccessPackageAssignmentRequestId": "r-lc", "CustomExtensionStageInstanceId": "s-lc", "Stage": "assignmentRequestGranted"
    });
    let r = h
        .send(SendOptions {
            body: Some(body.to_string()),
            ..Default::default()
        })
        .await;
    assert_eq!(r.status, Some(202));
    h.ag.wait_log("notification", |l| {
        l["message"] == "notification only: this stage gets no resume"
            && l["stage_instance_id"] == "s-lc"
    })
    .await;
    assert_eq!(h.emu().stats().resume_calls, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_cleanly_and_queued_work_survives_it() {
    let mut h = Harness::start("").await;
    let emu = h.emu();
    graph_down(&emu, None);
    let r = h.send(SendOptions::default()).await;
    assert_eq!(r.status, Some(202));
    let status = h.ag.terminate();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    h.ag.wait_log("stopped", |l| l["message"] == "stopped")
        .await;
    emu.clear_faults();
    h.ag.restart().await;
    resumed(&emu, &r.stage_instance_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_resume_is_dead_lettered_and_a_retry_after_the_fix_resumes_it() {
    let h = Harness::start("").await;
    let emu = h.emu();
    // Graph refuses the resume once (the request is still waiting): not "done", a dead letter.
    emu.set_fault(&FaultSpec {
        target: FaultTarget::Graph,
        status: Some(400),
        retry_after_secs: None,
        count: Some(1),
        delay_ms: None,
        ..Default::default()
    })
    .unwrap();
    let r = h.send(SendOptions::default()).await;
    let line =
        h.ag.wait_log("dead letter", |l| {
            l["message"] == "job moved to dead letters"
                && l["stage_instance_id"] == r.stage_instance_id.as_str()
        })
        .await;
    assert!(
        line["reason"].as_str().unwrap().contains("HTTP 400"),
        "{line}"
    );
    assert!(emu.resumes().is_empty());
    let retried = jobs_cli(&h, &["retry", &r.stage_instance_id]);
    assert!(retried.contains("queued again"), "{retried}");
    let rec = resumed(&emu, &r.stage_instance_id).await;
    assert_eq!(rec.request_id, r.request_id);
    // Graph records the resume before the worker commits "done": wait for the commit.
    let mut shown = String::new();
    eventually(20, "the job to be stored as done", || {
        shown = jobs_cli(&h, &["show", &r.stage_instance_id]);
        shown.contains("\"status\": \"done\"").then_some(())
    })
    .await;
    assert!(shown.contains("resumed: continue"), "{shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callback_path_in_the_beta_collection_is_resumed_through_v1() {
    let h = Harness::start("").await;
    let rid = uuid::Uuid::new_v4().to_string();
    let sid = uuid::Uuid::new_v4().to_string();
    let mut body: serde_json::Value =
        serde_json::from_str(&flat_body("assignmentRequestCreated", &rid, &sid)).unwrap();
    body["CallbackUriPath"] = serde_json::json!(format!(
        "/beta/identityGovernance/entitlementManagement/accessPackageAssignmentRequests/{rid}/resume"
    ));
    let r = h
        .send(SendOptions {
            request_id: Some(rid.clone()),
            stage_instance_id: Some(sid.clone()),
            body: Some(body.to_string()),
            ..Default::default()
        })
        .await;
    assert_eq!(r.status, Some(202));
    let rec = resumed(&h.emu(), &sid).await;
    assert_eq!(rec.api_version, "v1.0");
}
