//! The Azure Functions custom handler, driven with the invocation payloads the host sends
//! (tests/fixtures/functions), on the real binary with FUNCTIONS_CUSTOMHANDLER_PORT set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use serde_json::{Value, json};

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/functions/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

struct Fx {
    emu: RunningEmulator,
    ag: Accessgate,
    _dir: tempfile::TempDir,
}

async fn start() -> Fx {
    let emu = start_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &emu.handle(), "");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = vec![
        (
            "ACCESSGATE_CREDENTIALS__CLIENT_SECRET".to_string(),
            emu.handle().config().graph_client_secret.clone(),
        ),
        ("FUNCTIONS_CUSTOMHANDLER_PORT".to_string(), port.to_string()),
    ];
    let ag = Accessgate::spawn(&path, env, &["functions"]).await;
    assert_eq!(ag.addr.port(), port);
    Fx { emu, ag, _dir: dir }
}

async fn invoke(ag: &Accessgate, function: &str, payload: &Value) -> (u16, Value) {
    let resp = client()
        .post(ag.url(&format!("/{function}")))
        .header("content-type", "application/json; charset=utf-8")
        .header(
            "X-Azure-Functions-InvocationId",
            uuid::Uuid::new_v4().to_string(),
        )
        .json(payload)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        ct.starts_with("application/json"),
        "the host reads every answer as JSON: {ct}"
    );
    (status, resp.json().await.unwrap())
}

/// A request waiting in emulated Graph and the flat callout body Entra would send for it:
/// (request id, stage instance id, body).
fn waiting_callout(emu: &Emulator) -> (String, String, String) {
    let req = emu
        .register_request(&accessgate_emulator::RegisterRequest::default())
        .unwrap();
    let sid = req.callouts[0].stage_instance_id.clone();
    let body = flat_body("assignmentRequestCreated", &req.id, &sid);
    (req.id, sid, body)
}

