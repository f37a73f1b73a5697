//! The worker-busy phases: accessgate's worker resumes every callout against the emulated Graph
//! (answering each resume after a fixed delay) while the ingress is measured, and each callout's
//! time from its due instant to the emulator recording its resume.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use accessgate_emulator::Emulator;

use crate::stats::Summary;

/// The end-to-end figures of one set of callouts.
pub struct EndToEnd {
    /// Callouts whose resume the emulator recorded before the wait ran out.
    pub resumed: usize,
    pub sent: usize,
    /// Resumes per second, from the first callout's send to the last resume.
    pub throughput: f64,
    /// Due (or send) time to the emulator's acceptance of the resume.
    pub latency: Summary,
}

/// Waits (at most `wait`) until the emulator has a resume for every id, then measures.
/// `sent_at(i)` is when callout `i` (of `ids`) was due or sent.
pub async fn measure(
    em: &Emulator,
    ids: &[String],
    sent_at: impl Fn(usize) -> SystemTime,
    wait: Duration,
) -> anyhow::Result<EndToEnd> {
    let deadline = Instant::now() + wait;
    let index: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let resumed_at = loop {
        let mut at: Vec<Option<SystemTime>> = vec![None; ids.len()];
        for r in em.resumes() {
            if let Some(&i) = index.get(r.request_id.as_str()) {
                let t: jiff::Timestamp = r.at.parse()?;
                let t = SystemTime::UNIX_EPOCH
                    + Duration::from_nanos(u64::try_from(t.as_nanosecond())?);
                // The first accepted resume of a request is the one that ended its wait.
                if at[i].is_none_or(|prev| t < prev) {
                    at[i] = Some(t);
                }
            }
        }
        if at.iter().all(Option::is_some) || Instant::now() >= deadline {
            break at;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut lat = Vec::new();
    let mut last = None::<SystemTime>;
    for (i, t) in resumed_at.iter().enumerate() {
        if let Some(t) = t {
            lat.push(t.duration_since(sent_at(i)).unwrap_or_default());
            last = Some(last.map_or(*t, |l| l.max(*t)));
        }
    }
    let first = sent_at(0);
    let span = last
        .and_then(|l| l.duration_since(first).ok())
        .unwrap_or_default();
    Ok(EndToEnd {
        resumed: lat.len(),
        sent: ids.len(),
        throughput: if span.is_zero() {
            0.0
        } else {
            lat.len() as f64 / span.as_secs_f64()
        },
        latency: Summary::of(&mut lat),
    })
}
