//! Scale-out without Functions: several `accessgate serve` processes share one Azure Storage
//! queue (Azurite), each callout is resumed once, and a killed instance's work is finished by
//! another when its lease (the visibility timeout) runs out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/azurite.rs"]
mod azurite;
mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// One more `accessgate serve` on the same config (its own data dir), sharing the queue.
async fn instance(
    emu: &Emulator,
    dir: &std::path::Path,
    queue: &str,
    connection_string: &str,
) -> Accessgate {
    let extra = format!("[queue]\nbackend = \"azure_storage\"\nname = \"{queue}\"\n");
    let cfg = write_config(dir, emu, &extra);
    let env = vec![
        (
            "ACCESSGATE_CREDENTIALS__CLIENT_SECRET".to_string(),
            emu.config().graph_client_secret.clone(),
        ),
        (
            "ACCESSGATE_QUEUE__CONNECTION_STRING".to_string(),
            connection_string.to_owned(),
        ),
        ("ACCESSGATE_GRAPH__TIMEOUT_SECONDS".into(), "1".into()),
        ("ACCESSGATE_WORKER__LEASE_SECONDS".into(), "8".into()),
        ("ACCESSGATE_WORKER__POLL_INTERVAL_MS".into(), "50".into()),
        // One worker each, so that neither instance can drain the queue alone.
        ("ACCESSGATE_WORKER__CONCURRENCY".into(), "1".into()),
    ];
    Accessgate::spawn(&cfg, env, &["serve"]).await
}

fn resumes_by_sid(emu: &Emulator) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in emu.resumes() {
        *m.entry(r.stage_instance_id).or_default() += 1;
    }
    m
}

fn resumed_by(ag: &Accessgate) -> usize {
    ag.log_json()
        .iter()
        .filter(|l| l["message"] == "resumed")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_storage_queue_and_survive_a_kill() {
    let az = azurite::Azurite::start();
    let queue = azurite::unique_queue_name("ag-share");
    let emu = start_emulator().await;
    let e = emu.handle();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = instance(&e, d1.path(), &queue, &az.connection_string()).await;
    let b = instance(&e, d2.path(), &queue, &az.connection_string()).await;
    a.wait_log("azure queue", |l| {
        l["message"] == "accessgate listening" && l["queue"] == "azure_storage"
    })
    .await;

    // Callouts arrive at both instances. Each resume takes 200 ms, so one worker alone would
    // need 8 s for all of them: the other instance's (backed-off, at most 2 s) poll finds work.
    e.set_fault(&FaultSpec {
        delay_ms: Some(200),
        ..Default::default()
    })
    .unwrap();
    let mut sids = Vec::new();
    for i in 0..40 {
        let target = if i % 2 == 0 { &a } else { &b };
        let r = e
            .send_callout(&SendOptions {
                target_url: target.url("/api/elm"),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(r.status, Some(202), "{:?}", r.error);
        sids.push(r.stage_instance_id);
    }
    let want = sids.clone();
    eventually(60, "all 40 resumed", || {
        let c = resumes_by_sid(&e);
        want.iter().all(|s| c.contains_key(s)).then_some(())
    })
    .await;
    e.clear_faults();
    // Graph records a resume a moment before the instance logs it: wait for the log lines.
    eventually(10, "the 40 resumes logged", || {
        (resumed_by(&a) + resumed_by(&b) >= 40).then_some(())
    })
    .await;
    let (ra, rb) = (resumed_by(&a), resumed_by(&b));
    assert_eq!(
        ra + rb,
        40,
        "each resumed once by one of them ({ra} + {rb})"
    );
    assert!(ra > 0 && rb > 0, "both instances took work ({ra} / {rb})");

    // Graph down, callouts queued, then instance a dies holding leases: b finishes everything
    // once Graph is back and a's leases run out.
    graph_down(&e, Some(1));
    let mut late = Vec::new();
    for _ in 0..10 {
        let r = e
            .send_callout(&SendOptions {
                target_url: a.url("/api/elm"),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(r.status, Some(202));
        late.push(r.stage_instance_id);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    a.kill9();
    e.clear_faults();
    let want = late.clone();
    eventually(
        60,
        "the killed instance's work finished by the other",
        || {
            let c = resumes_by_sid(&e);
            want.iter().all(|s| c.contains_key(s)).then_some(())
        },
    )
    .await;
    let counts = resumes_by_sid(&e);
    let duplicates = counts.values().filter(|n| **n > 1).count();
    let lost = sids
        .iter()
        .chain(&late)
        .filter(|s| !counts.contains_key(*s))
        .count();
    println!(
        "azure storage figures: callouts acknowledged=50, resumed={}, by a={ra}, by b (first round)={rb}, duplicates={duplicates}, lost={lost}",
        counts.len()
    );
    assert_eq!(duplicates, 0);
    assert_eq!(lost, 0);
    drop(b);
}

#[tokio::test]
async fn an_unreachable_storage_account_gets_503_and_says_why() {
    let emu = start_emulator().await;
    let e = emu.handle();
    let d = tempfile::tempdir().unwrap();
    // Nothing listens on port 9 of loopback.
    let ag = instance(
        &e,
        d.path(),
        "ag-unreachable",
        &format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_KEY};QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;TableEndpoint=http://127.0.0.1:9/devstoreaccount1;"
        ),
    )
    .await;
    let r = e
        .send_callout(&SendOptions {
            target_url: ag.url("/api/elm"),
            maximum_retries: Some(0),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        r.status,
        Some(503),
        "not acknowledged when it cannot be stored"
    );
    ag.wait_log("the reason", |l| {
        l["message"]
            .as_str()
            .unwrap_or("")
            .contains("Azure Storage")
            || l["error"].as_str().unwrap_or("").contains("Azure Storage")
    })
    .await;
}

#[tokio::test]
async fn an_unreadable_message_goes_to_the_poison_queue_with_its_reason() {
    use accessgate::queue::azure::{
        AzureQueue, AzureQueueSettings, StorageAuth, parse_connection_string,
    };
    let az = azurite::Azurite::start();
    let name = azurite::unique_queue_name("ag-poison");
    let (endpoint, account, key) = parse_connection_string(&az.connection_string()).unwrap();
    let q = AzureQueue::new(
        reqwest::Client::new(),
        AzureQueueSettings {
            queue_url_base: endpoint,
            queue: name.clone(),
            poison_queue: format!("{name}-poison"),
        },
        StorageAuth::SharedKey { account, key },
    );
    q.ensure_queues().await.unwrap();
    q.send("this is not a job", None).await.unwrap();

    let emu = start_emulator().await;
    let d = tempfile::tempdir().unwrap();
    let _ag = instance(&emu.handle(), d.path(), &name, &az.connection_string()).await;
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let poisoned = loop {
        if let Some(m) = q.peek(true, 1).await.unwrap().into_iter().next() {
            break m.text;
        }
        assert!(
            std::time::Instant::now() < until,
            "nothing reached the poison queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(poisoned.contains("unreadable job message"), "{poisoned}");
    assert!(poisoned.contains("this is not a job"), "{poisoned}");
    // ... and it leaves the work queue (the delete follows the poison send).
    while q.approximate_count(false).await.unwrap() != 0 {
        assert!(
            std::time::Instant::now() < until,
            "the message stayed in the work queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
