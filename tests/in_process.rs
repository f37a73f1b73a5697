//! Both hosts in-process through the `run` seam (`app::run`, `app::run_functions`) on a listener
//! the test binds: a real signed callout is acknowledged and resumed, shutdown returns, an
//! unauthenticated request is refused before its body is read, and the two hosts answer a
//! refusal with the same bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The harness's config for `emu`, loaded in-process (the client secret as the env override
/// the binary would get, without touching this process's environment).
fn config(dir: &Path, emu: &Emulator) -> accessgate::config::Config {
    let path = write_config(dir, emu, "");
    let text = std::fs::read_to_string(path).unwrap();
    let env = BTreeMap::from([(
        "ACCESSGATE_CREDENTIALS__CLIENT_SECRET".to_string(),
        emu.config().graph_client_secret.clone(),
    )]);
    accessgate::config::from_sources(&text, &env, dir).expect("valid config")
}

/// A host running in this process: its address, the trigger that stops it and its task.
struct InProcess {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// Triggers shutdown and asserts `run` returns Ok within a bounded time.
    async fn shutdown(self) {
        self.stop.send(()).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("run returns within 10 s of shutdown")
            .expect("run does not panic");
        result.expect("run returns Ok");
    }
}

async fn start(functions: bool, config: accessgate::config::Config) -> InProcess {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let task = if functions {
        tokio::spawn(accessgate::app::run_functions(config, listener, shutdown))
    } else {
        tokio::spawn(accessgate::app::run(config, listener, shutdown))
    };
    InProcess { addr, stop, task }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_serves_a_signed_callout_in_process_and_returns_on_shutdown() {
    let emu = start_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let ag = start(false, config(dir.path(), &emu.handle())).await;
    let report = emu
        .handle()
        .send_callout(&SendOptions {
            target_url: format!("http://{}/api/elm", ag.addr),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(report.status, Some(202), "{report:?}");
    let rec = resumed(&emu.handle(), &report.stage_instance_id).await;
    assert_eq!(rec.request_id, report.request_id);
    ag.shutdown().await;
}

/// A raw HTTP/1.1 exchange: `head` (request line and headers, without the blank line) then
/// `body`; returns status, headers (lowercase names) and body of the answer.
async fn raw(
    addr: SocketAddr,
    head: &str,
    body: &[u8],
) -> (u16, BTreeMap<String, String>, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    s.write_all(body).await.unwrap();
    let mut got = Vec::new();
    // Read until the whole answer is there; the connection may stay open while the server
    // still expects body bytes we never send.
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if let Some((_, h, b)) = parse(&got)
                && h.get("content-length")
                    .is_some_and(|l| l.parse::<usize>().ok() == Some(b.len()))
            {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), read)
        .await
        .expect("an answer well before the 10 s body timeout");
    parse(&got).expect("an HTTP answer")
}

fn parse(bytes: &[u8]) -> Option<(u16, BTreeMap<String, String>, Vec<u8>)> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((status, headers, bytes[end + 4..].to_vec()))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unauthenticated_callout_is_refused_before_its_body_is_read() {
    let emu = start_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let ag = start(false, config(dir.path(), &emu.handle())).await;
    // Announce a body and never send it: the 401 must come from the headers alone, long before
    // the body read would time out (408).
    for auth in ["", "Authorization: PoP not.a.jwt\r\n"] {
        let head = format!(
            "POST /api/elm HTTP/1.1\r\n{auth}Content-Type: application/json\r\nContent-Length: 1000"
        );
        let (status, headers, body) = raw(ag.addr, head.trim_end(), b"").await;
        assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "unauthorized");
        assert_eq!(
            v["error"]["correlationId"].as_str(),
            headers.get("x-correlation-id").map(String::as_str),
            "the refusal names the id its header carries"
        );
    }
    // A declared size over the limit is refused before authentication, also without a body.
    let head =
        "POST /api/elm HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2000000";
    let (status, _, _) = raw(ag.addr, head, b"").await;
    assert_eq!(status, 413);
    ag.shutdown().await;
}

/// One refusal, as both hosts get it.
struct Case {
    name: &'static str,
    authorization: Option<String>,
    content_type: &'static str,
    /// Declared length when it is not the body's.
    content_length: Option<usize>,
    body: String,
    status: u16,
}

/// The same request as the Functions host hands it over (tests/fixtures/functions).
fn invocation(c: &Case, correlation_id: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/functions/http-trigger.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut p: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let h = &mut p["Data"]["req"]["Headers"];
    match &c.authorization {
        Some(a) => h["Authorization"] = json!([a]),
        None => {
            h.as_object_mut().unwrap().remove("Authorization");
        }
    }
    h["Content-Type"] = json!([c.content_type]);
    h["Content-Length"] = json!([c.content_length.unwrap_or(c.body.len()).to_string()]);
    h["client-request-id"] = json!([correlation_id]);
    h["x-ms-client-request-id"] = json!([correlation_id]);
    p["Data"]["req"]["Body"] = Value::String(c.body.clone());
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn both_hosts_answer_a_refusal_with_the_same_bytes() {
    let emu = start_emulator().await;
    let e = emu.handle();
    let (dir_s, dir_f) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let standalone = start(false, config(dir_s.path(), &e)).await;
    let functions = start(true, config(dir_f.path(), &e)).await;
    let body = flat_body("assignmentRequestCreated", "r-same", "s-same");
    // A PoP signed request is single-use: each host gets its own.
    let pop = || {
        Some(format!(
            "PoP {}",
            e.mint_pop(&PopOptions::default()).unwrap()
        ))
    };
    let cases = |pop: &dyn Fn() -> Option<String>| {
        vec![
            Case {
                name: "no Authorization",
                authorization: None,
                content_type: "application/json",
                content_length: None,
                body: body.clone(),
                status: 401,
            },
            Case {
                name: "not a JWT",
                authorization: Some("PoP not.a.jwt".into()),
                content_type: "application/json",
                content_length: None,
                body: body.clone(),
                status: 401,
            },
            Case {
                name: "bearer in direct mode",
                authorization: Some(format!(
                    "Bearer {}",
                    e.mint_callout_token(&MintOptions::default()).unwrap()
                )),
                content_type: "application/json",
                content_length: None,
                body: body.clone(),
                status: 401,
            },
            Case {
                name: "declared size over the limit",
                authorization: pop(),
                content_type: "application/json",
                content_length: Some(2_000_000),
                body: String::new(),
                status: 413,
            },
            Case {
                name: "wrong content type",
                authorization: pop(),
                content_type: "text/plain",
                content_length: None,
                body: body.clone(),
                status: 415,
            },
            Case {
                name: "malformed JSON",
                authorization: pop(),
                content_type: "application/json",
                content_length: None,
                body: "{\"Stage\":".into(),
                status: 400,
            },
        ]
    };
    let (for_standalone, for_functions) = (cases(&pop), cases(&pop));
    for (i, (s, f)) in for_standalone.iter().zip(&for_functions).enumerate() {
        let cid = format!("same-refusal-{i}");
        let mut head = format!(
            "POST /api/elm HTTP/1.1\r\nclient-request-id: {cid}\r\nContent-Type: {}\r\nContent-Length: {}",
            s.content_type,
            s.content_length.unwrap_or(s.body.len())
        );
        if let Some(a) = &s.authorization {
            head.push_str(&format!("\r\nAuthorization: {a}"));
        }
        let body = if s.content_length.is_some() {
            ""
        } else {
            s.body.as_str()
        };
        let (status, headers, bytes) = raw(standalone.addr, &head, body.as_bytes()).await;
        assert_eq!(
            status,
            s.status,
            "{}: {}",
            s.name,
            String::from_utf8_lossy(&bytes)
        );

        let resp = client()
            .post(format!("http://{}/ElmCallout", functions.addr))
            .json(&invocation(f, &cid))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{}", f.name);
        let out: Value = resp.json().await.unwrap();
        let res = &out["Outputs"]["res"];
        assert_eq!(res["statusCode"], status, "{}: {res}", s.name);
        assert_eq!(
            res["body"].as_str().unwrap().as_bytes(),
            bytes.as_slice(),
            "{}: the same body bytes",
            s.name
        );
        assert_eq!(
            res["headers"]["x-correlation-id"],
            cid.as_str(),
            "{}",
            s.name
        );
        assert_eq!(
            res["headers"]["WWW-Authenticate"].as_str(),
            headers.get("www-authenticate").map(String::as_str),
            "{}: the same challenge",
            s.name
        );
        assert_eq!(
            res["headers"]["Content-Type"].as_str(),
            headers.get("content-type").map(String::as_str),
            "{}",
            s.name
        );
        assert_eq!(headers.get("x-correlation-id"), Some(&cid), "{}", s.name);
    }
    standalone.shutdown().await;
    functions.shutdown().await;
}
