//! ServiceNow ticket bridging end to end: the real binary, the emulator's Table API and its
//! business rule posting the signed webhook. A request approved → one ticket → Entra waits →
//! the ticket closes → resumed from what the ticket says (continue, deny), by webhook or by the
//! poll; duplicates and restarts open no second ticket; bad webhooks change nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/azurite.rs"]
mod azurite;
mod common;

use std::collections::HashMap;
use std::time::Duration;

use accessgate_emulator::{
    BearerWebhook, CloseTicket, IssuerVersion, MintOptions, SendOptions, TicketView,
    WebhookSettings,
};
use common::*;

const SN_PASSWORD: &str = "sn-password-not-printed";
const WEBHOOK_SECRET: &str = "webhook-secret-not-printed";

const POLICY: &str = r#"
version = 1

[tickets.provision]
table = "sc_req_item"
assignment_group = "Identity Ops"
reminder_before = "0s"
fields = { short_description = "Access request: {package} for {target}", description = "Requested by {requestor} ({request_id}). {explanation}" }

[[rules]]
name = "approved-opens-a-ticket"
stages = ["assignmentRequestApproved"]
ticket = "provision"

[[rules]]
name = "removed-opens-a-deprovisioning-ticket"
stages = ["assignmentRequestRemoved"]
ticket = "provision"
"#;

struct Bridge {
    h: Harness,
}

/// accessgate with the bridge policy, `[servicenow]` on the emulator, the webhook pointed at
/// accessgate; `extra` is more TOML (e.g. `poll_interval_seconds`), `queue` a `[queue]` table.
async fn start(servicenow_extra: &str, queue: &str, env: Vec<(String, String)>) -> Bridge {
    start_policy(POLICY, servicenow_extra, queue, env).await
}

/// Like [`start`], with another policy text.
async fn start_policy(
    policy_text: &str,
    servicenow_extra: &str,
    queue: &str,
    env: Vec<(String, String)>,
) -> Bridge {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, policy_text).unwrap();
    let mut all = vec![
        (
            "ACCESSGATE_SERVICENOW__PASSWORD".to_string(),
            SN_PASSWORD.to_string(),
        ),
        (
            "ACCESSGATE_SERVICENOW__WEBHOOK_SECRET".to_string(),
            WEBHOOK_SECRET.to_string(),
        ),
    ];
    all.extend(env);
    let h = Harness::start_env(
        "",
        &format!(
            "[policy]\nfile = \"{}\"\n[servicenow]\ninstance_url = \"@EMULATOR_URL@\"\nauth = \"basic\"\nusername = \"accessgate\"\n{servicenow_extra}\n{queue}",
            policy.display()
        ),
        all,
    )
    .await;
    std::mem::forget(dir);
    let emu = h.emu();
    let mut creds = emu.servicenow_credentials();
    creds.username = "accessgate".into();
    creds.password = SN_PASSWORD.into();
    emu.set_servicenow_credentials(&creds).unwrap();
    seed_servicenow(&emu);
    emu.set_servicenow_webhook(&WebhookSettings {
        url: h.ag.url("/api/servicenow/events"),
        secret: WEBHOOK_SECRET.into(),
        ..Default::default()
    })
    .unwrap();
    Bridge { h }
}

fn opts(stage: &str, sid: &str) -> SendOptions {
    SendOptions {
        stage: Some(stage.into()),
        stage_instance_id: Some(sid.into()),
        request_id: Some(format!("req-{sid}")),
        access_package_name: Some("Payments".into()),
        ..Default::default()
    }
}

fn tickets_for(emu: &Emulator, sid: &str) -> Vec<TicketView> {
    let link = format!("accessgate:{sid}");
    emu.servicenow_tickets()
        .into_iter()
        .filter(|t| t.correlation_id == link)
        .collect()
}

