//! PIM custom extensions end to end: the emulator acts as PIM (v2 bearer tokens of PIM's app,
//! the three request shapes, its client timeout and retries) against the real binary, which
//! answers a synchronous verdict from the policy's `[[pim_rules]]` with Graph and ServiceNow
//! reads served by the emulator; verdicts are recorded before they are sent and a re-delivery
//! gets the same one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use accessgate_emulator::{
    FaultSpec, FaultTarget, IssuerVersion, MintOptions, PimReport, PimSendOptions, PimShape, World,
};
use common::*;
use serde_json::{Value, json};

const GA: &str = "62e90394-69f5-4237-9190-012177145e10";
const READER: &str = "f2ef992c-3afb-46b9-b7cf-a126ee74c451";
const CONTRIBUTOR: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";
const ALICE: &str = "7a1e0000-0000-4000-8000-000000000001";
const DAN: &str = "7a1e0000-0000-4000-8000-000000000007";
const GROUP: &str = "9a0e0000-0000-4000-8000-000000000002";
const SN_PASSWORD: &str = "sn-pim-password-not-printed";

fn audience(emu: &Emulator) -> String {
    format!("api://accessgate.test/{}", emu.config().graph_client_id)
}

const POLICY: &str = r#"
version = 1

[checks.change]
type = "servicenow_ticket"
table = "change_request"
number_from_answer = "ticketNumber"
allowed_states = ["-1", "Implement"]
opened_for_target = true
opened_for_field = "requested_by"
also_for_fields = ["assigned_to"]
window_start_field = "start_date"
window_end_field = "end_date"

[checks.hr]
type = "hr"

[checks.sod]
type = "sod"

[[risks]]
name = "security-and-compliance"
severity = "high"
owner = "controls@contoso.example"
sets = [
  { name = "security", entitlements = ["role:194ae4cb-b126-40b2-bd5b-6091b380977d"] },
  { name = "compliance", entitlements = ["role:17315797-102d-40b4-93e0-432062caca18"] },
]

[[pim_rules]]
name = "security-admin-sod"
roles = ["194ae4cb-b126-40b2-bd5b-6091b380977d"]
checks = ["sod"]

[[pim_rules]]
name = "tier0-needs-a-change"
roles = ["62e90394-69f5-4237-9190-012177145e10"]
checks = ["change"]
auto_approve = true

[[pim_rules]]
name = "readers-auto"
roles = ["f2ef992c-3afb-46b9-b7cf-a126ee74c451"]
checks = ["hr"]
auto_approve = true

[[pim_rules]]
name = "groups-and-azure-need-a-change"
resource_types = ["group", "azure_resource"]
checks = ["change"]
"#;

fn sn_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S").to_string()
}

fn world() -> World {
    let now = jiff::Timestamp::now();
    let h = |n: i64| now + jiff::SignedDuration::from_hours(n);
    serde_json::from_value(json!({
        "users": [
            {"id": ALICE, "displayName": "Alice", "userPrincipalName": "alice@contoso.example", "mail": "alice@contoso.example", "accountEnabled": true,
             "directoryRoles": ["17315797-102d-40b4-93e0-432062caca18"]},
            {"id": DAN, "displayName": "Dan", "userPrincipalName": "dan@contoso.example", "mail": "dan@contoso.example", "accountEnabled": false}
        ],
        "servicenow": {"tables": {
            "sys_user": [
                {"sys_id": "5e000000000000000000000000000001", "user_name": "alice", "email": "alice@contoso.example"},
                {"sys_id": "5e000000000000000000000000000002", "user_name": "bob", "email": "bob@contoso.example"}
            ],
            "change_request": [
                {"sys_id": "c0000000000000000000000000000001", "number": "CHG0030001", "state": {"value": "-1", "display_value": "Implement"},
                 "requested_by": "5e000000000000000000000000000002", "assigned_to": "5e000000000000000000000000000001",
                 "start_date": sn_time(h(-1)), "end_date": sn_time(h(2))},
                {"sys_id": "c0000000000000000000000000000002", "number": "CHG0030002", "state": {"value": "3", "display_value": "Closed"},
                 "requested_by": "5e000000000000000000000000000001", "start_date": sn_time(h(-1)), "end_date": sn_time(h(2))},
                {"sys_id": "c0000000000000000000000000000003", "number": "CHG0030003", "state": {"value": "-1", "display_value": "Implement"},
                 "requested_by": "5e000000000000000000000000000001", "start_date": sn_time(h(-5)), "end_date": sn_time(h(-3))}
            ]
        }}
    }))
    .unwrap()
}

