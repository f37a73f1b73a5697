//! Checks end to end: the real `accessgate serve` decides callouts with Graph directory reads and
#![allow(clippy::unwrap_used, clippy::expect_used)]
//! ServiceNow lookups served by the emulator from a world file, and its decisions equal what
//! `accessgate explain` decides offline from the same file.

mod common;

use std::path::{Path, PathBuf};

use accessgate_emulator::{FaultSpec, FaultTarget, Grants, SendOptions, World};
use common::*;

/// The ServiceNow password the tests give accessgate (through the environment) and the emulator.
const SN_PASSWORD: &str = "sn-e2e-password-not-printed";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policy")
}

fn world() -> World {
    World::from_file(&fixtures().join("world.json")).unwrap()
}

/// accessgate with the fixture policy (or `policy` TOML), the emulator's ServiceNow, and the
/// fixture world loaded.
async fn start(policy: Option<&str>) -> Harness {
    let policy_path = match policy {
        None => fixtures().join("policy.toml"),
        Some(text) => policy_file(text),
    };
    let h = Harness::start_with_servicenow(
        &policy_path,
        "decision_timeout_seconds = 20",
        "",
        "",
        SN_PASSWORD,
    )
    .await;
    h.emu().load_world(&world()).unwrap();
    h
}

/// A callout fixture file as the emulator's sender sends it.
fn send_options(name: &str) -> SendOptions {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(format!("callouts/{name}.json"))).unwrap(),
    )
    .unwrap();
    SendOptions {
        request_id: v["AccessPackageAssignmentRequestId"]
            .as_str()
            .map(str::to_owned),
        target_object_id: v["Assignment"]["Target"]["ObjectId"]
            .as_str()
            .map(str::to_owned),
        access_package_id: v["AccessPackage"]["Id"].as_str().map(str::to_owned),
        access_package_name: v["AccessPackage"]["DisplayName"]
            .as_str()
            .map(str::to_owned),
        catalog_id: v["AccessPackageCatalog"]["Id"].as_str().map(str::to_owned),
        ..Default::default()
    }
}

