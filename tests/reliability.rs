//! Nothing acknowledged is lost or decided twice: `kill -9` under load, and a compressed storm of
//! Graph faults. Each test prints its figures (run with `--no-capture` to see them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rand::Rng as _;

/// Sends callouts one after another to whatever address `target` holds, until `stop`.
/// Returns the stage instance ids that got a `202`, and how many were sent.
async fn stream(
    emu: Emulator,
    target: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    timeout: &'static str,
) -> Vec<String> {
    let mut acked = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let url = target.lock().unwrap().clone();
        let r = emu
            .send_callout(&SendOptions {
                target_url: url,
                maximum_retries: Some(0),
                client_timeout_ms: Some(2000),
                timeout: Some(timeout.into()),
                ..Default::default()
            })
            .await
            .expect("send");
        sent.fetch_add(1, Ordering::Relaxed);
        if r.status == Some(202) {
            acked.push(r.stage_instance_id);
        } else {
            // The service is down: Entra would retry later; a short pause avoids a spin.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    acked
}

/// Accepted resumes per stage instance id.
fn accepted(emu: &Emulator) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in emu.resumes() {
        *m.entry(r.stage_instance_id).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_twenty_times_under_load_loses_nothing_and_decides_nothing_twice() {
    let mut h = Harness::start("").await;
    let target = Arc::new(Mutex::new(h.callout_url()));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(stream(
                h.emu(),
                target.clone(),
                stop.clone(),
                sent.clone(),
                "PT1H",
            ))
        })
        .collect();
    let kills = 20;
    let started = Instant::now();
    for _ in 0..kills {
        let pause = rand::rng().random_range(200..600);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        h.ag.restart().await;
        *target.lock().unwrap() = h.callout_url();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for s in senders {
        acked.extend(s.await.unwrap());
    }
    assert!(
        acked.len() >= 60,
        "too few callouts acknowledged ({}) for the test to mean anything",
        acked.len()
    );

    // Every acknowledged callout gets its resume (bounded wait).
    let emu = h.emu();
    let want = acked.clone();
    let counts = eventually(120, "every acknowledged callout resumed", || {
        let c = accepted(&emu);
        want.iter().all(|s| c.contains_key(s)).then_some(c)
    })
    .await;
    // Give a late duplicate the chance to show up before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = {
        let later = accepted(&emu);
        if later.len() >= counts.len() {
            later
        } else {
            counts
        }
    };
    let lost: Vec<&String> = acked.iter().filter(|s| !counts.contains_key(*s)).collect();
    let duplicates: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let resume_calls = emu.stats().resume_calls;
    let resumed: usize = counts.values().sum();
    println!(
        "crash figures: kills={kills} in {:.1} s, callouts sent={}, acknowledged={}, resumed={} (of which not acknowledged because the 202 was cut by a kill: {}), resume calls={}, duplicates={}, lost={}",
        started.elapsed().as_secs_f64(),
        sent.load(Ordering::Relaxed),
        acked.len(),
        resumed,
        counts.len().saturating_sub(acked.len()),
        resume_calls,
        duplicates.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(duplicates.is_empty(), "decided twice: {duplicates:?}");
}

/// Sets or clears one Graph fault.
fn graph_fault(emu: &Emulator, spec: Option<FaultSpec>) {
    emu.clear_faults();
    if let Some(s) = spec {
        emu.set_fault(&s).unwrap();
    }
}

fn fault(status: Option<u16>, retry_after: Option<u64>, ratio: f64) -> FaultSpec {
    FaultSpec {
        target: FaultTarget::Graph,
        status,
        retry_after_secs: retry_after,
        ratio: Some(ratio),
        ..FaultSpec::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_ten_minute_fault_storm_ends_with_every_job_resumed_at_a_bounded_rate() {
    let rate = 20u32;
    let h = Harness::start_env(
        "",
        "",
        vec![
            ("ACCESSGATE_GRAPH__TIMEOUT_SECONDS".into(), "1".into()),
            (
                "ACCESSGATE_GRAPH__MAX_REQUESTS_PER_SECOND".into(),
                rate.to_string(),
            ),
            (
                "ACCESSGATE_GRAPH__CIRCUIT_FAILURE_THRESHOLD".into(),
                "5".into(),
            ),
            ("ACCESSGATE_GRAPH__CIRCUIT_OPEN_SECONDS".into(), "1".into()),
            ("ACCESSGATE_WORKER__CONCURRENCY".into(), "8".into()),
            ("ACCESSGATE_WORKER__RETRY_MAX_MS".into(), "2000".into()),
        ],
    )
    .await;
    let emu = h.emu();
    let started = Instant::now();
    // Ten minutes of weather, one twentieth of the time: 30 s.
    let phases: Vec<(&str, Duration, Option<FaultSpec>)> = vec![
        (
            "429 storm (Retry-After 1 s)",
            Duration::from_secs(6),
            Some(fault(Some(429), Some(1), 0.8)),
        ),
        (
            "503 outage",
            Duration::from_secs(6),
            Some(fault(Some(503), None, 1.0)),
        ),
        (
            "timeouts (1.5 s answers, 1 s client timeout)",
            Duration::from_secs(6),
            Some(FaultSpec {
                status: None,
                delay_ms: Some(1500),
                ..fault(None, None, 0.6)
            }),
        ),
        (
            "connection resets",
            Duration::from_secs(6),
            Some(FaultSpec {
                status: None,
                reset: true,
                ..fault(None, None, 0.6)
            }),
        ),
        (
            "503 with Retry-After 2 s",
            Duration::from_secs(6),
            Some(fault(Some(503), Some(2), 0.9)),
        ),
    ];
    let mut acked = Vec::new();
    let mut sent_at = HashMap::new();
    let mut outage_window = None;
    for (name, len, spec) in phases {
        graph_fault(&emu, spec);
        let phase_start = Instant::now();
        let phase_ms = started.elapsed().as_millis();
        if name == "503 outage" {
            outage_window = Some((accessgate_now_ms(), len));
        }
        // A steady trickle of callouts during the storm.
        while phase_start.elapsed() < len {
            let r = h
                .send(SendOptions {
                    timeout: Some("PT10M".into()),
                    ..Default::default()
                })
                .await;
            assert_eq!(
                r.status,
                Some(202),
                "callouts are acknowledged during the storm"
            );
            sent_at.insert(r.stage_instance_id.clone(), accessgate_now_ms());
            acked.push(r.stage_instance_id);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("storm phase {name:?} from {phase_ms} ms");
    }
    emu.clear_faults();
    let recovered_at = Instant::now();
    let want = acked.clone();
    let counts = eventually(120, "every job resumed after recovery", || {
        let c = accepted(&emu);
        want.iter().all(|s| c.contains_key(s)).then_some(c)
    })
    .await;
    let recovery = recovered_at.elapsed();

    // Before its deadline: the callback timeout was 10 minutes from the 202.
    for r in emu.resumes() {
        let at = r.at.parse::<jiff::Timestamp>().unwrap().as_millisecond();
        let sent = sent_at[&r.stage_instance_id];
        assert!(
            at < sent + 600_000,
            "{} resumed after its deadline",
            r.stage_instance_id
        );
    }

    // The request rate stays bounded: in every 1 s window, at most a burst plus a second's worth.
    let calls = emu.graph_calls();
    let mut times: Vec<i64> = calls.iter().map(|c| c.at_ms).collect();
    times.sort_unstable();
    let mut max_window = 0;
    for (i, t) in times.iter().enumerate() {
        let n = times[i..].iter().take_while(|u| **u < t + 1000).count();
        max_window = max_window.max(n);
    }
    let (outage_start, outage_len) = outage_window.unwrap();
    let in_outage = times
        .iter()
        .filter(|t| **t >= outage_start && **t < outage_start + outage_len.as_millis() as i64)
        .count();
    let duplicates = counts.values().filter(|n| **n > 1).count();
    let lost = acked.iter().filter(|s| !counts.contains_key(*s)).count();
    println!(
        "storm figures: callouts sent={} acknowledged={} resumed={} duplicates={duplicates} lost={lost}; Graph calls={} (max {max_window} in any 1 s, limit {rate}/s), {in_outage} during the 6 s full outage; all resumed {:.1} s after recovery",
        acked.len(),
        acked.len(),
        counts.len(),
        calls.len(),
        recovery.as_secs_f64()
    );
    assert_eq!(lost, 0);
    assert_eq!(duplicates, 0);
    // Arrival times carry a little scheduling jitter on a loaded 2-core machine: a few calls of
    // slack, still far below what an unbounded retry loop sends (hundreds per second).
    assert!(
        max_window <= 2 * rate as usize + 5,
        "{max_window} Graph calls in one second (limit {rate}/s with a burst of {rate})"
    );
    // With the breaker (5 failures, then 1 s pauses with one probe) an outage costs a handful of
    // calls per second, not a hot loop.
    assert!(
        in_outage <= 6 * 8,
        "{in_outage} calls during a 6 s outage: the breaker did not hold"
    );
}

fn accessgate_now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}