async fn start(pim_extra: &str) -> Harness {
    let client = accessgate_emulator::EmulatorConfig::default().graph_client_id;
    let h = Harness::start_with_servicenow(
        &policy_file(POLICY),
        "",
        "",
        &format!(
            "[pim]\naudiences = [\"api://accessgate.test/{client}\"]\nbudget_ms = 3000\n{pim_extra}"
        ),
        SN_PASSWORD,
    )
    .await;
    h.emu().load_world(&world()).unwrap();
    h
}

fn pim_url(h: &Harness, ext: Option<&str>) -> String {
    match ext {
        None => h.ag.url("/api/pim"),
        Some(e) => h.ag.url(&format!("/api/pim/{e}")),
    }
}

fn role(h: &Harness, role: &str, ticket: Option<&str>) -> PimSendOptions {
    PimSendOptions {
        target_url: pim_url(h, None),
        audience: audience(&h.emu()),
        shape: PimShape::EntraRole,
        principal_id: Some(ALICE.into()),
        role_definition_id: Some(role.into()),
        ticket_number: ticket.map(str::to_owned),
        ticket_system: ticket.map(|_| "ServiceNow".to_owned()),
        ..Default::default()
    }
}

async fn send(h: &Harness, o: &PimSendOptions) -> PimReport {
    h.emu().send_pim(o).await.unwrap()
}

