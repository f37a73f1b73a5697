//! Recovery is bounded by Graph's rate, not by timers: after an outage the queued callouts go as
//! soon as the breaker's probe succeeds; a 429 pauses (it is not a breaker failure); calls
//! during a half-open probe wait for its verdict; a new job starts without waiting for a poll.
//! The real binary against the emulator; each test prints its figures (`--no-capture`).
//!
//! Time bounds are generous for a loaded 2-core machine (several seconds of slack over what the
//! design needs) and still far below what the timers they replace cost (open periods of 10 to
//! 30 s, a 5 s poll).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/azurite.rs"]
mod azurite;
mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The production retry and poll settings: the harness's short ones would hide the backoffs
/// that slowed recovery down.
const PRODUCTION_TIMERS: &[(&str, &str)] = &[
    ("ACCESSGATE_WORKER__RETRY_BASE_MS", "1000"),
    ("ACCESSGATE_WORKER__RETRY_MAX_MS", "300000"),
    ("ACCESSGATE_WORKER__POLL_INTERVAL_MS", "200"),
];

async fn send_many(h: &Harness, n: usize) -> Vec<String> {
    let mut sids = Vec::new();
    for _ in 0..n {
        let r = h
            .send(SendOptions {
                timeout: Some("PT1H".into()),
                ..Default::default()
            })
            .await;
        assert_eq!(r.status, Some(202));
        sids.push(r.stage_instance_id);
    }
    sids
}

fn all_resumed(emu: &Emulator, sids: &[String]) -> bool {
    let done: HashSet<String> = emu
        .resumes()
        .into_iter()
        .map(|r| r.stage_instance_id)
        .collect();
    sids.iter().all(|s| done.contains(s))
}