fn http_payload(emu: &Emulator, body: &str) -> Value {
    let mut p = fixture("http-trigger.json");
    let token = emu.mint_pop(&PopOptions::default()).unwrap();
    p["Data"]["req"]["Headers"]["Authorization"] = json!([format!("PoP {token}")]);
    p["Data"]["req"]["Headers"]["Content-Length"] = json!([body.len().to_string()]);
    p["Data"]["req"]["Body"] = Value::String(body.to_string());
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_probe_answers_get_root() {
    let fx = start().await;
    let resp = client().get(fx.ag.url("/")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_trigger_answers_202_and_emits_the_job_then_the_queue_trigger_resumes() {
    let fx = start().await;
    let emu = fx.emu.handle();
    let (req_id, sid, body) = waiting_callout(&emu);
    let (status, out) = invoke(&fx.ag, "ElmCallout", &http_payload(&emu, &body)).await;
    assert_eq!(status, 200, "the host must get 2xx: {out}");
    assert_eq!(out["Outputs"]["res"]["statusCode"], 202);
    assert_eq!(out["ReturnValue"], Value::Null);
    assert!(out["Logs"].is_array());
    let job_text = out["Outputs"]["job"]
        .as_str()
        .expect("queue output is a string of JSON text");
    assert!(
        job_text.starts_with('{'),
        "JSON text, never a bare string the host could base64-decode"
    );
    let job: Value = serde_json::from_str(job_text).unwrap();
    // The compact (v2) job: the callout body exactly as Entra sent it, parsed again when run.
    assert_eq!(job["v"], 2);
    assert_eq!(job["body"], body.as_str());
    assert!(body.contains(sid.as_str()));

    // The host hands the message back JSON-encoded once more.
    let mut q = fixture("queue-trigger.json");
    q["Data"]["job"] = Value::String(serde_json::to_string(job_text).unwrap());
    let (status, out) = invoke(&fx.ag, "ProcessJob", &q).await;
    assert_eq!(status, 200, "{out}");
    let rec = resumed(&emu, &sid).await;
    assert_eq!(rec.request_id, req_id);

    // Delivered again (at-least-once): the request is no longer waiting, which is success.
    let mut q = fixture("queue-trigger-single.json");
    q["Data"]["job"] = Value::String(job_text.to_string());
    let (status, out) = invoke(&fx.ag, "ProcessJob", &q).await;
    assert_eq!(status, 200, "{out}");
    assert!(
        out["Logs"][0].as_str().unwrap().contains("not waiting"),
        "{out}"
    );
    assert_eq!(emu.resumes().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_trigger_rejections_stay_2xx_to_the_host_with_the_status_in_res() {
    let fx = start().await;
    let emu = fx.emu.handle();
    let mut p = http_payload(&emu, &flat_body("assignmentRequestCreated", "r", "s"));
    p["Data"]["req"]["Headers"]["Authorization"] = json!(["PoP forged.token.value"]);
    let (status, out) = invoke(&fx.ag, "ElmCallout", &p).await;
    assert_eq!(status, 200);
    assert_eq!(out["Outputs"]["res"]["statusCode"], 401);
    assert_eq!(
        out["Outputs"]["res"]["headers"]["WWW-Authenticate"],
        "PoP error=\"invalid_token\""
    );
    // Two Authorization values (the host passes repeated headers as an array): refused.
    let mut p = http_payload(&emu, &flat_body("assignmentRequestCreated", "r-2a", "s-2a"));
    let valid = p["Data"]["req"]["Headers"]["Authorization"][0].clone();
    p["Data"]["req"]["Headers"]["Authorization"] = json!([valid, "Basic dXNlcjpwYXNz"]);
    let (_, out) = invoke(&fx.ag, "ElmCallout", &p).await;
    assert_eq!(out["Outputs"]["res"]["statusCode"], 401, "{out}");
    assert!(out["Outputs"].get("job").is_none());
    assert!(
        out["Logs"][0]
            .as_str()
            .unwrap()
            .contains("duplicate_authorization"),
        "{out}"
    );
    // The same signed request twice: the replay is refused, as on the standalone server.
    let p = http_payload(&emu, &flat_body("assignmentRequestCreated", "r-rp", "s-rp"));
    let (_, out) = invoke(&fx.ag, "ElmCallout", &p).await;
    assert_eq!(out["Outputs"]["res"]["statusCode"], 202, "{out}");
    let (_, out) = invoke(&fx.ag, "ElmCallout", &p).await;
    assert_eq!(out["Outputs"]["res"]["statusCode"], 401, "{out}");
    assert!(
        out["Outputs"].get("job").is_none(),
        "a replay queues nothing: {out}"
    );
    assert!(out["Outputs"].get("job").is_none(), "nothing queued: {out}");

    let p = http_payload(&emu, "{not json");
    let (_, out) = invoke(&fx.ag, "ElmCallout", &p).await;
    assert_eq!(out["Outputs"]["res"]["statusCode"], 400);
    let err: Value = serde_json::from_str(out["Outputs"]["res"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(err["error"]["code"], "malformed_json");

    // Chunked client request: the host omits Body.
    let mut p = fixture("http-trigger-chunked.json");
    p["Data"]["req"]["Headers"]["Authorization"] = json!([format!(
        "PoP {}",
        emu.mint_pop(&PopOptions::default()).unwrap()
    )]);
    let (status, out) = invoke(&fx.ag, "ElmCallout", &p).await;
    assert_eq!(status, 200);
    assert_eq!(out["Outputs"]["res"]["statusCode"], 400);

    // Connection test: 202, no job.
    let p = http_payload(&emu, r#"{"Stage":"CustomExtensionConnectionTest"}"#);
    let (_, out) = invoke(&fx.ag, "ElmCallout", &p).await;
    assert_eq!(out["Outputs"]["res"]["statusCode"], 202);
    assert!(out["Outputs"].get("job").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_trigger_asks_the_host_to_retry_when_graph_is_down_and_poison_is_dead_lettered() {
    let fx = start().await;
    let emu = fx.emu.handle();
    let (_, sid, body) = waiting_callout(&emu);
    let (_, out) = invoke(&fx.ag, "ElmCallout", &http_payload(&emu, &body)).await;
    let job_text = out["Outputs"]["job"].as_str().unwrap().to_string();

    // Retry-After longer than the in-process budget: hand the retry back to the host.
    graph_down(&emu, Some(120));
    let mut q = fixture("queue-trigger.json");
    q["Data"]["job"] = Value::String(serde_json::to_string(&job_text).unwrap());
    let (status, out) = invoke(&fx.ag, "ProcessJob", &q).await;
    assert_eq!(
        status, 503,
        "non-2xx makes the host retry the message: {out}"
    );
    assert!(out["Outputs"].get("deadletter").is_none());

    let mut p = fixture("poison-trigger.json");
    p["Data"]["poison"] = Value::String(serde_json::to_string(&job_text).unwrap());
    let (status, out) = invoke(&fx.ag, "PoisonJob", &p).await;
    assert_eq!(status, 200);
    let dl: Value = serde_json::from_str(out["Outputs"]["deadletter"].as_str().unwrap()).unwrap();
    assert!(dl["reason"].as_str().unwrap().contains("maxDequeueCount"));
    assert_eq!(dl["message"]["body"], body.as_str());
    assert!(body.contains(sid.as_str()));

    // An unreadable message cannot get better by retrying: dead-lettered at once.
    let mut q = fixture("queue-trigger.json");
    q["Data"]["job"] = json!("\"not a job\"");
    let (status, out) = invoke(&fx.ag, "ProcessJob", &q).await;
    assert_eq!(status, 200);
    assert!(
        out["Outputs"]["deadletter"]
            .as_str()
            .unwrap()
            .contains("unreadable")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn callouts_too_large_for_a_queue_message_are_trimmed_or_refused_in_res() {
    let fx = start().await;
    let emu = fx.emu.handle();
    // 60 KB of unknown fields: the verbatim copy is dropped, the parsed callout is queued (v1).
    let mut body: Value =
        serde_json::from_str(&flat_body("assignmentRequestCreated", "r-big", "s-big")).unwrap();
    body["Extra"] = json!("x".repeat(60 * 1024));
    let (status, out) = invoke(&fx.ag, "ElmCallout", &http_payload(&emu, &body.to_string())).await;
    assert_eq!(status, 200);
    assert_eq!(
        out["Outputs"]["res"]["statusCode"], 202,
        "{}",
        out["Outputs"]["res"]
    );
    let job = out["Outputs"]["job"].as_str().unwrap();
    assert!(job.len() <= 48 * 1024);
    let job: Value = serde_json::from_str(job).unwrap();
    assert_eq!(job["v"], 1);
    assert_eq!(job["callout"]["stageInstanceId"], "s-big");
    assert!(job.get("body").is_none());

    // Answers that alone exceed a queue message: refused with 413 inside res, nothing queued.
    body["Answers"] = json!([{"value": "y".repeat(60 * 1024)}]);
    let (status, out) = invoke(&fx.ag, "ElmCallout", &http_payload(&emu, &body.to_string())).await;
    assert_eq!(status, 200);
    assert_eq!(out["Outputs"]["res"]["statusCode"], 413);
    assert!(out["Outputs"].get("job").is_none());

    // Over max_body_bytes (1 MiB): our 413 in res, never a failed invocation.
    body["Answers"] = json!([]);
    body["Extra"] = json!("z".repeat(1100 * 1024));
    let (status, out) = invoke(&fx.ag, "ElmCallout", &http_payload(&emu, &body.to_string())).await;
    assert_eq!(status, 200);
    assert_eq!(out["Outputs"]["res"]["statusCode"], 413);

    // A missing Authorization gets the plain challenge, like the standalone server.
    let mut p = http_payload(&emu, &flat_body("assignmentRequestCreated", "r", "s"));
    p["Data"]["req"]["Headers"]
        .as_object_mut()
        .unwrap()
        .remove("Authorization");
    let (_, out) = invoke(&fx.ag, "ElmCallout", &p).await;
    assert_eq!(out["Outputs"]["res"]["statusCode"], 401);
    assert_eq!(
        out["Outputs"]["res"]["headers"]["WWW-Authenticate"],
        "PoP, Bearer"
    );
}

#[path = "common/azurite.rs"]
mod azurite;

/// The `accessgate` command line with the test's config and environment.
fn cli(cfg: &std::path::Path, env: &[(String, String)], args: &[&str]) -> (i32, String) {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_accessgate"));
    c.args(args).arg("--config").arg(cfg);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parked_job_is_parked_again_when_delivered_early_and_runs_once_its_key_is_woken() {
    use accessgate::endpoint::EndpointUrl;
    use accessgate::queue::azure::{AzureQueue, AzureQueueSettings, StorageAuth};
    use accessgate::secret::Secret;
    let az = tokio::task::spawn_blocking(azurite::Azurite::start)
        .await
        .unwrap();
    let queue = azurite::unique_queue_name("ag-fn-park");
    let table = format!("w{}", queue.replace('-', ""));
    let table: String = table.chars().take(63).collect();
    let emu = start_emulator().await;
    let e = emu.handle();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &e,
        &format!(
            "[queue]\nbackend = \"azure_storage\"\nname = \"{queue}\"\nwait_table = \"{table}\"\n"
        ),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = vec![
        (
            "ACCESSGATE_CREDENTIALS__CLIENT_SECRET".to_string(),
            e.config().graph_client_secret.clone(),
        ),
        (
            "ACCESSGATE_QUEUE__CONNECTION_STRING".to_string(),
            az.connection_string(),
        ),
        ("FUNCTIONS_CUSTOMHANDLER_PORT".to_string(), port.to_string()),
    ];
    let ag = Accessgate::spawn(&cfg, env.clone(), &["functions"]).await;

    // A job as this handler parks it: the callout, and a wait on a ticket key for an hour.
    let (_req, sid, body) = waiting_callout(&e);
    let (_, out) = invoke(&ag, "ElmCallout", &http_payload(&e, &body)).await;
    let mut job: Value = serde_json::from_str(out["Outputs"]["job"].as_str().unwrap()).unwrap();
    let now = jiff::Timestamp::now().as_millisecond();
    job["parked"] = json!({
        "wait": {"until": now + 3_600_000, "key": "sn:FN1", "reason": "ticket FN1 to close"},
        "since": now - 1000,
    });
    let mut q = fixture("queue-trigger-single.json");
    q["Data"]["job"] = Value::String(job.to_string());

    // Delivered before its time and with no wake: parked again as a hidden message.
    let (status, out) = invoke(&ag, "ProcessJob", &q).await;
    assert_eq!(status, 200, "{out}");
    assert!(
        out["Logs"][0].as_str().unwrap().contains("parked until"),
        "{out}"
    );
    assert!(e.resumes().is_empty(), "a parked job is not decided");
    let client = AzureQueue::new(
        accessgate::app::http_client().unwrap(),
        AzureQueueSettings {
            queue_url_base: EndpointUrl::parse(&az.endpoint).unwrap(),
            queue: queue.clone(),
            poison_queue: format!("{queue}-poison"),
        },
        StorageAuth::SharedKey {
            account: azurite::ACCOUNT.into(),
            key: Secret::new(azurite::ACCOUNT_KEY),
        },
    );
    assert!(
        client
            .receive(1, std::time::Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty(),
        "the parked message is hidden"
    );

    // The operator's view, then the wake (as the ticket's webhook will do).
    let cli_env = env[..2].to_vec();
    let (code, text) = cli(&cfg, &cli_env, &["jobs", "waiting", "--json"]);
    assert_eq!(code, 0, "{text}");
    let row: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(row["stageInstanceId"], sid.as_str());
    assert_eq!(row["key"], "sn:FN1");
    assert_eq!(row["reason"], "ticket FN1 to close");
    let (code, text) = cli(&cfg, &cli_env, &["jobs", "wake", "sn:FN1"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("woke 1 job"), "{text}");
    let (code, text) = cli(&cfg, &cli_env, &["jobs", "wake", "bad key/"]);
    assert_eq!(code, 2, "{text}");

    // Now visible at once; the host delivers it and it is decided and resumed.
    let got = client
        .receive(1, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "woken message is visible");
    q["Data"]["job"] = Value::String(got[0].text.clone());
    let (status, out) = invoke(&ag, "ProcessJob", &q).await;
    assert_eq!(status, 200, "{out}");
    resumed(&e, &sid).await;
    // The log line may reach the pipe after the emulator has seen the resume: wait for it.
    ag.wait_log("resumed, woken by the event", |l| {
        l["message"] == "resumed" && l["span"]["woken_by"] == "event"
    })
    .await;
}

/// The bridge under the Functions host on Azurite: `ProcessJob` opens the ticket and parks the
/// job; `ServiceNowEvents` (the signed webhook, as the host hands it over) wakes it and the
/// next delivery resumes with continue; a lost webhook is made up by `ServiceNowPoll` (the
/// timer's payload), which wakes the second job, resumed with deny.
#[tokio::test(flavor = "multi_thread")]
async fn servicenow_event_and_poll_functions_wake_bridged_jobs_on_azure_storage() {
    use accessgate::endpoint::EndpointUrl;
    use accessgate::queue::azure::{AzureQueue, AzureQueueSettings, StorageAuth};
    use accessgate::secret::Secret;
    const SECRET: &str = "functions-webhook-secret-0123456789";
    let az = tokio::task::spawn_blocking(azurite::Azurite::start)
        .await
        .unwrap();
    let queue = azurite::unique_queue_name("ag-fn-snow");
    let table: String = format!("w{}", queue.replace('-', ""))
        .chars()
        .take(63)
        .collect();
    let emu = start_emulator().await;
    let e = emu.handle();
    seed_servicenow(&e);
    let mut creds = e.servicenow_credentials();
    creds.username = "accessgate".into();
    creds.password = "sn-password".into();
    e.set_servicenow_credentials(&creds).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "version = 1\n[tickets.provision]\ntable = \"sc_req_item\"\nreminder_before = \"0s\"\n[[rules]]\nname = \"ticket\"\nstages = [\"assignmentRequestApproved\"]\nticket = \"provision\"\n",
    )
    .unwrap();
    let cfg = write_config(
        dir.path(),
        &e,
        &format!(
            "[queue]\nbackend = \"azure_storage\"\nname = \"{queue}\"\nwait_table = \"{table}\"\n[policy]\nfile = \"{}\"\n[servicenow]\ninstance_url = \"@EMULATOR_URL@\"\nauth = \"basic\"\nusername = \"accessgate\"\n",
            policy.display()
        ),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = vec![
        (
            "ACCESSGATE_CREDENTIALS__CLIENT_SECRET".to_string(),
            e.config().graph_client_secret.clone(),
        ),
        (
            "ACCESSGATE_QUEUE__CONNECTION_STRING".to_string(),
            az.connection_string(),
        ),
        (
            "ACCESSGATE_SERVICENOW__PASSWORD".to_string(),
            "sn-password".to_string(),
        ),
        (
            "ACCESSGATE_SERVICENOW__WEBHOOK_SECRET".to_string(),
            SECRET.to_string(),
        ),
        ("FUNCTIONS_CUSTOMHANDLER_PORT".to_string(), port.to_string()),
    ];
    let ag = Accessgate::spawn(&cfg, env, &["functions"]).await;
    let client = AzureQueue::new(
        accessgate::app::http_client().unwrap(),
        AzureQueueSettings {
            queue_url_base: EndpointUrl::parse(&az.endpoint).unwrap(),
            queue: queue.clone(),
            poison_queue: format!("{queue}-poison"),
        },
        StorageAuth::SharedKey {
            account: azurite::ACCOUNT.into(),
            key: Secret::new(azurite::ACCOUNT_KEY),
        },
    );

    // An approved request: intake, then the first delivery opens the ticket and parks.
    let open = |stage_sid: &'static str| {
        let e = e.clone();
        let ag = &ag;
        async move {
            let req = e
                .register_request(&accessgate_emulator::RegisterRequest {
                    stage: Some("assignmentRequestApproved".into()),
                    stage_instance_id: Some(stage_sid.into()),
                    ..Default::default()
                })
                .unwrap();
            let body = flat_body("assignmentRequestApproved", &req.id, stage_sid);
            let (_, out) = invoke(ag, "ElmCallout", &http_payload(&e, &body)).await;
            assert_eq!(out["Outputs"]["res"]["statusCode"], 202, "{out}");
            let mut q = fixture("queue-trigger-single.json");
            q["Data"]["job"] = out["Outputs"]["job"].clone();
            let (status, out) = invoke(ag, "ProcessJob", &q).await;
            assert_eq!(status, 200, "{out}");
            assert!(
                out["Logs"][0].as_str().unwrap().contains("parked until"),
                "{out}"
            );
            let link = format!("accessgate:{stage_sid}");
            let t = e
                .servicenow_tickets()
                .into_iter()
                .find(|t| t.correlation_id == link)
                .expect("a ticket was opened");
            assert!(e.resumes().iter().all(|r| r.stage_instance_id != stage_sid));
            t
        }
    };
    let deliver_woken = |sid: &'static str| {
        let client = &client;
        let ag = &ag;
        let e = e.clone();
        async move {
            let got = client
                .receive(1, std::time::Duration::from_secs(30))
                .await
                .unwrap();
            assert_eq!(got.len(), 1, "the woken message is visible");
            let mut q = fixture("queue-trigger-single.json");
            q["Data"]["job"] = Value::String(got[0].text.clone());
            let (status, out) = invoke(ag, "ProcessJob", &q).await;
            assert_eq!(status, 200, "{out}");
            resumed(&e, sid).await
        }
    };
    let close = |t: &accessgate_emulator::TicketView, state: &str| {
        e.close_servicenow_ticket(
            &t.table,
            &t.sys_id,
            &accessgate_emulator::CloseTicket {
                state: Some(state.into()),
                close_notes: Some("done by the agent".into()),
                close_code: None,
            },
        )
        .unwrap();
    };

    let t1 = open("fn-snow-webhook").await;
    close(&t1, "3");
    let body = json!({"table": t1.table, "sys_id": t1.sys_id, "number": t1.number,
        "state": "3", "correlation_id": t1.correlation_id, "event": "closed"})
    .to_string();
    let event = |ts: &str, sig: &str| {
        let mut p = fixture("servicenow-event-trigger.json");
        let h = &mut p["Data"]["req"]["Headers"];
        h["X-Accessgate-Timestamp"] = json!([ts]);
        h["X-Accessgate-Signature"] = json!([sig]);
        h["Content-Length"] = json!([body.len().to_string()]);
        p["Data"]["req"]["Body"] = Value::String(body.clone());
        p
    };
    let ts = (accessgate::queue::now_ms() / 1000).to_string();
    // A forged event: the host gets 200, the caller (res) 401, and nothing is woken.
    let forged = accessgate_emulator::tickets::signature(b"not-the-secret", &ts, body.as_bytes());
    let (status, out) = invoke(&ag, "ServiceNowEvents", &event(&ts, &forged)).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["Outputs"]["res"]["statusCode"], 401, "{out}");
    let err: Value = serde_json::from_str(out["Outputs"]["res"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(err["error"]["code"], "bad_signature");
    assert!(
        client
            .receive(1, std::time::Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty(),
        "a forged event wakes nothing"
    );
    let sig = accessgate_emulator::tickets::signature(SECRET.as_bytes(), &ts, body.as_bytes());
    let (status, out) = invoke(&ag, "ServiceNowEvents", &event(&ts, &sig)).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["Outputs"]["res"]["statusCode"], 202, "{out}");
    let ok: Value = serde_json::from_str(out["Outputs"]["res"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        (ok["status"].as_str(), ok["woken"].as_u64()),
        (Some("accepted"), Some(1))
    );
    let r = deliver_woken("fn-snow-webhook").await;
    assert_eq!(r.state, None, "closed complete continues: {r:?}");
    assert!(r.detail.unwrap_or_default().contains(&t1.number));

    // The webhook is lost: the timer's round reads the ticket and wakes the job.
    let t2 = open("fn-snow-poll").await;
    let (status, out) = invoke(&ag, "ServiceNowPoll", &fixture("timer-trigger.json")).await;
    assert_eq!(status, 200, "{out}");
    assert!(
        out["Logs"][0].as_str().unwrap().contains("0 woken"),
        "an open ticket wakes nothing: {out}"
    );
    close(&t2, "4");
    let (status, out) = invoke(&ag, "ServiceNowPoll", &fixture("timer-trigger.json")).await;
    assert_eq!(status, 200, "{out}");
    assert!(
        out["Logs"][0].as_str().unwrap().contains("1 woken"),
        "{out}"
    );
    let r = deliver_woken("fn-snow-poll").await;
    assert_eq!(r.state.as_deref(), Some("denied"), "{r:?}");
    let mut links: Vec<String> = e
        .servicenow_tickets()
        .into_iter()
        .map(|t| t.correlation_id)
        .filter(|l| l.starts_with("accessgate:"))
        .collect();
    links.sort();
    assert_eq!(
        links,
        ["accessgate:fn-snow-poll", "accessgate:fn-snow-webhook"],
        "one ticket per request"
    );
}

/// PIM under the Functions host on Azurite: `PimVerdict` (route `pim/{extension?}`) answers
/// the verdict in `res`, recorded in the wait table first; a re-delivery gets the same
/// evaluation id; an unknown extension (the route parameter in `Params`) is 404; a bad token
/// is 401 with its challenge, never a verdict.
#[tokio::test(flavor = "multi_thread")]
async fn pim_verdicts_are_answered_in_res_and_recorded_in_azure_table() {
    let az = tokio::task::spawn_blocking(azurite::Azurite::start)
        .await
        .unwrap();
    let queue = azurite::unique_queue_name("ag-fn-pim");
    let table: String = format!("w{}", queue.replace('-', ""))
        .chars()
        .take(63)
        .collect();
    let emu = start_emulator().await;
    let e = emu.handle();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "version = 1\n[[pim_rules]]\nname = \"readers\"\nroles = [\"f2ef992c-3afb-46b9-b7cf-a126ee74c451\"]\ndecision = \"auto_approved\"\n",
    )
    .unwrap();
    let audience = format!("api://accessgate.test/{}", e.config().graph_client_id);
    let cfg = write_config(
        dir.path(),
        &e,
        &format!(
            "[queue]\nbackend = \"azure_storage\"\nname = \"{queue}\"\nwait_table = \"{table}\"\n[policy]\nfile = \"{}\"\n[pim]\naudiences = [\"{audience}\"]\n",
            policy.display()
        ),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = vec![
        (
            "ACCESSGATE_CREDENTIALS__CLIENT_SECRET".to_string(),
            e.config().graph_client_secret.clone(),
        ),
        (
            "ACCESSGATE_QUEUE__CONNECTION_STRING".to_string(),
            az.connection_string(),
        ),
        ("FUNCTIONS_CUSTOMHANDLER_PORT".to_string(), port.to_string()),
    ];
    let ag = Accessgate::spawn(&cfg, env, &["functions"]).await;
    let opts = accessgate_emulator::PimSendOptions {
        audience: audience.clone(),
        role_definition_id: Some("f2ef992c-3afb-46b9-b7cf-a126ee74c451".into()),
        ..Default::default()
    };
    let body = accessgate_emulator::pim::body(&opts);
    let token = e
        .mint_callout_token(&accessgate_emulator::pim::default_token(&opts))
        .unwrap();
    let payload = |auth: &str, ext: Option<&str>| {
        let mut p = fixture("http-trigger.json");
        p["Data"]["req"]["Headers"]["Authorization"] = json!([auth]);
        p["Data"]["req"]["Headers"]["Content-Length"] = json!([body.to_string().len().to_string()]);
        p["Data"]["req"]["Body"] = Value::String(body.to_string());
        p["Data"]["req"]["Url"] = json!("https://accessgate.azurewebsites.net/api/pim");
        if let Some(x) = ext {
            p["Data"]["req"]["Params"] = json!({ "extension": x });
        }
        p
    };
    let verdict = |out: &Value| -> Value {
        serde_json::from_str(out["Outputs"]["res"]["body"].as_str().unwrap_or("null")).unwrap()
    };
    let (status, out) = invoke(
        &ag,
        "PimVerdict",
        &payload(&format!("Bearer {token}"), None),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["Outputs"]["res"]["statusCode"], 200, "{out}");
    let first = verdict(&out);
    assert_eq!(first["evaluationOutcome"], "AutoApproved", "{first}");
    let (_, out) = invoke(
        &ag,
        "PimVerdict",
        &payload(&format!("Bearer {token}"), None),
    )
    .await;
    assert_eq!(verdict(&out)["evaluationId"], first["evaluationId"]);
    let (_, out) = invoke(
        &ag,
        "PimVerdict",
        &payload(&format!("Bearer {token}"), Some("nope")),
    )
    .await;
    assert_eq!(out["Outputs"]["res"]["statusCode"], 404, "{out}");
    let (_, out) = invoke(
        &ag,
        "PimVerdict",
        &payload("Bearer forged.token.value", None),
    )
    .await;
    assert_eq!(out["Outputs"]["res"]["statusCode"], 401, "{out}");
    assert!(verdict(&out).get("evaluationOutcome").is_none());
    assert_eq!(
        out["Outputs"]["res"]["headers"]["WWW-Authenticate"],
        "Bearer error=\"invalid_token\""
    );
}

/// A Lifecycle Workflows task through the Functions host: `ElmCallout` takes it (PoP of
/// Lifecycle Workflows for the task extension) and emits the job; `ProcessJob` resumes the task
/// processing result with `completed`.
#[tokio::test(flavor = "multi_thread")]
async fn a_lifecycle_workflows_task_is_queued_and_resumed_by_the_functions_host() {
    let fx = start().await;
    let emu = fx.emu.handle();
    let (wf, task, result) = ("wf-fn-1", "task-fn-1", "result-fn-1");
    emu.register_task(&accessgate_emulator::RegisterTask {
        id: Some(result.into()),
        workflow_id: wf.into(),
        task_id: task.into(),
        subject_id: "0b000000-0000-0000-0000-000000000001".into(),
        timeout: Some("PT1H".into()),
        authorized_apps: None,
    })
    .unwrap();
    let body = json!({"type": "lifecycleEvent", "source": "LifecycleWorkflows", "data": {
        "callbackUriPath": format!("/identityGovernance/lifecycleWorkflows/workflows/{wf}/tasks/{task}/taskProcessingResults/{result}/resume"),
        "subject": {"id": "0b000000-0000-0000-0000-000000000001"}, "task": {"id": task},
        "workflow": {"id": wf}, "taskProcessingResult": {"id": result}}})
    .to_string();
    let mut p = fixture("http-trigger.json");
    let token = emu
        .mint_pop(&PopOptions {
            at: Some(MintOptions {
                app_id: Some(accessgate_emulator::lifecycle::LCW_APP_ID.into()),
                audience: Some("https://management.azure.com".into()),
                ..Default::default()
            }),
            p: Some(json!(emu.config().lcw_logic_app_resource)),
            ..Default::default()
        })
        .unwrap();
    p["Data"]["req"]["Headers"]["Authorization"] = json!([format!("PoP {token}")]);
    p["Data"]["req"]["Headers"]["Content-Length"] = json!([body.len().to_string()]);
    p["Data"]["req"]["Body"] = Value::String(body);
    let (_, out) = invoke(&fx.ag, "ElmCallout", &p).await;
    assert_eq!(out["Outputs"]["res"]["statusCode"], 202, "{out}");
    let job = out["Outputs"]["job"].as_str().unwrap().to_owned();
    let mut q = fixture("queue-trigger-single.json");
    q["Data"]["job"] = Value::String(job);
    let (status, out) = invoke(&fx.ag, "ProcessJob", &q).await;
    assert_eq!(status, 200, "{out}");
    let t = emu.task(result).unwrap();
    assert_eq!(t.processing_status, "completed", "{t:?}");
    assert_eq!(t.resume.unwrap()["data"]["operationStatus"], "completed");
}
