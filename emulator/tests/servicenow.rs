//! ServiceNow as accessgate's ticket bridge uses it, over HTTP: Table API writes, journal
//! fields, closed states, `order_now`, delete, auth, faults, and the business rule's signed
//! webhook with its knobs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use accessgate_emulator::{CloseTicket, FaultSpec, FaultTarget, RunningEmulator, WebhookSettings};
use common::{Target, http};
use serde_json::{Value, json};

const SECRET: &str = "webhook-secret-for-tests";

/// A Basic-authenticated Table API client of one emulator.
struct Sn {
    base: String,
    user: String,
    password: String,
}

impl Sn {
    fn new(emu: &RunningEmulator) -> Self {
        let c = emu.servicenow_credentials();
        Self {
            base: emu.base_url(),
            user: c.username,
            password: c.password,
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut req = http()
            .request(method, format!("{}{path}", self.base))
            .basic_auth(&self.user, Some(&self.password));
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, value)
    }

    async fn create(&self, table: &str, body: &Value) -> Value {
        let (status, v) = self
            .send(
                reqwest::Method::POST,
                &format!("/api/now/table/{table}"),
                Some(body),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        v["result"].clone()
    }

    async fn patch(&self, table: &str, sys_id: &str, body: &Value) -> (u16, Value) {
        self.send(
            reqwest::Method::PATCH,
            &format!("/api/now/table/{table}/{sys_id}"),
            Some(body),
        )
        .await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }
}

fn is_sys_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_sn_time(s: &str) -> bool {
    jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", s).is_ok()
}

fn hmac_hex(secret: &str, ts: &str, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let mut msg = ts.as_bytes().to_vec();
    msg.push(b'.');
    msg.extend_from_slice(body);
    let tag = aws_lc_rs::hmac::sign(&key, &msg);
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits (at most 5 s) until `target` has received `n` requests.
async fn wait_for(target: &Target, n: usize) {
    let start = Instant::now();
    while target.count() < n {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "expected {n} webhook posts, got {}",
            target.count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most 5 s) until the emulator logged `n` deliveries.
async fn wait_for_deliveries(emu: &RunningEmulator, n: usize) {
    let start = Instant::now();
    while emu.servicenow_webhooks().len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "expected {n} deliveries"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn webhook(emu: &RunningEmulator, settings: WebhookSettings) -> Target {
    let target = Target::start(200, Duration::ZERO).await;
    emu.set_servicenow_webhook(&WebhookSettings {
        url: target.url.clone(),
        secret: SECRET.to_owned(),
        ..settings
    })
    .unwrap();
    target
}

/// A new open `sc_req_item` with `correlation_id`; its sys_id.
async fn ticket(sn: &Sn, correlation_id: &str) -> String {
    let r = sn
        .create(
            "sc_req_item",
            &json!({"short_description": "Access to Sales CRM", "correlation_id": correlation_id}),
        )
        .await;
    r["sys_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn create_then_read_back_by_correlation_id() {
    let emu = common::start().await;
    let sn = Sn::new(&emu);
    let first = sn
        .create(
            "sc_req_item",
            &json!({"short_description": "Access", "correlation_id": "accessgate:abc", "urgency": 2}),
        )
        .await;
    let second = sn
        .create("sc_req_item", &json!({"correlation_id": "accessgate:def"}))
        .await;
    let sys_id = first["sys_id"].as_str().unwrap();
    assert!(is_sys_id(sys_id), "{sys_id}");
    let number = first["number"].as_str().unwrap();
    assert!(number.starts_with("RITM") && number.len() == 11, "{number}");
    assert_ne!(first["number"], second["number"]);
    assert_eq!(first["active"], "true");
    assert_eq!(first["state"], "1");
    assert_eq!(first["urgency"], "2", "values are stored as strings");
    assert!(is_sn_time(first["sys_created_on"].as_str().unwrap()));
    assert!(is_sn_time(first["sys_updated_on"].as_str().unwrap()));

    let inc = sn
        .create("incident", &json!({"short_description": "x"}))
        .await;
    assert!(inc["number"].as_str().unwrap().starts_with("INC"));
    let task = sn.create("sc_task", &json!({})).await;
    assert!(task["number"].as_str().unwrap().starts_with("SCTASK"));
    let custom = sn
        .create("u_access_ticket", &json!({"u_reason": "audit"}))
        .await;
    assert_eq!(custom["u_reason"], "audit");
    assert!(!custom["number"].as_str().unwrap().is_empty());

    let (status, v) = sn
        .get("/api/now/table/sc_req_item?sysparm_query=correlation_id=accessgate:abc&sysparm_fields=sys_id,number,state,active")
        .await;
    assert_eq!(status, 200);
    let rows = v["result"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0]["sys_id"], sys_id);
    assert_eq!(rows[0]["number"], number);
    assert_eq!(rows[0].as_object().unwrap().len(), 4);

    let both = format!(
        "/api/now/table/sc_req_item?sysparm_query=sys_idIN{sys_id},{}",
        second["sys_id"].as_str().unwrap()
    );
    let (_, v) = sn.get(&both).await;
    assert_eq!(v["result"].as_array().unwrap().len(), 2);

    let (status, v) = sn
        .get(&format!("/api/now/table/sc_req_item/{sys_id}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["result"]["correlation_id"], "accessgate:abc");

    // sysparm_fields on a write's answer.
    let (status, v) = sn
        .send(
            reqwest::Method::POST,
            "/api/now/table/incident?sysparm_fields=sys_id,number",
            Some(&json!({"short_description": "y"})),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(v["result"].as_object().unwrap().len(), 2, "{v}");

    let tickets = emu.servicenow_tickets();
    assert_eq!(tickets.len(), 6);
    assert_eq!(tickets[0].sys_id, sys_id);
    assert_eq!(tickets[0].correlation_id, "accessgate:abc");
    assert!(tickets[0].active);
}

#[tokio::test]
async fn work_notes_append_journal_entries_and_read_back_empty() {
    let emu = common::start().await;
    let sn = Sn::new(&emu);
    let id = ticket(&sn, "accessgate:j1").await;
    let (status, v) = sn
        .patch("sc_req_item", &id, &json!({"work_notes": "first note"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["result"]["work_notes"], "");
    sn.patch(
        "sc_req_item",
        &id,
        &json!({"work_notes": "second note", "comments": "to the user"}),
    )
    .await;
    let t = emu
        .servicenow_tickets()
        .into_iter()
        .find(|t| t.sys_id == id)
        .unwrap();
    let notes: Vec<(&str, &str)> = t
        .journal
        .iter()
        .map(|j| (j.element.as_str(), j.value.as_str()))
        .collect();
    assert_eq!(
        notes,
        [
            ("work_notes", "first note"),
            ("work_notes", "second note"),
            ("comments", "to the user")
        ]
    );
    assert_eq!(t.journal[0].created_by, sn.user);
    assert_eq!(t.fields["work_notes"], "");

    let (_, v) = sn
        .get(&format!(
            "/api/now/table/sys_journal_field?sysparm_query=element_id={id}^element=work_notes"
        ))
        .await;
    assert_eq!(v["result"].as_array().unwrap().len(), 2, "{v}");
}

#[tokio::test]
async fn closing_by_state_makes_inactive_and_queries_see_it() {
    let emu = common::start().await;
    let sn = Sn::new(&emu);
    let id = ticket(&sn, "accessgate:c1").await;
    let other = ticket(&sn, "accessgate:c2").await;
    let (status, v) = sn.patch("sc_req_item", &id, &json!({"state": "2"})).await;
    assert_eq!(status, 200);
    assert_eq!(v["result"]["active"], "true", "2 is not a closed state");
    let (status, v) = sn
        .patch(
            "sc_req_item",
            &id,
            &json!({"state": 3, "close_notes": "granted"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["result"]["state"], "3");
    assert_eq!(v["result"]["active"], "false");
    assert_eq!(v["result"]["close_notes"], "granted");

    let (_, v) = sn
        .get("/api/now/table/sc_req_item?sysparm_query=active=false&sysparm_fields=sys_id")
        .await;
    let ids: Vec<&str> = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["sys_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str()]);

    // PUT works like PATCH; `active=false` directly counts as closing.
    let (status, v) = sn
        .send(
            reqwest::Method::PUT,
            &format!("/api/now/table/sc_req_item/{other}"),
            Some(&json!({"active": false})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["result"]["active"], "false");

    // Incidents close at 6; 3 is not closed for them.
    let inc = sn.create("incident", &json!({})).await;
    let inc = inc["sys_id"].as_str().unwrap();
    let (_, v) = sn.patch("incident", inc, &json!({"state": "3"})).await;
    assert_eq!(v["result"]["active"], "true");
    let (_, v) = sn.patch("incident", inc, &json!({"state": "6"})).await;
    assert_eq!(v["result"]["active"], "false");

    // Configurable per table.
    emu.set_servicenow_closed_states("u_access_ticket", &["9"])
        .unwrap();
    let c = sn.create("u_access_ticket", &json!({})).await;
    let c = c["sys_id"].as_str().unwrap();
    let (_, v) = sn.patch("u_access_ticket", c, &json!({"state": "3"})).await;
    assert_eq!(v["result"]["active"], "true");
    let (_, v) = sn.patch("u_access_ticket", c, &json!({"state": "9"})).await;
    assert_eq!(v["result"]["active"], "false");

    let (status, v) = sn
        .patch(
            "sc_req_item",
            "0123456789abcdef0123456789abcdef",
            &json!({"state": "3"}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(v["status"], "failure");
    assert!(v["error"]["message"].is_string());
}

#[tokio::test]
async fn order_now_creates_request_and_requested_item() {
    let emu = common::start().await;
    let sn = Sn::new(&emu);
    let item = emu
        .add_servicenow_catalog_item("Application access")
        .unwrap();
    let (status, v) = sn
        .send(
            reqwest::Method::POST,
            &format!("/api/sn_sc/servicecatalog/items/{item}/order_now"),
            Some(&json!({
                "sysparm_quantity": "1",
                "sysparm_requested_for": "a8f98bb0eb32010045e1a5115206fe3a",
                "variables": {"application": "Sales CRM", "justification": "new role"}
            })),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let r = &v["result"];
    assert_eq!(r["table"], "sc_request");
    assert_eq!(r["sys_id"], r["request_id"]);
    assert_eq!(r["number"], r["request_number"]);
    assert!(r["number"].as_str().unwrap().starts_with("REQ"));
    let req_id = r["request_id"].as_str().unwrap();
    assert!(is_sys_id(req_id));

    let (status, v) = sn.get(&format!("/api/now/table/sc_request/{req_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(v["result"]["number"], r["number"]);

    let (_, v) = sn
        .get(&format!(
            "/api/now/table/sc_req_item?sysparm_query=request={req_id}&sysparm_exclude_reference_link=true"
        ))
        .await;
    let rows = v["result"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0]["request"], req_id);
    assert_eq!(rows[0]["cat_item"], item.as_str());
    assert!(rows[0]["number"].as_str().unwrap().starts_with("RITM"));
    let ritm = rows[0]["sys_id"].as_str().unwrap();
    let t = emu
        .servicenow_tickets()
        .into_iter()
        .find(|t| t.sys_id == ritm)
        .unwrap();
    assert_eq!(t.variables["application"], "Sales CRM");
    assert_eq!(t.variables["justification"], "new role");

    let (status, v) = sn
        .send(
            reqwest::Method::POST,
            "/api/sn_sc/servicecatalog/items/ffffffffffffffffffffffffffffffff/order_now",
            Some(&json!({"sysparm_quantity": 1})),
        )
        .await;
    assert_eq!(status, 404, "{v}");
}

#[tokio::test]
async fn delete_then_not_found() {
    let emu = common::start().await;
    let sn = Sn::new(&emu);
    let id = ticket(&sn, "accessgate:d1").await;
    let path = format!("/api/now/table/sc_req_item/{id}");
    assert_eq!(sn.get(&path).await.0, 200);
    let (status, _) = sn.send(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 204);
    assert_eq!(sn.get(&path).await.0, 404);
    assert_eq!(sn.send(reqwest::Method::DELETE, &path, None).await.0, 404);
    assert!(emu.servicenow_tickets().iter().all(|t| t.sys_id != id));
}

#[tokio::test]
async fn unauthenticated_writes_are_refused_and_faults_apply() {
    let emu = common::start().await;
    let sn = Sn::new(&emu);
    let resp = http()
        .post(format!("{}/api/now/table/incident", emu.base_url()))
        .json(&json!({"short_description": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = http()
        .post(format!("{}/api/now/table/incident", emu.base_url()))
        .basic_auth(&sn.user, Some("wrong"))
        .json(&json!({"short_description": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let (_, v) = sn.get("/api/now/table/incident").await;
    assert_eq!(v["status"], "failure", "no incident table was created: {v}");

    emu.set_fault(&FaultSpec {
        target: FaultTarget::ServiceNow,
        status: Some(429),
        retry_after_secs: Some(2),
        count: Some(1),
        ..FaultSpec::default()
    })
    .unwrap();
    let (status, _) = sn
        .send(
            reqwest::Method::POST,
            "/api/now/table/incident",
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 429);
    sn.create("incident", &json!({})).await;
    let calls = emu.servicenow_calls();
    let posts: Vec<u16> = calls
        .iter()
        .filter(|c| c.method == "POST")
        .map(|c| c.status)
        .collect();
    assert_eq!(posts, [401, 401, 429, 201]);

    // Bearer tokens work for writes too.
    let c = emu.servicenow_credentials();
    let tok: Value = http()
        .post(format!("{}/oauth_token.do", emu.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", c.client_id.as_str()),
            ("client_secret", c.client_secret.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resp = http()
        .post(format!("{}/api/now/table/sc_task", emu.base_url()))
        .bearer_auth(tok["access_token"].as_str().unwrap())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
}

#[tokio::test]
async fn webhook_posts_once_signed_on_close() {
    let emu = common::start().await;
    let sn = Sn::new(&emu);
    let target = webhook(&emu, WebhookSettings::default()).await;
    let id = ticket(&sn, "accessgate:stage-1").await;
    let (_, v) = sn
        .patch("sc_req_item", &id, &json!({"work_notes": "still open"}))
        .await;
    let number = v["result"]["number"].as_str().unwrap().to_owned();
    sn.patch("sc_req_item", &id, &json!({"state": "3"})).await;
    wait_for(&target, 1).await;

    let ts = target.header(0, "x-accessgate-timestamp").unwrap();
    let sig = target.header(0, "x-accessgate-signature").unwrap();
    assert_eq!(
        target.header(0, "content-type").as_deref(),
        Some("application/json")
    );
    let now = jiff::Timestamp::now().as_second();
    let ts_num: i64 = ts.parse().unwrap();
    assert!((now - ts_num).abs() < 30, "{ts}");
    let raw = target.received.lock().unwrap()[0].body.clone();
    assert_eq!(sig, format!("v1={}", hmac_hex(SECRET, &ts, &raw)));
    assert_ne!(sig, format!("v1={}", hmac_hex("other", &ts, &raw)));
    let body = target.body(0);
    assert_eq!(
        body,
        json!({"table": "sc_req_item", "sys_id": id, "number": number, "state": "3",
               "correlation_id": "accessgate:stage-1", "event": "closed"})
    );
    assert!(
        !String::from_utf8(raw.to_vec()).unwrap().contains(' '),
        "compact JSON"
    );

    // Later edits of the closed record post nothing; a sentinel close is the barrier.
    sn.patch(
        "sc_req_item",
        &id,
        &json!({"state": "4", "close_notes": "edited"}),
    )
    .await;
    sn.patch("sc_req_item", &id, &json!({"active": "false"}))
        .await;
    let sentinel = ticket(&sn, "accessgate:sentinel").await;
    sn.patch("sc_req_item", &sentinel, &json!({"state": "7"}))
        .await;
    wait_for(&target, 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(target.count(), 2);
    assert_eq!(target.body(1)["sys_id"], sentinel.as_str());
    assert_eq!(target.body(1)["state"], "7");

    let deliveries = emu.servicenow_webhooks();
    assert_eq!(deliveries.len(), 2);
    assert_eq!(deliveries[0].status, Some(200));
    assert_eq!(deliveries[0].sys_id, id);
    assert_eq!(deliveries[0].url, target.url);
}

#[tokio::test]
async fn webhook_ignores_records_without_accessgate_correlation() {
    let emu = common::start().await;
    let sn = Sn::new(&emu);
    let target = webhook(&emu, WebhookSettings::default()).await;
    let plain = ticket(&sn, "other-system:1").await;
    let none = sn.create("sc_req_item", &json!({})).await;
    sn.patch("sc_req_item", &plain, &json!({"state": "3"}))
        .await;
    sn.patch(
        "sc_req_item",
        none["sys_id"].as_str().unwrap(),
        &json!({"state": "3"}),
    )
    .await;
    let sentinel = ticket(&sn, "accessgate:sentinel").await;
    sn.patch("sc_req_item", &sentinel, &json!({"state": "3"}))
        .await;
    wait_for(&target, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(target.count(), 1);
    assert_eq!(target.body(0)["sys_id"], sentinel.as_str());
}

#[tokio::test]
async fn webhook_drop_posts_nothing_and_clear_turns_it_off() {
    let emu = common::start().await;
    let sn = Sn::new(&emu);
    let target = webhook(
        &emu,
        WebhookSettings {
            drop: true,
            ..WebhookSettings::default()
        },
    )
    .await;
    let id = ticket(&sn, "accessgate:drop").await;
    sn.patch("sc_req_item", &id, &json!({"state": "3"})).await;
    wait_for_deliveries(&emu, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(target.count(), 0);
    let d = emu.servicenow_webhooks();
    assert!(d[0].dropped);
    assert_eq!(d[0].status, None);

    emu.clear_servicenow_webhook();
    let id = ticket(&sn, "accessgate:off").await;
    sn.patch("sc_req_item", &id, &json!({"state": "3"})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(target.count(), 0);
    assert_eq!(emu.servicenow_webhooks().len(), 1);
}

#[tokio::test]
async fn webhook_duplicate_posts_the_same_request_twice() {
    let emu = common::start().await;
    let sn = Sn::new(&emu);
    let target = webhook(
        &emu,
        WebhookSettings {
            duplicate: true,
            ..WebhookSettings::default()
        },
    )
    .await;
    let id = ticket(&sn, "accessgate:dup").await;
    sn.patch("sc_req_item", &id, &json!({"state": "3"})).await;
    wait_for(&target, 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(target.count(), 2);
    let received = target.received.lock().unwrap().clone();
    assert_eq!(received[0].body, received[1].body);
    for name in ["x-accessgate-timestamp", "x-accessgate-signature"] {
        assert_eq!(received[0].headers.get(name), received[1].headers.get(name));
    }
    let ts = target.header(0, "x-accessgate-timestamp").unwrap();
    assert_eq!(
        target.header(1, "x-accessgate-signature").unwrap(),
        format!("v1={}", hmac_hex(SECRET, &ts, &received[1].body))
    );
    let attempts: Vec<u32> = emu
        .servicenow_webhooks()
        .iter()
        .map(|d| d.attempt)
        .collect();
    assert_eq!(attempts, [1, 2]);
}

#[tokio::test]
async fn webhook_forge_fails_verification() {
    let emu = common::start().await;
    let sn = Sn::new(&emu);
    let target = webhook(
        &emu,
        WebhookSettings {
            forge: true,
            ..WebhookSettings::default()
        },
    )
    .await;
    let id = ticket(&sn, "accessgate:forged").await;
    sn.patch("sc_req_item", &id, &json!({"state": "3"})).await;
    wait_for(&target, 1).await;
    let ts = target.header(0, "x-accessgate-timestamp").unwrap();
    let sig = target.header(0, "x-accessgate-signature").unwrap();
    let raw = target.received.lock().unwrap()[0].body.clone();
    assert!(sig.starts_with("v1=") && sig.len() == 67, "{sig}");
    assert_ne!(sig, format!("v1={}", hmac_hex(SECRET, &ts, &raw)));
    assert_eq!(target.body(0)["sys_id"], id.as_str());
    assert!(emu.servicenow_webhooks()[0].forged);
}

#[tokio::test]
async fn webhook_delay_does_not_block_the_patch() {
    let emu = common::start().await;
    let sn = Sn::new(&emu);
    let target = webhook(
        &emu,
        WebhookSettings {
            delay_ms: 600,
            ..WebhookSettings::default()
        },
    )
    .await;
    let id = ticket(&sn, "accessgate:slow").await;
    let start = Instant::now();
    let (status, _) = sn.patch("sc_req_item", &id, &json!({"state": "3"})).await;
    assert_eq!(status, 200);
    assert!(start.elapsed() < Duration::from_millis(500));
    assert_eq!(target.count(), 0);
    wait_for(&target, 1).await;
    assert!(start.elapsed() >= Duration::from_millis(600));
}

#[tokio::test]
async fn control_close_route_closes_as_an_agent_and_fires_the_rule() {
    let emu = common::start().await;
    let sn = Sn::new(&emu);
    let target = Target::start(200, Duration::ZERO).await;
    // Over HTTP: webhook, catalog item and close.
    let resp = http()
        .put(format!("{}/_emulator/servicenow/webhook", emu.base_url()))
        .json(
            &json!({"url": target.url, "secret": SECRET, "drop": false, "delay_ms": 0,
                      "duplicate": false, "forge": false}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = http()
        .post(format!(
            "{}/_emulator/servicenow/catalog-items",
            emu.base_url()
        ))
        .json(&json!({"sys_id": "c0ffee00c0ffee00c0ffee00c0ffee00", "name": "Access"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let (_, v) = sn
        .get("/api/now/table/sc_cat_item/c0ffee00c0ffee00c0ffee00c0ffee00")
        .await;
    assert_eq!(v["result"]["name"], "Access");

    let id = ticket(&sn, "accessgate:agent").await;
    let resp = http()
        .post(format!(
            "{}/_emulator/servicenow/tickets/sc_req_item/{id}/close",
            emu.base_url()
        ))
        .json(&json!({"close_notes": "done by agent", "close_code": "Solved"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let view: Value = resp.json().await.unwrap();
    assert_eq!(view["state"], "3", "default: the first closed state");
    assert_eq!(view["active"], false);
    assert_eq!(view["fields"]["close_notes"], "done by agent");
    assert_eq!(view["fields"]["close_code"], "Solved");
    wait_for(&target, 1).await;
    assert_eq!(target.body(0)["state"], "3");
    assert_eq!(target.body(0)["correlation_id"], "accessgate:agent");

    let deliveries: Value = http()
        .get(format!("{}/_emulator/servicenow/webhooks", emu.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deliveries.as_array().unwrap().len(), 1);
    assert_eq!(deliveries[0]["status"], 200);

    let tickets: Value = http()
        .get(format!("{}/_emulator/servicenow/tickets", emu.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tickets.as_array().unwrap().len(), 1);
    assert_eq!(tickets[0]["sys_id"], id.as_str());

    // In process, with an explicit state; unknown records fail.
    let other = ticket(&sn, "accessgate:agent2").await;
    let v = emu
        .close_servicenow_ticket(
            "sc_req_item",
            &other,
            &CloseTicket {
                state: Some("4".into()),
                ..CloseTicket::default()
            },
        )
        .unwrap();
    assert_eq!(v.state, "4");
    assert!(!v.active);
    wait_for(&target, 2).await;
    assert_eq!(target.body(1)["state"], "4");
    assert!(
        emu.close_servicenow_ticket("sc_req_item", "nope", &CloseTicket::default())
            .is_err()
    );
    let resp = http()
        .post(format!(
            "{}/_emulator/servicenow/tickets/sc_req_item/nope/close",
            emu.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let resp = http()
        .delete(format!("{}/_emulator/servicenow/webhook", emu.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
}