fn resume_ms(emu: &Emulator, sid: &str) -> i64 {
    let r = emu
        .resumes()
        .into_iter()
        .find(|r| r.stage_instance_id == sid)
        .expect("resumed");
    r.at.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

fn lines_with(h: &Harness, needle: &str) -> Vec<String> {
    let needle = needle.to_ascii_lowercase();
    h.ag.log_lines()
        .into_iter()
        .filter(|l| l.to_ascii_lowercase().contains(&needle))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_queued_callouts_drain_at_the_rate_bound() {
    let (n, rate) = (60usize, 20u32);
    let mut pairs = PRODUCTION_TIMERS.to_vec();
    let rate_s = rate.to_string();
    pairs.push(("ACCESSGATE_GRAPH__MAX_REQUESTS_PER_SECOND", &rate_s));
    let h = Harness::start_env("", "", env(&pairs)).await;
    let emu = h.emu();
    graph_down(&emu, None);
    let down_at = Instant::now();
    let sids = send_many(&h, n).await;
    let outage = Duration::from_secs(5);
    tokio::time::sleep(outage.saturating_sub(down_at.elapsed())).await;
    emu.clear_faults();
    let back = Instant::now();
    let back_ms = jiff::Timestamp::now().as_millisecond();
    eventually(90, "every queued callout resumed", || {
        all_resumed(&emu, &sids).then_some(())
    })
    .await;
    let drain = back.elapsed();

    // The Graph calls after the return stay under the rate bound (a burst plus a second's
    // worth in any 1 s window, a few calls of scheduling slack).
    let mut after: Vec<i64> = emu
        .graph_calls()
        .iter()
        .map(|c| c.at_ms)
        .filter(|t| *t >= back_ms)
        .collect();
    after.sort_unstable();
    let max_window = (0..after.len())
        .map(|i| {
            after[i..]
                .iter()
                .take_while(|t| **t < after[i] + 1000)
                .count()
        })
        .max()
        .unwrap_or(0);
    let during = emu.graph_calls().len() - after.len();
    println!(
        "recovery figures: {n} callouts queued during a {} s outage; {during} Graph calls during it; all resumed {:.1} s after Graph returned (rate bound {rate}/s: {:.1} s of sending); max {max_window} calls in 1 s",
        outage.as_secs(),
        drain.as_secs_f64(),
        n as f64 / f64::from(rate)
    );
    // What the design needs: the probe within the current open period (1, 2, then 4 s) after
    // the return, then N / rate seconds of sending. 9 s of slack for a loaded machine; the
    // old timers (a 30 s open period, backoffs up to minutes) took more than 25 s.
    let bound = Duration::from_secs_f64(n as f64 / f64::from(rate)) + Duration::from_secs(9);
    assert!(
        drain < bound,
        "all resumed only {:.1} s after Graph returned (bound {:.1} s)",
        drain.as_secs_f64(),
        bound.as_secs_f64()
    );
    assert!(
        max_window <= 2 * rate as usize + 5,
        "{max_window} Graph calls in one second (rate bound {rate}/s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_every_call_and_is_not_a_breaker_failure() {
    let h = Harness::start("").await;
    let emu = h.emu();
    let retry_after = 3u64;
    emu.set_fault(&FaultSpec {
        target: FaultTarget::Graph,
        status: Some(429),
        retry_after_secs: Some(retry_after),
        count: Some(1),
        ..Default::default()
    })
    .unwrap();
    let mut sids = send_many(&h, 1).await;
    let throttled_at = eventually(20, "the throttled call", || {
        emu.graph_calls()
            .into_iter()
            .find(|c| c.status == 429)
            .map(|c| c.at_ms)
    })
    .await;
    // These arrive during the pause: they wait for it, they are not refused as by a breaker.
    sids.extend(send_many(&h, 3).await);
    eventually(30, "every callout resumed after the pause", || {
        all_resumed(&emu, &sids).then_some(())
    })
    .await;
    let pause_ms = i64::try_from(retry_after * 1000).unwrap();
    let offsets: Vec<i64> = sids
        .iter()
        .map(|s| resume_ms(&emu, s) - throttled_at)
        .collect();
    println!("429 figures: resumes {offsets:?} ms after the 429 (Retry-After {retry_after} s)");
    for o in &offsets {
        // The 429 is stamped on its arrival, the pause starts when its answer is read: never
        // before the Retry-After. 6 s of slack after it for a loaded machine.
        // 100 ms for the two clocks' rounding.
        assert!(
            *o >= pause_ms - 100,
            "a call went {o} ms after the 429, inside the pause"
        );
        assert!(*o < pause_ms + 6000, "resumed only {o} ms after the 429");
    }
    let throttle_lines = lines_with(&h, "throttled");
    assert!(
        throttle_lines.iter().any(|l| l.contains("pause")),
        "no log line says the calls were paused: {throttle_lines:?}"
    );
    let breaker_lines = lines_with(&h, "circuit breaker");
    assert!(
        breaker_lines.is_empty(),
        "a 429 is throttling, not a breaker failure: {breaker_lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_during_the_half_open_probe_wait_for_its_verdict() {
    let open_max = 10u64;
    let open_s = open_max.to_string();
    let h = Harness::start_env(
        "",
        "",
        env(&[
            ("ACCESSGATE_GRAPH__CIRCUIT_FAILURE_THRESHOLD", "1"),
            ("ACCESSGATE_GRAPH__CIRCUIT_OPEN_SECONDS", &open_s),
        ]),
    )
    .await;
    let emu = h.emu();
    emu.set_fault(&FaultSpec {
        count: Some(1),
        ..FaultSpec::graph_unavailable()
    })
    .unwrap();
    let mut sids = send_many(&h, 1).await;
    eventually(20, "the failed call that opens the breaker", || {
        emu.graph_calls()
            .iter()
            .any(|c| c.status == 503)
            .then_some(())
    })
    .await;
    // Graph is back but slow: the probe takes `probe_delay`.
    let probe_delay = Duration::from_millis(2500);
    emu.set_fault(&FaultSpec {
        target: FaultTarget::Graph,
        delay_ms: Some(probe_delay.as_millis() as u64),
        count: Some(1),
        ..Default::default()
    })
    .unwrap();
    eventually(30, "the half-open probe in flight", || {
        (emu.graph_calls_in_flight() > 0).then_some(())
    })
    .await;
    let probe_seen = Instant::now();
    let during = send_many(&h, 3).await;
    sids.extend(during.iter().cloned());
    eventually(30, "the callouts sent during the probe resumed", || {
        all_resumed(&emu, &during).then_some(())
    })
    .await;
    let waited = probe_seen.elapsed();
    println!(
        "half-open figures: callouts sent during a {} ms probe resumed {:.1} s after it started (open period up to {open_max} s)",
        probe_delay.as_millis(),
        waited.as_secs_f64()
    );
    // They go once the probe answers (2.5 s), not a whole open period later (10 s); 4.5 s of
    // slack for a loaded machine.
    assert!(
        waited < probe_delay + Duration::from_millis(4500),
        "callouts sent during the probe were pushed back: resumed {:.1} s after it started",
        waited.as_secs_f64()
    );
    eventually(30, "the probe's own callout resumed", || {
        all_resumed(&emu, &sids).then_some(())
    })
    .await;
}

/// Sends three callouts one by one to an idle `h` and returns each one's callout-to-resume time.
async fn idle_latencies(h: &Harness) -> Vec<Duration> {
    let emu = h.emu();
    // Every worker has polled once and sleeps.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut latencies = Vec::new();
    for _ in 0..3 {
        let sent = Instant::now();
        let sid = send_many(h, 1).await.remove(0);
        resumed(&emu, &sid).await;
        latencies.push(sent.elapsed());
        // Idle again between callouts.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    latencies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_starts_a_new_job_at_once_not_at_its_next_poll() {
    let poll = Duration::from_secs(5);
    let poll_ms = poll.as_millis().to_string();
    let h = Harness::start_env(
        "",
        "",
        env(&[("ACCESSGATE_WORKER__POLL_INTERVAL_MS", &poll_ms)]),
    )
    .await;
    // Without the wake each would wait for the next poll (up to 5 s); with it, a request to the
    // emulator and one to Graph. 1 s leaves plenty for a loaded machine.
    assert_started_at_once(&h, "sqlite", poll, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_on_azure_storage_starts_a_job_enqueued_by_its_own_process_at_once() {
    let az = azurite::Azurite::start();
    let queue = azurite::unique_queue_name("ag-wake");
    let poll = Duration::from_secs(5);
    let poll_ms = poll.as_millis().to_string();
    let h = Harness::start_env(
        "",
        &format!("[queue]\nbackend = \"azure_storage\"\nname = \"{queue}\"\n"),
        env(&[
            ("ACCESSGATE_WORKER__POLL_INTERVAL_MS", &poll_ms),
            (
                "ACCESSGATE_QUEUE__CONNECTION_STRING",
                &az.connection_string(),
            ),
        ]),
    )
    .await;
    // Storage round trips (put, get, delete) on Azurite add to the SQLite case: 2 s of bound,
    // still well under the 5 s poll.
    assert_started_at_once(&h, "azure storage", poll, Duration::from_secs(2)).await;
}

/// Sends single callouts to an idle worker ([`idle_latencies`]), prints the figures and
/// asserts each was resumed within `bound`, far below the `poll` interval.
async fn assert_started_at_once(h: &Harness, backend: &str, poll: Duration, bound: Duration) {
    let latencies = idle_latencies(h).await;
    println!(
        "wake figures ({backend}): callout to resume {latencies:?} with a {} s poll interval",
        poll.as_secs()
    );
    for l in &latencies {
        assert!(
            *l < bound,
            "callout to resume took {:.2} s (poll interval {} s)",
            l.as_secs_f64(),
            poll.as_secs()
        );
    }
}
