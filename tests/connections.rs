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
    assert_eq!(r.status, Some(422), "{r:?}");
    eventually(10, "the refusal line", || {
        h.ag.log_lines()
            .into_iter()
            .find(|l| l.contains("unsupported_callout"))
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

/// Reads one HTTP/1.1 response with a `content-length` body; its status.
async fn read_response(s: &mut tokio::net::TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        if buf.len() >= end + 4 + len {
            return head[9..12].parse().unwrap();
        }
    }
}

/// Closed by the server (EOF or reset), as far as a 1 ms read can tell; data is not expected.
async fn is_closed(s: &mut tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// The issue: with the common soft limit of 1,024 open files, about 1,100 idle connections
/// made every valid callout go unanswered. Here accessgate runs with an open-file limit of 256
/// (soft and hard, so its raise at start-up cannot lift it: 192 inbound connections after the
/// reserve) and the test holds twice that many open (keep-alive connections idle after one
/// request, silent ones, and slow-header ones that sent part of a request head), with the
/// header and idle timeouts far beyond the test so only the connection limit can help. Valid
/// callouts sent during and after the flood must all be answered 202, each inside Entra's
/// longest client timeout (2 s), and the server must have closed unused connections to hold
/// no more than its limit.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_connections_beyond_the_open_file_limit_does_not_starve_callouts() {
    flood(96, 144, 144).await;
}

/// The same with nothing but slow-header connections, twice the limit: none is idle, so the
/// server must close request heads that stalled (500 ms) to make room, and must not close the
/// callouts' own connections, which it has just accepted.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_header_flood_beyond_the_connection_limit_does_not_starve_callouts() {
    flood(0, 0, 384).await;
}

/// Holds `kept` keep-alive connections idle after one request, then `silent` and `slow`
/// (part of a request head) ones interleaved, while callouts must all get 202 within 2 s.
async fn flood(kept: usize, silent: usize, slow: usize) {
    const NOFILE: u64 = 256;
    const MAX: usize = 192; // NOFILE minus http_server's reserve of 64
    let total = kept + silent + slow;
    // This process holds every connection and the emulator's side of the callouts.
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let ours = rlimit::increase_nofile_limit(hard).unwrap();
    assert!(
        ours >= 4 * total as u64,
        "the test needs {} open files, the limit is {ours}",
        4 * total
    );
    assert!(
        std::process::Command::new("prlimit")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "this test needs util-linux prlimit"
    );
    let started = Instant::now();
    let h = Harness::start_nofile(
        NOFILE,
        vec![
            (
                "ACCESSGATE_SERVER__HEADER_READ_TIMEOUT_SECONDS".into(),
                "60".into(),
            ),
            (
                "ACCESSGATE_SERVER__KEEP_ALIVE_IDLE_SECONDS".into(),
                "3600".into(),
            ),
        ],
    )
    .await;
    let limits =
        h.ag.wait_log("connection limits", |v| v["message"] == "connection limits")
            .await;
    assert_eq!(limits["open_file_limit"], NOFILE, "{limits}");
    assert_eq!(limits["max_connections"], MAX as u64, "{limits}");

    // Callouts all along, each with its own stage instance.
    let stop = tokio_util::sync::CancellationToken::new();
    let sender = tokio::spawn({
        let (emu, url, stop) = (h.emu(), h.callout_url(), stop.clone());
        async move {
            let mut reports = Vec::new();
            for i in 0.. {
                let r = emu
                    .send_callout(&SendOptions {
                        target_url: url.clone(),
                        stage_instance_id: Some(format!("s-flood-{i}")),
                        client_timeout_ms: Some(2000),
                        maximum_retries: Some(0),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                reports.push(r);
                if stop.is_cancelled() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            reports
        }
    });

    // A connect the kernel does not complete within 2 s means the server stopped accepting
    // (its backlog is full): the flood stops there and the callouts tell the rest.
    let addr = h.ag.addr;
    let connect = || async move {
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await
            .ok()
            .map(Result::unwrap)
    };
    let mut held = Vec::with_capacity(total);
    for _ in 0..kept {
        let mut s = connect()
            .await
            .expect("below the limit, a connection is accepted");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), read_response(&mut s))
            .await
            .expect("a keep-alive request answered");
        assert_eq!(status, 200);
        held.push(s);
    }
    let (mut silent_left, mut slow_left) = (silent, slow);
    while silent_left + slow_left > 0 {
        if silent_left > 0 {
            let Some(s) = connect().await else { break };
            held.push(s);
            silent_left -= 1;
        }
        if slow_left > 0 {
            let Some(mut s) = connect().await else { break };
            s.write_all(b"POST /api/elm HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            held.push(s);
            slow_left -= 1;
        }
    }
    // A few more callouts while all of it is held, then stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let reports = tokio::time::timeout(Duration::from_secs(20), sender)
        .await
        .expect("the callouts finish")
        .unwrap();
    let unanswered: Vec<_> = reports.iter().filter(|r| r.status != Some(202)).collect();
    if !unanswered.is_empty() {
        for l in h.ag.log_lines().iter().rev().take(30) {
            eprintln!("LOG {l}");
        }
    }
    assert!(
        unanswered.is_empty(),
        "{} of {} callouts not answered 202 within 2 s ({} of {total} flood connections made): {unanswered:#?}",
        unanswered.len(),
        reports.len(),
        held.len()
    );
    assert_eq!(held.len(), total, "the server stopped accepting");
    assert!(reports.len() >= 5, "only {} callouts sent", reports.len());

    // The server closed unused connections to stay at its limit (closes take effect quickly,
    // but not synchronously).
    let until = Instant::now() + Duration::from_secs(5);
    let open = loop {
        let mut open = 0;
        for s in &mut held {
            if !is_closed(s).await {
                open += 1;
            }
        }
        if open <= MAX || Instant::now() > until {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "{} callouts answered; {open} of {total} flood connections open",
        reports.len()
    );
    assert!(
        open <= MAX,
        "{open} of {total} flood connections still open, limit {MAX}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}