async fn ticket_of(emu: &Emulator, sid: &str) -> TicketView {
    for _ in 0..200 {
        if let Some(t) = tickets_for(emu, sid).into_iter().next() {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no ticket for {sid}; ServiceNow calls: {:?}; tickets: {:?}",
        emu.servicenow_calls(),
        emu.servicenow_tickets()
    );
}

fn resumes_of(emu: &Emulator, sid: &str) -> usize {
    emu.resumes()
        .iter()
        .filter(|r| r.stage_instance_id == sid)
        .count()
}

fn close(emu: &Emulator, t: &TicketView, state: &str, notes: &str) {
    emu.close_servicenow_ticket(
        &t.table,
        &t.sys_id,
        &CloseTicket {
            state: Some(state.into()),
            close_notes: Some(notes.into()),
            close_code: None,
        },
    )
    .unwrap();
}

fn no_secret_leaks(ag: &Accessgate) {
    let lines = ag.log_lines();
    for l in &lines {
        assert!(
            !l.contains(WEBHOOK_SECRET),
            "webhook secret in a log line: {l}"
        );
        assert!(
            !l.contains(SN_PASSWORD),
            "ServiceNow password in a log line: {l}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_request_waits_for_its_ticket_and_resumes_by_webhook() {
    let b = start("poll_interval_seconds = 0", "", Vec::new()).await;
    let emu = b.h.emu();
    let sid = "bridge-webhook-1";
    let sent = b.h.send(opts("assignmentRequestApproved", sid)).await;
    assert_eq!(sent.status, Some(202), "{sent:?}");
    let t = ticket_of(&emu, sid).await;
    assert!(t.number.starts_with("RITM"), "{t:?}");
    assert_eq!(
        t.fields.get("assignment_group").map(String::as_str),
        Some("Identity Ops")
    );
    let sd = t
        .fields
        .get("short_description")
        .cloned()
        .unwrap_or_default();
    assert!(sd.contains("Payments"), "{sd}");
    // Parked on the ticket: nothing is resumed while it is open.
    b.h.ag
        .wait_log("log line", |l| {
            l["message"] == "job parked" && l["key"] == format!("snow:{}", t.sys_id)
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(resumes_of(&emu, sid), 0, "resumed while the ticket is open");

    close(&emu, &t, "3", "Access granted in SAP");
    let r = resumed(&emu, sid).await;
    assert_eq!(r.state, None, "closed complete continues: {r:?}");
    let detail = r.detail.unwrap_or_default();
    assert!(
        detail.contains(&t.number) && detail.contains("Access granted in SAP"),
        "{detail}"
    );
    let deliveries = emu.servicenow_webhooks();
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0].status, Some(202), "{deliveries:?}");
    // Later edits of the closed ticket change nothing: one resume, one ticket.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(resumes_of(&emu, sid), 1);
    assert_eq!(tickets_for(&emu, sid).len(), 1);
    no_secret_leaks(&b.h.ag);

    // `accessgate tickets` shows the ticket, its Entra request and how it ended.
    let cfg = b.h.ag.config_path.to_string_lossy().to_string();
    let env: Vec<(&str, &str)> =
        b.h.ag
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
    let out = run_to_exit(&["tickets", "list", "--json", "--config", &cfg], &env);
    assert!(out.status.success(), "{}", output_text(&out));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = rows
        .iter()
        .find(|r| r["stageInstanceId"] == sid)
        .expect("listed");
    assert_eq!(row["number"], t.number.as_str());
    assert_eq!(row["phase"], "closed");
    assert_eq!(row["requestId"], format!("req-{sid}"));
    assert_eq!(row["closed"]["deny"], false);
    let out = run_to_exit(&["tickets", "show", &t.number, "--config", &cfg], &env);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&t.sys_id));
    let out = run_to_exit(&["tickets", "show", "RITM9999999", "--config", &cfg], &env);
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_ticket_denies_with_its_number_and_notes() {
    let b = start("poll_interval_seconds = 0", "", Vec::new()).await;
    let emu = b.h.emu();
    let sid = "bridge-cancel-1";
    b.h.send(opts("assignmentRequestApproved", sid)).await;
    let t = ticket_of(&emu, sid).await;
    b.h.ag
        .wait_log("log line", |l| l["message"] == "job parked")
        .await;
    close(&emu, &t, "4", "Not approved by the data owner");
    let r = resumed(&emu, sid).await;
    assert_eq!(r.state.as_deref(), Some("denied"), "{r:?}");
    let detail = r.detail.unwrap_or_default();
    assert!(
        detail.contains(&t.number) && detail.contains("Not approved by the data owner"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_webhook_is_made_up_by_the_poll() {
    let b = start("poll_interval_seconds = 1", "", Vec::new()).await;
    let emu = b.h.emu();
    emu.set_servicenow_webhook(&WebhookSettings {
        url: b.h.ag.url("/api/servicenow/events"),
        secret: WEBHOOK_SECRET.into(),
        drop: true,
        ..Default::default()
    })
    .unwrap();
    let sid = "bridge-poll-1";
    b.h.send(opts("assignmentRequestApproved", sid)).await;
    let t = ticket_of(&emu, sid).await;
    b.h.ag
        .wait_log("log line", |l| l["message"] == "job parked")
        .await;
    close(&emu, &t, "3", "done");
    let r = resumed(&emu, sid).await;
    assert_eq!(r.state, None);
    assert!(emu.servicenow_webhooks().iter().all(|d| d.dropped));
    b.h.ag
        .wait_log("log line", |l| {
            l["message"] == "servicenow poll" && l["woken"] == 1
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_open_one_ticket_and_resume_once() {
    let b = start("poll_interval_seconds = 0", "", Vec::new()).await;
    let emu = b.h.emu();
    emu.set_servicenow_webhook(&WebhookSettings {
        url: b.h.ag.url("/api/servicenow/events"),
        secret: WEBHOOK_SECRET.into(),
        duplicate: true,
        ..Default::default()
    })
    .unwrap();
    let sid = "bridge-dup-1";
    // Entra's retry of the same callout (the same stage instance, a fresh signed request).
    for _ in 0..3 {
        let s = b.h.send(opts("assignmentRequestApproved", sid)).await;
        assert_eq!(s.status, Some(202), "{s:?}");
    }
    let t = ticket_of(&emu, sid).await;
    b.h.ag
        .wait_log("log line", |l| l["message"] == "job parked")
        .await;
    close(&emu, &t, "3", "ok");
    resumed(&emu, sid).await;
    let statuses = eventually(10, "both webhook posts answered", || {
        let d = emu.servicenow_webhooks();
        (d.len() == 2 && d.iter().all(|x| x.status.is_some())).then_some(d)
    })
    .await;
    // The duplicated post is the same signed request: refused as a replay.
    let codes: Vec<u16> = statuses.iter().filter_map(|d| d.status).collect();
    assert!(codes.contains(&202) && codes.contains(&409), "{codes:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(tickets_for(&emu, sid).len(), 1);
    assert_eq!(resumes_of(&emu, sid), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deprovisioning_ticket_is_opened_and_does_not_wait() {
    let b = start("poll_interval_seconds = 0", "", Vec::new()).await;
    let emu = b.h.emu();
    let sid = "bridge-removed-1";
    let o = opts("assignmentRequestRemoved", sid);
    let sent = b.h.send(o).await;
    assert_eq!(sent.status, Some(202), "{sent:?}");
    let t = ticket_of(&emu, sid).await;
    assert!(t.active);
    b.h.ag
        .wait_log("log line", |l| {
            l["message"] == "ticket opened" && l["waits"] == false
        })
        .await;
    // Entra does not wait on it: the callout is resumed at once, naming the ticket.
    let r = resumed(&emu, sid).await;
    assert_eq!(r.state, None);
    assert!(r.detail.unwrap_or_default().contains(&t.number));
    assert!(
        tickets_for(&emu, sid)[0].active,
        "the ticket stays open for the agent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_ticket_denies_by_default() {
    let b = start("poll_interval_seconds = 1", "", Vec::new()).await;
    let emu = b.h.emu();
    let sid = "bridge-deleted-1";
    b.h.send(opts("assignmentRequestApproved", sid)).await;
    let t = ticket_of(&emu, sid).await;
    b.h.ag
        .wait_log("log line", |l| l["message"] == "job parked")
        .await;
    let resp = client()
        .delete(format!(
            "{}/api/now/table/{}/{}",
            emu.base_url(),
            t.table,
            t.sys_id
        ))
        .basic_auth("accessgate", Some(SN_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let r = resumed(&emu, sid).await;
    assert_eq!(r.state.as_deref(), Some("denied"), "{r:?}");
    assert!(r.detail.unwrap_or_default().contains("deleted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_waiting_keeps_the_wait_and_the_ticket() {
    let mut b = start("poll_interval_seconds = 0", "", Vec::new()).await;
    let emu = b.h.emu();
    let sid = "bridge-restart-1";
    b.h.send(opts("assignmentRequestApproved", sid)).await;
    let t = ticket_of(&emu, sid).await;
    b.h.ag
        .wait_log("log line", |l| l["message"] == "job parked")
        .await;
    b.h.ag.kill9();
    b.h.ag.restart().await;
    // The webhook goes to the new process's port.
    emu.set_servicenow_webhook(&WebhookSettings {
        url: b.h.ag.url("/api/servicenow/events"),
        secret: WEBHOOK_SECRET.into(),
        ..Default::default()
    })
    .unwrap();
    close(&emu, &t, "3", "after restart");
    let r = resumed(&emu, sid).await;
    assert!(r.detail.unwrap_or_default().contains("after restart"));
    assert_eq!(tickets_for(&emu, sid).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_passing_with_the_ticket_open_adds_work_notes_and_resumes_nothing() {
    // Callback timeout 40 s, margin 5 s (the test config): the reminder comes 30 s before the
    // deadline, i.e. at once, and the deadline 35 s after receipt.
    let policy = POLICY.replace("reminder_before = \"0s\"", "reminder_before = \"30s\"");
    let b = start_policy(&policy, "poll_interval_seconds = 0", "", Vec::new()).await;
    let (h, emu) = (&b.h, b.h.emu());
    let sid = "bridge-expiry-1";
    let mut o = opts("assignmentRequestApproved", sid);
    o.timeout = Some("PT40S".into());
    h.send(o).await;
    let t = ticket_of(&emu, sid).await;
    let journal_has = |needle: &'static str| {
        let emu = emu.clone();
        let sid = sid.to_owned();
        move || {
            tickets_for(&emu, &sid).into_iter().next().and_then(|t| {
                t.journal
                    .iter()
                    .any(|j| j.value.contains(needle))
                    .then_some(())
            })
        }
    };
    eventually(
        15,
        "the reminder work note",
        journal_has("Entra stops waiting"),
    )
    .await;
    eventually(60, "the expiry work note", journal_has("expired")).await;
    h.ag.wait_log("log line", |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("deadline passed while ServiceNow"))
    })
    .await;
    assert_eq!(resumes_of(&emu, sid), 0, "nothing is resumed late");
    assert!(tickets_for(&emu, sid)[0].active, "{t:?}");
}

/// Signs like the business rule: `v1=hex(HMAC-SHA256(secret, ts + "." + body))`.
fn signed(secret: &str, ts: &str, body: &str) -> String {
    accessgate_emulator::tickets::signature(secret.as_bytes(), ts, body.as_bytes())
}

async fn post_event(
    ag: &Accessgate,
    ts: &str,
    sig: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut req = client()
        .post(ag.url("/api/servicenow/events"))
        .header("content-type", "application/json")
        .header("x-accessgate-timestamp", ts)
        .body(body.to_owned());
    if let Some(s) = sig {
        req = req.header("x-accessgate-signature", s);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

/// What is sent (label, timestamp, signature, body) and what must come back (status, code).
type BadCase = (
    &'static str,
    String,
    Option<String>,
    String,
    u16,
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_webhooks_get_a_reason_and_change_nothing() {
    let b = start("poll_interval_seconds = 0", "", Vec::new()).await;
    let emu = b.h.emu();
    let sid = "bridge-bad-1";
    b.h.send(opts("assignmentRequestApproved", sid)).await;
    let t = ticket_of(&emu, sid).await;
    b.h.ag
        .wait_log("log line", |l| l["message"] == "job parked")
        .await;
    let now = (accessgate::queue::now_ms() / 1000).to_string();
    let body = serde_json::json!({"table": t.table, "sys_id": t.sys_id, "number": t.number,
        "state": "3", "correlation_id": t.correlation_id, "event": "closed"})
    .to_string();
    let ag = &b.h.ag;
    let cases: Vec<BadCase> = vec![
        (
            "no signature",
            now.clone(),
            None,
            body.clone(),
            401,
            "missing_header",
        ),
        (
            "wrong key",
            now.clone(),
            Some(signed("wrong", &now, &body)),
            body.clone(),
            401,
            "bad_signature",
        ),
        (
            "not v1",
            now.clone(),
            Some("v2=abc".into()),
            body.clone(),
            401,
            "bad_signature_format",
        ),
        (
            "stale",
            "1000000000".into(),
            Some(signed(WEBHOOK_SECRET, "1000000000", &body)),
            body.clone(),
            401,
            "stale_timestamp",
        ),
        (
            "bad timestamp",
            "soon".into(),
            Some(signed(WEBHOOK_SECRET, "soon", &body)),
            body.clone(),
            401,
            "bad_timestamp",
        ),
        (
            "body changed after signing",
            now.clone(),
            Some(signed(WEBHOOK_SECRET, &now, &body)),
            body.replace("\"3\"", "\"4\""),
            401,
            "bad_signature",
        ),
    ];
    for (what, ts, sig, body, status, code) in cases {
        let (s, v) = post_event(ag, &ts, sig.as_deref(), &body).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{what}: {v}"
        );
        assert!(v["error"]["correlationId"].is_string(), "{what}: {v}");
    }
    // Signed correctly, but not an event we know.
    let unknown =
        serde_json::json!({"table": t.table, "sys_id": "0123456789abcdef0123456789abcdef"})
            .to_string();
    let ts = (accessgate::queue::now_ms() / 1000 + 1).to_string();
    let (s, v) = post_event(
        ag,
        &ts,
        Some(&signed(WEBHOOK_SECRET, &ts, &unknown)),
        &unknown,
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("unknown_ticket")),
        "{v}"
    );
    let other_table = serde_json::json!({"table": "incident", "sys_id": t.sys_id}).to_string();
    let (s, v) = post_event(
        ag,
        &ts,
        Some(&signed(WEBHOOK_SECRET, &ts, &other_table)),
        &other_table,
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("unknown_table")),
        "{v}"
    );
    for (what, bad) in [
        ("not json", "{"),
        (
            "duplicate member",
            "{\"sys_id\":\"a\",\"sys_id\":\"b\",\"table\":\"x\"}",
        ),
        ("no sys_id", "{\"table\":\"sc_req_item\"}"),
    ] {
        let (s, v) = post_event(ag, &ts, Some(&signed(WEBHOOK_SECRET, &ts, bad)), bad).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("malformed_event")),
            "{what}: {v}"
        );
    }
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(20_000));
    let (s, v) = post_event(ag, &ts, Some(&signed(WEBHOOK_SECRET, &ts, &big)), &big).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("body_too_large")),
        "{v}"
    );
    // None of these woke the job or resumed anything.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(resumes_of(&emu, sid), 0);
    // A good event (the ticket is still open) wakes the job, which reads the ticket, finds it
    // open and parks again; the same signed event a second time is a replay.
    let ts = (accessgate::queue::now_ms() / 1000).to_string();
    let sig = signed(WEBHOOK_SECRET, &ts, &body);
    let (s, v) = post_event(ag, &ts, Some(&sig), &body).await;
    assert_eq!((s, v["status"].as_str()), (202, Some("accepted")), "{v}");
    let (s, v) = post_event(ag, &ts, Some(&sig), &body).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("replayed")),
        "{v}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        resumes_of(&emu, sid),
        0,
        "the webhook body is a hint: the ticket is still open"
    );
    for l in ag.log_lines() {
        assert!(!l.contains(WEBHOOK_SECRET));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_the_webhook_is_refused() {
    let b = start(
        "poll_interval_seconds = 0",
        "",
        vec![(
            "ACCESSGATE_SERVICENOW__WEBHOOK_SECRET".into(),
            String::new(),
        )],
    )
    .await;
    let ts = (accessgate::queue::now_ms() / 1000).to_string();
    let body = "{\"table\":\"sc_req_item\",\"sys_id\":\"abc\"}";
    let (s, v) = post_event(&b.h.ag, &ts, Some(&signed("", &ts, body)), body).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("webhook_not_configured")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_a_lost_create_answer_are_retried_into_one_ticket() {
    let b = start("poll_interval_seconds = 0", "", Vec::new()).await;
    let emu = b.h.emu();
    // ServiceNow throttles the first call, then commits the create but its answer is lost.
    emu.set_fault(&accessgate_emulator::FaultSpec {
        target: accessgate_emulator::FaultTarget::ServiceNow,
        status: Some(429),
        retry_after_secs: Some(1),
        count: Some(1),
        ..Default::default()
    })
    .unwrap();
    emu.lose_servicenow_write_answers(1);
    let sid = "bridge-faults-1";
    let sent = b.h.send(opts("assignmentRequestApproved", sid)).await;
    assert_eq!(sent.status, Some(202), "{sent:?}");
    b.h.ag
        .wait_log("the job parked on its ticket", |l| {
            l["message"] == "job parked"
        })
        .await;
    let calls = emu.servicenow_calls();
    let statuses: Vec<(String, u16)> = calls.iter().map(|c| (c.method.clone(), c.status)).collect();
    assert!(statuses.contains(&("GET".into(), 429)), "{statuses:?}");
    assert!(statuses.contains(&("POST".into(), 504)), "{statuses:?}");
    assert_eq!(
        calls.iter().filter(|c| c.method == "POST").count(),
        1,
        "the retry found the committed ticket by its link instead of creating another: {statuses:?}"
    );
    assert_eq!(tickets_for(&emu, sid).len(), 1);
    assert!(
        b.h.ag.log_lines().iter().any(|l| l.contains("429")),
        "the retry names why"
    );
    let t = ticket_of(&emu, sid).await;
    close(&emu, &t, "3", "done");
    let r = resumed(&emu, sid).await;
    assert_eq!(r.state, None, "{r:?}");
    assert_eq!(resumes_of(&emu, sid), 1);
}

const CATALOG_POLICY: &str = r#"
version = 1

[tickets.laptop]
catalog_item = "@ITEM@"
requested_for = "{target_id}"
variables = { justification = "{justification}", package = "{package}" }
reminder_before = "0s"
fields = { short_description = "Access request: {package} for {target}" }

[[rules]]
name = "approved-orders-the-item"
stages = ["assignmentRequestApproved"]
ticket = "laptop"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_item_is_ordered_once_even_when_the_answer_is_lost_linked_and_resumed() {
    const ITEM: &str = "ca7a1000000000000000000000000001";
    let b = start_policy(
        &CATALOG_POLICY.replace("@ITEM@", ITEM),
        "poll_interval_seconds = 0",
        "",
        Vec::new(),
    )
    .await;
    let emu = b.h.emu();
    let r = client()
        .post(format!(
            "{}/_emulator/servicenow/catalog-items",
            emu.base_url()
        ))
        .json(&serde_json::json!({"sys_id": ITEM, "name": "Access request"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    // ServiceNow takes the order but its answer is lost: the retry finds the order again.
    emu.lose_servicenow_write_answers(1);
    let sid = "bridge-catalog-1";
    // Two deliveries of the same callout: one order.
    for _ in 0..2 {
        let sent = b.h.send(opts("assignmentRequestApproved", sid)).await;
        assert_eq!(sent.status, Some(202), "{sent:?}");
    }
    let t = ticket_of(&emu, sid).await;
    assert_eq!(t.table, "sc_req_item", "{t:?}");
    assert!(t.number.starts_with("RITM"), "{t:?}");
    // The ordered item got the link and the templated fields by the PATCH after order_now.
    let sd = t
        .fields
        .get("short_description")
        .cloned()
        .unwrap_or_default();
    assert!(sd.contains("Payments"), "{t:?}");
    b.h.ag
        .wait_log("job parked", |l| l["message"] == "job parked")
        .await;
    let calls = emu.servicenow_calls();
    let orders = calls
        .iter()
        .filter(|c| c.method == "POST" && c.target.contains("order_now"))
        .count();
    assert_eq!(
        orders, 1,
        "ordered once, its lost answer made up by the lookup: {calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.target.contains("order_now") && c.status == 504),
        "{calls:?}"
    );
    let items = emu
        .servicenow_tickets()
        .into_iter()
        .filter(|t| t.fields.get("cat_item").map(String::as_str) == Some(ITEM))
        .count();
    assert_eq!(items, 1, "one requested item");
    b.h.ag
        .wait_log("the adoption", |l| {
            l["message"]
                == "an earlier attempt's order was found; linking it instead of ordering again"
        })
        .await;
    assert!(
        calls
            .iter()
            .any(|c| c.method == "PATCH" && c.target.contains(&t.sys_id)),
        "{calls:?}"
    );
    close(&emu, &t, "3", "Delivered");
    let r = resumed(&emu, sid).await;
    assert_eq!(r.state, None, "{r:?}");
    assert!(r.detail.unwrap_or_default().contains(&t.number));
    assert_eq!(tickets_for(&emu, sid).len(), 1);
    assert_eq!(resumes_of(&emu, sid), 1);
}

/// Client id of ServiceNow's own app registration (its OAuth profile signs in with it).
const SN_APP_ID: &str = "5e000000-0000-4000-8000-00000000a11e";

async fn post_bearer(ag: &Accessgate, authorization: &str, body: &str) -> (u16, serde_json::Value) {
    let resp = client()
        .post(ag.url("/api/servicenow/events"))
        .header("content-type", "application/json")
        .header("authorization", authorization)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entra_bearer_token_instead_of_the_signature_resumes_and_bad_tokens_are_refused() {
    // Bearer only: no HMAC secret at all.
    let b = start(
        &format!(
            "poll_interval_seconds = 0\nwebhook_audiences = [\"api://accessgate\"]\nwebhook_caller_ids = [\"{SN_APP_ID}\"]"
        ),
        "",
        vec![(
            "ACCESSGATE_SERVICENOW__WEBHOOK_SECRET".into(),
            String::new(),
        )],
    )
    .await;
    let emu = b.h.emu();
    emu.set_servicenow_webhook(&WebhookSettings {
        url: b.h.ag.url("/api/servicenow/events"),
        bearer: Some(BearerWebhook {
            app_id: SN_APP_ID.into(),
            audience: "api://accessgate".into(),
        }),
        ..Default::default()
    })
    .unwrap();
    let sid = "bridge-bearer-1";
    b.h.send(opts("assignmentRequestApproved", sid)).await;
    let t = ticket_of(&emu, sid).await;
    b.h.ag
        .wait_log("log line", |l| l["message"] == "job parked")
        .await;

    // Every bad token is refused with its reason in the log, and wakes nothing.
    let body = serde_json::json!({"table": t.table, "sys_id": t.sys_id, "number": t.number,
        "correlation_id": t.correlation_id, "event": "closed"})
    .to_string();
    let ag = &b.h.ag;
    let v2 = |m: MintOptions| MintOptions {
        issuer_version: Some(IssuerVersion::V2),
        ..m
    };
    let cases: Vec<(&str, MintOptions, &str)> = vec![
        (
            "another app's token",
            v2(MintOptions {
                audience: Some("api://accessgate".into()),
                ..Default::default()
            }),
            "caller_not_allowed",
        ),
        (
            "a token for another audience",
            v2(MintOptions {
                audience: Some("https://graph.microsoft.com".into()),
                app_id: Some(SN_APP_ID.into()),
                ..Default::default()
            }),
            "wrong_audience",
        ),
        (
            "an expired token",
            v2(MintOptions {
                audience: Some("api://accessgate".into()),
                app_id: Some(SN_APP_ID.into()),
                expires_in_secs: Some(-600),
                ..Default::default()
            }),
            "token_expired",
        ),
        (
            "a tampered signature",
            v2(MintOptions {
                audience: Some("api://accessgate".into()),
                app_id: Some(SN_APP_ID.into()),
                tamper_signature: true,
                ..Default::default()
            }),
            "bad_signature",
        ),
        (
            "another tenant",
            v2(MintOptions {
                audience: Some("api://accessgate".into()),
                app_id: Some(SN_APP_ID.into()),
                tenant_id: Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into()),
                ..Default::default()
            }),
            "wrong_issuer",
        ),
    ];
    for (what, m, detail) in cases {
        let (s, v) = post_bearer(ag, &format!("Bearer {}", b.h.token(m)), &body).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (401, Some("bad_token")),
            "{what}: {v}"
        );
        let cid = v["error"]["correlationId"].as_str().unwrap().to_owned();
        ag.wait_log(what, |l| {
            l["message"] == "servicenow event refused"
                && l["correlation_id"] == cid.as_str()
                && l["detail"] == detail
        })
        .await;
    }
    let (s, v) = post_bearer(ag, "PoP abc.def.ghi", &body).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("bad_token")),
        "{v}"
    );
    // No Authorization and no HMAC configured: the header the configured path needs is named.
    let ts = (accessgate::queue::now_ms() / 1000).to_string();
    let (s, v) = post_event(ag, &ts, Some(&signed("x", &ts, &body)), &body).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("missing_header")),
        "{v}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(resumes_of(&emu, sid), 0);

    // The business rule posts with its OAuth token: the job reads the ticket and resumes.
    close(&emu, &t, "3", "granted");
    let r = resumed(&emu, sid).await;
    assert_eq!(r.state, None, "{r:?}");
    let d = emu.servicenow_webhooks();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].status, Some(202), "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_is_refused_where_only_the_signature_is_configured() {
    let b = start("poll_interval_seconds = 0", "", Vec::new()).await;
    let token = b.h.token(MintOptions {
        audience: Some("api://accessgate".into()),
        app_id: Some(SN_APP_ID.into()),
        issuer_version: Some(IssuerVersion::V2),
        ..Default::default()
    });
    let body = "{\"table\":\"sc_req_item\",\"sys_id\":\"abc\"}";
    let (s, v) = post_bearer(&b.h.ag, &format!("Bearer {token}"), body).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("bearer_not_accepted")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_azure_storage_two_instances_open_one_ticket_and_resume_once() {
    let az = azurite::Azurite::start();
    let queue = azurite::unique_queue_name("bridge");
    let conn = az.connection_string();
    let queue_toml = format!("[queue]\nbackend = \"azure_storage\"\nname = \"{queue}\"\n");
    let env = vec![
        (
            "ACCESSGATE_QUEUE__CONNECTION_STRING".to_string(),
            conn.clone(),
        ),
        (
            "ACCESSGATE_QUEUE__WAIT_RECHECK_SECONDS".to_string(),
            "10".to_string(),
        ),
    ];
    let b = start("poll_interval_seconds = 1", &queue_toml, env.clone()).await;
    let emu = b.h.emu();
    // A second instance on the same queue and ledger (its own data dir).
    let dir2 = tempfile::tempdir().unwrap();
    let cfg2 = dir2.path().join("accessgate.toml");
    std::fs::write(&cfg2, std::fs::read_to_string(&b.h.ag.config_path).unwrap()).unwrap();
    let second = Accessgate::spawn(&cfg2, b.h.ag.env.clone(), &["serve"]).await;
    let sids: Vec<String> = (0..6).map(|i| format!("bridge-az-{i}")).collect();
    for sid in &sids {
        // Each callout goes to both instances (Entra's retry reaching another instance).
        let mut o = opts("assignmentRequestApproved", sid);
        b.h.send(o.clone()).await;
        o.target_url = format!("http://{}/api/elm", second.addr);
        emu.send_callout(&o).await.unwrap();
    }
    let mut tickets = HashMap::new();
    for sid in &sids {
        tickets.insert(sid.clone(), ticket_of(&emu, sid).await);
    }
    // Let both instances finish what they started.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Four close with their webhook (complete, incomplete alternately)...
    for (i, sid) in sids.iter().enumerate().take(4) {
        let t = &tickets[sid];
        close(
            &emu,
            t,
            if i % 2 == 0 { "3" } else { "4" },
            "closed on Azurite",
        );
    }
    for (i, sid) in sids.iter().enumerate().take(4) {
        let r = resumed(&emu, sid).await;
        assert_eq!(r.state.is_some(), i % 2 == 1, "{sid}: {r:?}");
    }
    assert!(
        emu.servicenow_webhooks()
            .iter()
            .all(|d| d.status == Some(202)),
        "{:?}",
        emu.servicenow_webhooks()
    );
    // ...then webhooks are lost: the poll finds one closed and one deleted.
    emu.set_servicenow_webhook(&WebhookSettings {
        url: b.h.ag.url("/api/servicenow/events"),
        secret: WEBHOOK_SECRET.into(),
        drop: true,
        ..Default::default()
    })
    .unwrap();
    close(&emu, &tickets[&sids[4]], "3", "closed, webhook lost");
    let t5 = &tickets[&sids[5]];
    let resp = client()
        .delete(format!(
            "{}/api/now/table/{}/{}",
            emu.base_url(),
            t5.table,
            t5.sys_id
        ))
        .basic_auth("accessgate", Some(SN_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let r = resumed(&emu, &sids[4]).await;
    assert_eq!(r.state, None, "closed complete, found by the poll: {r:?}");
    let r = resumed(&emu, &sids[5]).await;
    assert_eq!(r.state.as_deref(), Some("denied"), "deleted: {r:?}");
    assert!(r.detail.unwrap_or_default().contains("deleted"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    for sid in &sids {
        let expected = if sid == &sids[5] { 0 } else { 1 };
        assert_eq!(tickets_for(&emu, sid).len(), expected, "{sid}: one ticket");
        assert_eq!(resumes_of(&emu, sid), 1, "{sid}: one resume");
    }
    drop(second);
    drop(az);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_the_bridge_leaves_one_ticket_and_one_resume_per_request() {
    use rand::Rng as _;
    // The poll makes up for webhooks posted while no process listened.
    let mut b = start("poll_interval_seconds = 1", "", Vec::new()).await;
    let emu = b.h.emu();
    let sids: Vec<String> = (0..8).map(|i| format!("bridge-crash-{i}")).collect();
    for sid in &sids {
        b.h.send(opts("assignmentRequestApproved", sid)).await;
    }
    // kill -9 at random moments while tickets are looked up, created, recorded and parked.
    for _ in 0..4 {
        let ms = rand::rng().random_range(0..400);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        b.h.ag.kill9();
        b.h.ag.restart().await;
    }
    emu.set_servicenow_webhook(&WebhookSettings {
        url: b.h.ag.url("/api/servicenow/events"),
        secret: WEBHOOK_SECRET.into(),
        ..Default::default()
    })
    .unwrap();
    let mut opened = Vec::new();
    for sid in &sids {
        opened.push(ticket_of(&emu, sid).await);
    }
    for t in &opened {
        close(&emu, t, "3", "closed after the crashes");
    }
    for sid in &sids {
        resumed(&emu, sid).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for sid in &sids {
        assert_eq!(tickets_for(&emu, sid).len(), 1, "{sid}: exactly one ticket");
        assert_eq!(resumes_of(&emu, sid), 1, "{sid}: exactly one resume");
    }
}
