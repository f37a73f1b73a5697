//! Connections cannot hold the server's file descriptors for ever: slow-header and idle
//! connections are closed after `[server]` timeouts, and callouts keep being answered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads until EOF; the time it took, or None if the server kept the connection past `bound`.
async fn closed_within(s: &mut tokio::net::TcpStream, bound: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((start + bound).into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_header_and_idle_connections_are_closed_and_callouts_still_answered() {
    let h = Harness::start_env(
        "",
        "",
        vec![
            (
                "ACCESSGATE_SERVER__HEADER_READ_TIMEOUT_SECONDS".into(),
                "1".into(),
            ),
            (
                "ACCESSGATE_SERVER__KEEP_ALIVE_IDLE_SECONDS".into(),
                "2".into(),
            ),
        ],
    )
    .await;
    let mut silent = tokio::net::TcpStream::connect(h.ag.addr).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(h.ag.addr).await.unwrap();
    slow.write_all(b"POST /api/elm HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A keep-alive connection after one answered request.
    let mut kept = tokio::net::TcpStream::connect(h.ag.addr).await.unwrap();
    kept.write_all(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    kept.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // A valid callout is answered meanwhile.
    let r = h
        .send(SendOptions {
            stage_instance_id: Some("s-conn".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(r.status, Some(202), "{r:?}");
    // Generous bounds (loaded 2-core machine): 1 s and 2 s timeouts, 10 s to be seen.
    let bound = Duration::from_secs(10);
    assert!(
        closed_within(&mut silent, bound).await.is_some(),
        "silent connection kept open"
    );
    assert!(
        closed_within(&mut slow, bound).await.is_some(),
        "slow-header connection kept open"
    );
    assert!(
        closed_within(&mut kept, bound).await.is_some(),
        "idle keep-alive connection kept open"
    );
}

/// The text log format escapes control characters in every field: a callout cannot forge a line.
#[tokio::test(flavor = "multi_thread")]
async fn a_newline_in_a_callout_field_cannot_forge_a_text_log_line() {
    let h = Harness::start_env(
        "",
        "",
        vec![("ACCESSGATE_LOG__FORMAT".into(), "text".into())],
    )
    .await;
    let r = h
        .send(SendOptions {
            stage: Some("assignmentRequestX\n2026-01-01 INFO forged\u{1b}[31m".into()),
            stage_instance_id: Some("s-forge".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(r.status, Some(202), "{r:?}");
    eventually(10, "the unknown-stage line", || {
        h.ag.log_lines()
            .into_iter()
            .find(|l| l.contains("unknown stage acknowledged"))
    })
    .await;
    let lines = h.ag.log_lines();
    assert!(
        !lines.iter().any(|l| l.starts_with("2026-01-01")),
        "forged line: {lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains('\u{1b}')),
        "raw ESC in logs"
    );
    assert!(
        lines.iter().any(|l| l.contains("forged")),
        "the escaped stage is still logged"
    );
}