fn outcome(r: &PimReport) -> (Option<u16>, String, String) {
    let b = r.body.clone().unwrap_or(Value::Null);
    (
        r.status,
        b["evaluationOutcome"].as_str().unwrap_or("").to_owned(),
        b["reason"].to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_admin_activation_with_an_open_change_is_approved_but_never_auto_approved() {
    let h = start("").await;
    let r = send(&h, &role(&h, GA, Some("CHG0030001"))).await;
    let (status, out, reasons) = outcome(&r);
    assert_eq!((status, out.as_str()), (Some(200), "Approved"), "{reasons}");
    assert!(reasons.contains("never auto-approved"), "{reasons}");
    let id = r.body.as_ref().unwrap()["evaluationId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    assert_eq!(r.attempts, 1);
    // A re-delivery of the same request: the same verdict and evaluation id, from the ledger
    // (ServiceNow is not asked again).
    let calls = h.emu().servicenow_calls().len();
    let again = h
        .emu()
        .send_pim(&PimSendOptions {
            body: Some(r.sent.to_string()),
            ..role(&h, GA, None)
        })
        .await
        .unwrap();
    assert_eq!(again.body.as_ref().unwrap()["evaluationId"], id.as_str());
    assert_eq!(outcome(&again).1, "Approved");
    assert_eq!(h.emu().servicenow_calls().len(), calls);
    h.ag.wait_log("the re-delivery", |l| {
        l["message"] == "PIM re-delivery answered with its recorded verdict"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_valid_change_the_activation_is_denied_with_a_reason_the_user_can_act_on() {
    let h = start("").await;
    for (ticket, want) in [
        (None, "no ServiceNow ticket number"),
        (Some("CHG0030002"), "is Closed"),
        (Some("CHG0030003"), "window"),
        (Some("CHG0039999"), "not found"),
    ] {
        let r = send(&h, &role(&h, GA, ticket)).await;
        let (status, out, reasons) = outcome(&r);
        assert_eq!(
            (status, out.as_str()),
            (Some(200), "Denied"),
            "{ticket:?}: {reasons}"
        );
        assert!(reasons.contains(want), "{ticket:?}: {reasons}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_approval_only_where_a_rule_says_so_and_the_other_shapes_are_decided_too() {
    let h = start("").await;
    let r = send(&h, &role(&h, READER, None)).await;
    assert_eq!(outcome(&r).1, "AutoApproved", "{:?}", r.body);
    // Dan's account is disabled: the hr check denies.
    let r = send(
        &h,
        &PimSendOptions {
            principal_id: Some(DAN.into()),
            ..role(&h, READER, None)
        },
    )
    .await;
    assert_eq!(outcome(&r).1, "Denied", "{:?}", r.body);
    // A role no rule names: the normal PIM flow.
    let r = send(&h, &role(&h, "fe930be7-5e62-47db-91af-98c3a49a38b1", None)).await;
    let (_, out, reasons) = outcome(&r);
    assert_eq!(out, "Approved");
    assert!(reasons.contains("no policy rule applies"), "{reasons}");
    for shape in [PimShape::Group, PimShape::AzureResource] {
        let base = PimSendOptions {
            shape,
            group_id: Some(GROUP.into()),
            role_definition_id: Some(CONTRIBUTOR.into()),
            ..role(&h, CONTRIBUTOR, Some("CHG0030001"))
        };
        let r = send(&h, &base).await;
        assert_eq!(outcome(&r).1, "Approved", "{shape:?}: {:?}", r.body);
        let r = send(
            &h,
            &PimSendOptions {
                ticket_number: None,
                ..base
            },
        )
        .await;
        assert_eq!(outcome(&r).1, "Denied", "{shape:?}: {:?}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_bodies_are_refused_never_approved() {
    let h = start("").await;
    let emu = h.emu();
    let base = role(&h, READER, None);
    let cases = [
        (
            "wrong audience",
            MintOptions {
                audience: Some("api://someone-else".into()),
                ..Default::default()
            },
        ),
        (
            "v1 token",
            MintOptions {
                issuer_version: Some(IssuerVersion::V1),
                ..Default::default()
            },
        ),
        (
            "wrong caller",
            MintOptions {
                app_id: Some("810dcf14-1858-4bf2-8134-4c369fa3235b".into()),
                ..Default::default()
            },
        ),
        (
            "expired",
            MintOptions {
                expires_in_secs: Some(-600),
                ..Default::default()
            },
        ),
        (
            "other tenant",
            MintOptions {
                tenant_id: Some("99999999-2222-3333-4444-555555555555".into()),
                ..Default::default()
            },
        ),
    ];
    for (name, token) in cases {
        let r = send(
            &h,
            &PimSendOptions {
                token: Some(token),
                maximum_retries: Some(0),
                ..base.clone()
            },
        )
        .await;
        assert_eq!(r.status, Some(401), "{name}: {:?}", r.body);
        assert!(
            r.body.as_ref().unwrap().get("evaluationOutcome").is_none(),
            "{name}"
        );
    }
    let r = send(
        &h,
        &PimSendOptions {
            authorization: Some(String::new()),
            maximum_retries: Some(0),
            ..base.clone()
        },
    )
    .await;
    assert_eq!(r.status, Some(401));
    for (name, body, status) in [
        ("not json", "{".to_owned(), 400),
        ("no principal", r##"{"@odata.type":"#microsoft.graph.unifiedRoleAssignmentScheduleRequest","roleDefinitionId":"62e90394-69f5-4237-9190-012177145e10"}"##.to_owned(), 400),
        ("unknown type", r##"{"@odata.type":"#microsoft.graph.user","principalId":"7a1e0000-0000-4000-8000-000000000001"}"##.to_owned(), 400),
        ("oversized", format!("{{\"pad\":\"{}\"}}", "x".repeat(1_100_000)), 413),
        // Beyond what the route reads at all: the same JSON refusal, not a bare 413.
        ("far too large", format!("{{\"pad\":\"{}\"}}", "x".repeat(3_000_000)), 413),
    ] {
        let r = send(&h, &PimSendOptions { body: Some(body), maximum_retries: Some(0), ..base.clone() }).await;
        assert_eq!(r.status, Some(status), "{name}: {:?}", r.body);
        assert!(r.body.as_ref().is_some_and(|b| b["error"]["code"].is_string()), "{name}: {:?}", r.body);
    }
    // Every refusal is logged with its reason; no secret and no token in any line.
    h.ag.wait_log("the last refusal", |l| {
        l["message"] == "PIM call rejected" && l["reason"] == "unsupported_request"
    })
    .await;
    let reasons: Vec<String> =
        h.ag.log_json()
            .iter()
            .filter(|l| l["message"] == "PIM call rejected")
            .map(|l| l["reason"].as_str().unwrap_or("").to_owned())
            .collect();
    assert!(reasons.iter().any(|r| r == "wrong_audience"), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r == "caller_not_allowed"),
        "{reasons:?}"
    );
    for l in h.ag.log_lines() {
        assert!(!l.contains(SN_PASSWORD), "{l}");
        assert!(!l.contains("eyJ"), "a token in a log line: {l}");
    }
    let _ = emu;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_ticket_system_gives_on_error_within_the_budget_audit_and_notifications() {
    let h = start("[pim.extensions.tight]\nbudget_ms = 400\n[pim.extensions.audit]\nmode = \"audit\"\n[pim.extensions.post]\npost_approval = true\n").await;
    let emu = h.emu();
    emu.set_fault(&FaultSpec {
        target: FaultTarget::ServiceNow,
        delay_ms: Some(2000),
        ..Default::default()
    })
    .unwrap();
    let started = std::time::Instant::now();
    let r = send(
        &h,
        &PimSendOptions {
            target_url: pim_url(&h, Some("tight")),
            ..role(&h, GA, Some("CHG0030001"))
        },
    )
    .await;
    let took = started.elapsed();
    let (status, out, reasons) = outcome(&r);
    assert_eq!((status, out.as_str()), (Some(200), "Denied"), "{reasons}");
    assert!(
        reasons.contains("could not verify") && reasons.contains("Try again"),
        "{reasons}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "the budget bounds the answer: {took:?}"
    );
    emu.clear_faults();
    // Audit mode: Approved, and the ledger says what enforce mode would have answered.
    let r = send(
        &h,
        &PimSendOptions {
            target_url: pim_url(&h, Some("audit")),
            ..role(&h, GA, None)
        },
    )
    .await;
    let (_, out, reasons) = outcome(&r);
    assert_eq!(out, "Approved");
    assert!(
        reasons.contains("enforce mode would answer Denied"),
        "{reasons}"
    );
    h.ag.wait_log("the audit verdict", |l| {
        l["message"] == "PIM verdict" && l["mode"] == "audit" && l["enforce_outcome"] == "Denied"
    })
    .await;
    // A post-approval extension: recorded and answered at once, apart from the same request's
    // pre-approval verdict (here: the audit call's body, sent again as a notification).
    let audit_id = r.body.as_ref().unwrap()["evaluationId"].clone();
    let r = send(
        &h,
        &PimSendOptions {
            target_url: pim_url(&h, Some("post")),
            body: Some(r.sent.to_string()),
            ..role(&h, GA, None)
        },
    )
    .await;
    assert_eq!(outcome(&r).1, "Approved");
    assert_ne!(r.body.as_ref().unwrap()["evaluationId"], audit_id);
    h.ag.wait_log("the notification", |l| {
        l["message"] == "PIM verdict" && l["post_approval"] == true
    })
    .await;
    // An extension that is not configured.
    let r = send(
        &h,
        &PimSendOptions {
            target_url: pim_url(&h, Some("nope")),
            maximum_retries: Some(0),
            ..role(&h, GA, None)
        },
    )
    .await;
    assert_eq!(r.status, Some(404));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verdict_survives_a_restart() {
    let mut h = start("").await;
    let first = send(&h, &role(&h, READER, None)).await;
    let id = first.body.as_ref().unwrap()["evaluationId"].clone();
    h.ag.restart().await;
    // The world changes (Alice's account is disabled now), but the recorded verdict stands.
    let mut w = world();
    w.users[0]
        .properties
        .insert("accountEnabled".into(), json!(false));
    h.emu().load_world(&w).unwrap();
    let again = h
        .emu()
        .send_pim(&PimSendOptions {
            target_url: pim_url(&h, None),
            body: Some(first.sent.to_string()),
            ..role(&h, READER, None)
        })
        .await
        .unwrap();
    assert_eq!(again.body.as_ref().unwrap()["evaluationId"], id);
    assert_eq!(outcome(&again).1, "AutoApproved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separation_of_duties_against_the_roles_already_held() {
    let h = start("").await;
    const SECURITY_ADMIN: &str = "194ae4cb-b126-40b2-bd5b-6091b380977d";
    // Alice holds Compliance Administrator (read from Graph): Security Administrator conflicts.
    let r = send(&h, &role(&h, SECURITY_ADMIN, None)).await;
    let (_, out, reasons) = outcome(&r);
    assert_eq!(out, "Denied", "{reasons}");
    assert!(reasons.contains("security-and-compliance"), "{reasons}");
    assert!(
        h.emu()
            .graph_calls()
            .iter()
            .any(|c| c.path.contains("$batch")),
        "the roles came from Graph"
    );
    // Dan holds no role: no conflict (his disabled account is not this rule's check).
    let r = send(
        &h,
        &PimSendOptions {
            principal_id: Some(DAN.into()),
            ..role(&h, SECURITY_ADMIN, None)
        },
    )
    .await;
    assert_eq!(outcome(&r).1, "Approved", "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pim_retries_after_its_client_timeout_are_one_verdict() {
    let h = start("").await;
    let emu = h.emu();
    // ServiceNow is slow: PIM's client gives up after 300 ms and sends the same body again.
    emu.set_fault(&FaultSpec {
        target: FaultTarget::ServiceNow,
        delay_ms: Some(700),
        ..Default::default()
    })
    .unwrap();
    let o = PimSendOptions {
        client_timeout_ms: Some(300),
        maximum_retries: Some(2),
        ..role(&h, GA, Some("CHG0030001"))
    };
    let r = send(&h, &o).await;
    assert_eq!(r.attempts, 3, "{r:?}");
    assert!(
        r.error.as_deref().unwrap_or("").contains("timeout"),
        "{r:?}"
    );
    emu.clear_faults();
    // Each delivery went on deciding; one verdict stands, and the next delivery gets it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = send(
        &h,
        &PimSendOptions {
            body: Some(r.sent.to_string()),
            ..role(&h, GA, None)
        },
    )
    .await;
    assert_eq!(outcome(&again).1, "Approved", "{:?}", again.body);
    let verdicts: Vec<Value> =
        h.ag.log_json()
            .into_iter()
            .filter(|l| l["message"] == "PIM verdict")
            .collect();
    let ids: std::collections::BTreeSet<String> = verdicts
        .iter()
        .map(|l| l["evaluation_id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "{verdicts:?}");
    assert_eq!(
        again.body.as_ref().unwrap()["evaluationId"].as_str(),
        ids.iter().next().map(String::as_str)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_activation_must_fit_the_change_window_and_the_client_id_audience_is_accepted() {
    let h = start("").await;
    // CHG0030001's window ends in 2 h: a 3 h activation does not fit.
    let r = send(
        &h,
        &PimSendOptions {
            duration: Some("PT3H".into()),
            ..role(&h, GA, Some("CHG0030001"))
        },
    )
    .await;
    let (_, out, reasons) = outcome(&r);
    assert_eq!(out, "Denied", "{reasons}");
    assert!(reasons.contains("does not lie wholly in it"), "{reasons}");
    // Entra writes a v2 token's aud as the API's client id: accepted as well as the URI.
    let client = h.emu().config().graph_client_id.clone();
    let r = send(
        &h,
        &PimSendOptions {
            token: Some(MintOptions {
                audience: Some(client),
                ..Default::default()
            }),
            ..role(&h, READER, None)
        },
    )
    .await;
    assert_eq!(outcome(&r).1, "AutoApproved", "{:?}", r.body);
}
