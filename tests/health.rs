//! Liveness and readiness: `/healthz` says the process answers and nothing more (the route is
//! unauthenticated, so no job counts); `/readyz` fails while the queue cannot commit, which is
//! exactly when callouts get `503`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::time::{Duration, Instant};

async fn get(h: &Harness, path: &str) -> (u16, serde_json::Value) {
    let r = client().get(h.ag.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_fails_while_the_queue_cannot_commit_and_liveness_tells_no_counts() {
    let h = Harness::start("").await;
    let r = h
        .send(SendOptions {
            stage_instance_id: Some("s-ready-1".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(r.status, Some(202), "{r:?}");
    assert_eq!(
        get(&h, "/readyz").await,
        (200, serde_json::json!({"status": "ready"}))
    );
    // Exactly this: no job counts (or anything else) on an unauthenticated route.
    assert_eq!(
        get(&h, "/healthz").await,
        (200, serde_json::json!({"status": "ok"}))
    );
    assert_eq!(
        get(&h, "/").await,
        (200, serde_json::json!({"status": "ok"}))
    );

    // Another connection holds the database's write lock: no commit can happen (as with a
    // read-only or full disk, which root cannot simulate with permissions).
    let db = h.dir.path().join("data").join("queue.db");
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();

    // The last probe's answer is kept for a second: wait for the next probe (generous bound).
    let until = Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        let (status, body) = get(&h, "/readyz").await;
        if status != 200 || Instant::now() > until {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert!(
        !body.to_string().contains("queue.db"),
        "no internals: {body}"
    );
    // Posted directly: the emulator's sender gives up after 1 s, and this answer waits for the
    // database's busy timeout before it says 503.
    let body = flat_body(
        "assignmentRequestCreated",
        "11111111-2222-3333-4444-555555555555",
        "s-ready-2",
    );
    let slow_client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let resp = slow_client
        .post(h.callout_url())
        .header("authorization", h.pop(PopOptions::default()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        503,
        "a callout that cannot be committed is not acknowledged"
    );
    assert_eq!(get(&h, "/healthz").await.0, 200, "alive all the same");

    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    // Ready again once a probe commits (probes run at most once a second; generous bound).
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if get(&h, "/readyz").await.0 == 200 {
            break;
        }
        assert!(
            Instant::now() < until,
            "still not ready after the lock was released"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = h
        .send(SendOptions {
            stage_instance_id: Some("s-ready-3".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(r.status, Some(202), "{r:?}");
}

/// A data directory that cannot be created or written stops the start with the setting and the
/// path named (root ignores permissions, so a regular file stands in the directory's way).
#[tokio::test(flavor = "multi_thread")]
async fn an_unusable_data_dir_is_named_with_its_setting_and_path() {
    let emu = start_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &emu.handle(), "");
    std::fs::write(dir.path().join("blocker"), b"a file, not a directory").unwrap();
    let data_dir = dir.path().join("blocker").join("data");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_accessgate"))
            .arg("--config")
            .arg(&cfg)
            .arg("serve")
            .env("ACCESSGATE_SERVER__DATA_DIR", &data_dir)
            .env(
                "ACCESSGATE_CREDENTIALS__CLIENT_SECRET",
                emu.handle().config().graph_client_secret.clone(),
            )
            .output(),
    )
    .await
    .expect("start-up fails at once")
    .unwrap();
    assert!(!out.status.success());
    let text = output_text(&out);
    assert!(text.contains("server.data_dir"), "{text}");
    assert!(text.contains(&data_dir.display().to_string()), "{text}");
}
