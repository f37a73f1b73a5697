//! The load generator: keep-alive HTTP/1.1 connections, each owned by one task (raw hyper, no
//! pool, so the generator spends little of the machine's two cores), driven either closed-loop
//! (as fast as answers come back) or open-loop (requests due at fixed instants).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::sync::{Mutex, mpsc};

use crate::stats::Summary;
use crate::tokens::Callout;

/// One keep-alive connection to the server under test.
pub struct Conn {
    addr: SocketAddr,
    host: HeaderValue,
    tx: SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        // Requests go out in one write each anyway; no Nagle delay on the client side.
        stream.set_nodelay(true)?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            addr,
            host: HeaderValue::from_str(&addr.to_string())?,
            tx,
        })
    }

    pub async fn open_many(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Conn>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(Conn::open(addr).await?);
        }
        Ok(out)
    }

    /// Sends one callout and reads the whole answer; the status code.
    async fn send(&mut self, c: &Callout) -> anyhow::Result<u16> {
        if self.tx.is_closed() {
            *self = Conn::open(self.addr).await?;
        }
        self.tx.ready().await?;
        let req = Request::builder()
            .method(Method::POST)
            .uri("/api/elm")
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(AUTHORIZATION, c.authorization.clone())
            .body(Full::new(c.body.clone()))?;
        let resp = self.tx.send_request(req).await?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await?;
        Ok(status)
    }
}

/// Answers by status, and transport errors.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub statuses: BTreeMap<u16, u64>,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Tally {
    fn record(&mut self, r: &anyhow::Result<u16>) {
        match r {
            Ok(s) => *self.statuses.entry(*s).or_default() += 1,
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    pub fn accepted(&self) -> u64 {
        self.statuses.get(&202).copied().unwrap_or(0)
    }

    /// Everything that was not a 202, e.g. `401x3 errors=1`; empty when there was none.
    pub fn failures(&self) -> String {
        let mut parts: Vec<String> = self
            .statuses
            .iter()
            .filter(|(s, _)| **s != 202)
            .map(|(s, n)| format!("{s}x{n}"))
            .collect();
        if self.errors > 0 {
            parts.push(format!(
                "errors={} ({})",
                self.errors,
                self.first_error.as_deref().unwrap_or("")
            ));
        }
        parts.join(" ")
    }
}

/// The callouts a phase sends: each once, or round-robin for ever (the baseline keeps no
/// replay cache, so it may see a token again).
#[derive(Clone)]
pub struct Work {
    calls: Arc<Vec<Callout>>,
    cycle: bool,
}

impl Work {
    pub fn once(calls: Vec<Callout>) -> Self {
        Work {
            calls: Arc::new(calls),
            cycle: false,
        }
    }

    pub fn cycling(calls: Vec<Callout>) -> Self {
        Work {
            calls: Arc::new(calls),
            cycle: true,
        }
    }

    fn get(&self, i: usize) -> Option<&Callout> {
        if self.cycle && !self.calls.is_empty() {
            self.calls.get(i % self.calls.len())
        } else {
            self.calls.get(i)
        }
    }
}

pub struct ClosedOutcome {
    pub tally: Tally,
    pub elapsed: Duration,
    /// The callouts ran out before the deadline.
    pub exhausted: bool,
}

impl ClosedOutcome {
    /// 202s per second.
    pub fn rate(&self) -> f64 {
        self.tally.accepted() as f64 / self.elapsed.as_secs_f64()
    }
}

/// Closed loop: every connection sends its next callout as soon as the previous answer is in,
/// until `duration` has passed or `max` callouts were sent.
pub async fn closed_loop(
    conns: Vec<Conn>,
    work: &Work,
    duration: Option<Duration>,
    max: usize,
) -> anyhow::Result<(Vec<Conn>, ClosedOutcome)> {
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let deadline = duration.map(|d| t0 + d);
    let mut tasks = Vec::new();
    for mut conn in conns {
        let (next, work) = (next.clone(), work.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut exhausted = false;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max {
                    break;
                }
                let Some(c) = work.get(i) else {
                    exhausted = true;
                    break;
                };
                tally.record(&conn.send(c).await);
            }
            (conn, tally, exhausted)
        }));
    }
    let mut out = ClosedOutcome {
        tally: Tally::default(),
        elapsed: Duration::ZERO,
        exhausted: false,
    };
    let mut conns = Vec::new();
    for t in tasks {
        let (conn, tally, exhausted) = t.await.context("load task")?;
        conns.push(conn);
        out.tally.merge(tally);
        out.exhausted |= exhausted;
    }
    out.elapsed = t0.elapsed();
    Ok((conns, out))
}

pub struct OpenOutcome {
    pub tally: Tally,
    /// From the instant each request was due to its complete answer: queueing in the generator
    /// counts, so a stall cannot hide behind the requests it delayed (coordinated omission).
    pub latency: Summary,
    /// From the actual send to the answer (the server's share, for comparison).
    pub service: Summary,
    /// Requests answered per second over the phase.
    pub achieved_rate: f64,
    /// Wall-clock time request 0 was due; request `i` was due `i / rate` later.
    pub start_wall: std::time::SystemTime,
}

/// Open loop: request `i` is due at `start + i / rate`; a scheduler hands due requests to
/// whichever connection is free.
pub async fn open_loop(
    conns: Vec<Conn>,
    work: &Work,
    rate: f64,
    count: usize,
) -> anyhow::Result<(Vec<Conn>, OpenOutcome)> {
    let (tx, rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let rx = Arc::new(Mutex::new(rx));
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(20);
    let start_wall = std::time::SystemTime::now() + Duration::from_millis(20);
    // A blocking thread with `thread::sleep` (tens of microseconds late) rather than tokio's
    // millisecond timer wheel, which would add up to a millisecond to every measured latency.
    let scheduler = tokio::task::spawn_blocking(move || {
        for i in 0..count {
            let due = start + period.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if tx.send((i, due)).is_err() {
                break;
            }
        }
    });
    let mut tasks = Vec::new();
    for mut conn in conns {
        let (rx, work) = (rx.clone(), work.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut lat = Vec::new();
            let mut svc = Vec::new();
            loop {
                let job = rx.lock().await.recv().await;
                let Some((i, due)) = job else { break };
                let Some(c) = work.get(i) else { break };
                let sent = Instant::now();
                let r = conn.send(c).await;
                let done = Instant::now();
                tally.record(&r);
                if r.is_ok() {
                    lat.push(done - due);
                    svc.push(done - sent);
                }
            }
            (conn, tally, lat, svc)
        }));
    }
    scheduler.await.context("scheduler task")?;
    let mut tally = Tally::default();
    let (mut lat, mut svc) = (Vec::new(), Vec::new());
    let mut conns = Vec::new();
    for t in tasks {
        let (conn, t, l, s) = t.await.context("load task")?;
        conns.push(conn);
        tally.merge(t);
        lat.extend(l);
        svc.extend(s);
    }
    let elapsed = start.elapsed();
    let answered = tally.statuses.values().sum::<u64>();
    Ok((
        conns,
        OpenOutcome {
            tally,
            latency: Summary::of(&mut lat),
            service: Summary::of(&mut svc),
            achieved_rate: answered as f64 / elapsed.as_secs_f64(),
            start_wall,
        },
    ))
}