fn explain(name: &str) -> serde_json::Value {
    let f = fixtures();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_accessgate"))
        .arg("explain")
        .arg(f.join(format!("callouts/{name}.json")))
        .arg("--fixtures")
        .arg(&f)
        .arg("--policy")
        .arg(f.join("policy.toml"))
        .arg("--json")
        .env_remove("ACCESSGATE_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn batch_calls(h: &Harness) -> usize {
    h.emu()
        .graph_calls()
        .iter()
        .filter(|c| c.path.ends_with("/$batch"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn live_decisions_equal_offline_explanations() {
    let h = start(None).await;
    for name in [
        "alice-payments",
        "hugo-vendor",
        "bob-sales-open",
        "bob-sales-closed",
    ] {
        let report = h.send(send_options(name)).await;
        assert_eq!(report.status, Some(202), "{name}");
        let live = resumed(&h.emu(), &report.stage_instance_id).await;
        let offline = explain(name);
        let live_action = if live.state.as_deref() == Some("denied") {
            "deny"
        } else {
            "continue"
        };
        assert_eq!(
            live_action, offline["action"],
            "{name}: live {live:?} vs offline {offline}"
        );
        assert_eq!(live.detail.as_deref(), offline["detail"].as_str(), "{name}");
    }
    // One $batch per decision, and the decision log says so.
    assert_eq!(batch_calls(&h), 4, "{:?}", h.emu().graph_calls());
    let decided: Vec<_> =
        h.ag.log_json()
            .into_iter()
            .filter(|l| l["message"] == "decided")
            .collect();
    assert_eq!(decided.len(), 4, "{decided:?}");
    assert!(decided.iter().all(|l| l["graph_calls"] == 1), "{decided:?}");
    // Every check's outcome is logged with its verdict.
    let checks =
        h.ag.log_json()
            .into_iter()
            .filter(|l| l["message"] == "check")
            .count();
    assert_eq!(checks, 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_directory_read_is_retried_before_on_error_decides() {
    let policy = std::fs::read_to_string(fixtures().join("policy.toml"))
        .unwrap()
        .replace(
            "[checks.sod]",
            "[defaults]\ncheck_attempts = 2\n\n[checks.sod]",
        );
    let h = start(Some(&policy)).await;
    // One failed $batch: the second attempt decides normally.
    h.emu()
        .set_fault(&FaultSpec {
            target: FaultTarget::Graph,
            status: Some(503),
            count: Some(1),
            ..Default::default()
        })
        .unwrap();
    let r = h.send(send_options("alice-payments")).await;
    let d = resumed(&h.emu(), &r.stage_instance_id).await;
    assert_eq!(d.state.as_deref(), Some("denied"));
    assert!(
        d.detail.as_deref().unwrap_or("").contains("vendor-fraud"),
        "{d:?}"
    );
    // Two failed $batches: on_error (deny by default) decides, and says why.
    h.emu()
        .set_fault(&FaultSpec {
            target: FaultTarget::Graph,
            status: Some(503),
            count: Some(2),
            ..Default::default()
        })
        .unwrap();
    let r = h.send(send_options("bob-sales-open")).await;
    let d = resumed(&h.emu(), &r.stage_instance_id).await;
    assert_eq!(d.state.as_deref(), Some("denied"), "{d:?}");
    let detail = d.detail.unwrap_or_default();
    assert!(
        detail.contains("could not complete its checks") && detail.contains("503"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_servicenow_answer_that_does_not_parse_errors_the_ticket_check() {
    let policy = std::fs::read_to_string(fixtures().join("policy.toml"))
        .unwrap()
        .replace(
            "[checks.sod]",
            "[defaults]\ncheck_attempts = 1\n\n[checks.sod]",
        )
        .replace(
            "name = \"sales\"",
            "name = \"sales\"\non_error = \"continue\"",
        );
    let h = start(Some(&policy)).await;
    h.emu()
        .set_fault(&FaultSpec {
            target: FaultTarget::ServiceNow,
            malformed: true,
            ..Default::default()
        })
        .unwrap();
    let r = h.send(send_options("bob-sales-open")).await;
    let d = resumed(&h.emu(), &r.stage_instance_id).await;
    assert_eq!(d.state, None, "on_error = continue: {d:?}");
    let detail = d.detail.unwrap_or_default();
    assert!(
        detail.contains("ticket:") && detail.contains("the request is continue"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_mode_continues_and_reports_the_deny() {
    let policy = std::fs::read_to_string(fixtures().join("policy.toml"))
        .unwrap()
        .replace("name = \"finance\"", "name = \"finance\"\nmode = \"audit\"");
    let h = start(Some(&policy)).await;
    let r = h.send(send_options("alice-payments")).await;
    let d = resumed(&h.emu(), &r.stage_instance_id).await;
    assert_eq!(d.state, None, "{d:?}");
    let detail = d.detail.unwrap_or_default();
    assert!(
        detail.contains("audit mode")
            && detail.contains("would deny")
            && detail.contains("vendor-fraud"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_graph_permission_is_named_in_the_error() {
    let policy = std::fs::read_to_string(fixtures().join("policy.toml"))
        .unwrap()
        .replace(
            "[checks.sod]",
            "[defaults]\ncheck_attempts = 1\n\n[checks.sod]",
        );
    let h = start(Some(&policy)).await;
    let emu = h.emu();
    emu.set_grants(
        &emu.config().graph_client_id,
        &Grants {
            graph_permissions: Some(vec!["EntitlementManagement.ReadWrite.All".into()]),
            ..Default::default()
        },
    )
    .unwrap();
    let r = h.send(send_options("hugo-vendor")).await;
    let d = resumed(&emu, &r.stage_instance_id).await;
    assert_eq!(d.state.as_deref(), Some("denied"));
    let detail = d.detail.unwrap_or_default();
    assert!(
        detail.contains("403") && detail.contains("permission"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dynamic_approval_sends_the_stage_the_checks_pick_and_denies_without_one() {
    const OWNER: &str = "0e000000-0000-0000-0000-000000000001";
    const SECURITY: &str = "0f000000-0000-0000-0000-000000000002";
    const APPROVAL: &str = "assignmentRequestDeterminingApprovalRequirements";
    let policy = std::fs::read_to_string(fixtures().join("policy.toml"))
        .unwrap()
        .replace(
            "display_name = \"Payments run\"",
            &format!("display_name = \"Payments run\"\nowners = [\"user:{OWNER}\"]"),
        )
        + &format!(
            r#"
[approvals.standard]
approvers = ["manager"]
deny_after = "3d"
[approvals.risk-review]
approvers = ["package_owners", "manager:2"]
escalation_approvers = ["group:{SECURITY}"]
escalate_after = "1d"
justification_required = true
[[rules]]
name = "dynamic-finance"
access_packages = ["vendor", "payments"]
stages = ["{APPROVAL}"]
checks = ["sod"]
approval = "standard"
approval_on_deny = "risk-review"
detail = {{ allow = "accessgate: {{approval}} approval by {{approvers}}.", route = "accessgate: {{reasons}}; sent to {{approval}} ({{approvers}})." }}
"#
        );
    let h = start(Some(&policy)).await;
    let at_approval = |name: &str| SendOptions {
        stage: Some(APPROVAL.into()),
        ..send_options(name)
    };
    // Alice's SoD conflict does not deny: it routes to the risk review, with the package's owner.
    let r = h.send(at_approval("alice-payments")).await;
    assert_eq!(r.status, Some(202));
    let d = resumed(&h.emu(), &r.stage_instance_id).await;
    assert_eq!(d.state, None, "{d:?}");
    assert_eq!(d.api_version, "v1.0");
    assert_eq!(d.prefer.as_deref(), Some("include-unknown-enum-members"));
    let detail = d.detail.clone().unwrap_or_default();
    assert!(
        detail.contains("vendor-fraud") && detail.contains("sent to risk-review"),
        "{detail}"
    );
    let stage = d.approval_stage.clone().unwrap();
    assert_eq!(
        stage["primaryApprovers"],
        serde_json::json!([
            {"@odata.type": "#microsoft.graph.singleUser", "userId": OWNER},
            {"@odata.type": "#microsoft.graph.requestorManager", "managerLevel": 2}
        ]),
        "{stage}"
    );
    assert_eq!(stage["isEscalationEnabled"], true);
    assert_eq!(stage["durationBeforeEscalation"], "P1D");
    assert_eq!(stage["durationBeforeAutomaticDenial"], "P14D");
    assert_eq!(stage["isApproverJustificationRequired"], true);
    assert_eq!(
        stage["escalationApprovers"][0]["groupId"], SECURITY,
        "{stage}"
    );
    let req = h.emu().request(&r.request_id).unwrap();
    assert_eq!(req.state, "pendingApproval", "{req:?}");
    // Hugo passes the SoD check: the standard approval, his manager.
    let r = h.send(at_approval("hugo-vendor")).await;
    let d = resumed(&h.emu(), &r.stage_instance_id).await;
    assert_eq!(d.state, None, "{d:?}");
    assert_eq!(
        d.detail.as_deref(),
        Some("accessgate: standard approval by manager.")
    );
    let stage = d.approval_stage.clone().unwrap();
    assert_eq!(
        stage["primaryApprovers"],
        serde_json::json!([{"@odata.type": "#microsoft.graph.requestorManager", "managerLevel": 1}])
    );
    assert_eq!(stage["durationBeforeAutomaticDenial"], "P3D");
    assert_eq!(stage["isEscalationEnabled"], false);
    // No rule gives Sales an approval stage: denied, never sent on without approvers.
    let r = h.send(at_approval("bob-sales-open")).await;
    let d = resumed(&h.emu(), &r.stage_instance_id).await;
    assert_eq!(d.state.as_deref(), Some("denied"), "{d:?}");
    assert!(d.approval_stage.is_none());
    assert!(
        d.detail
            .unwrap_or_default()
            .contains("no policy rule gives"),
        "the reason is named"
    );
    // The other stages are decided as before (the finance rule has no approval).
    let r = h.send(send_options("alice-payments")).await;
    let d = resumed(&h.emu(), &r.stage_instance_id).await;
    assert_eq!(d.state.as_deref(), Some("denied"));
    assert!(d.approval_stage.is_none());
}
