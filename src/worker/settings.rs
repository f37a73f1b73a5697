//! `[worker]`: how many jobs run at once, how they retry, how long a lease holds.

use std::time::Duration;

use serde::Deserialize;

use crate::settings::Problems;

/// `[worker]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Raw {
    concurrency: Option<u64>,
    retry_base_ms: Option<u64>,
    retry_max_ms: Option<u64>,
    deadline_margin_seconds: Option<u64>,
    default_callback_timeout: Option<String>,
    lease_seconds: Option<u64>,
    poll_interval_ms: Option<u64>,
}

/// Keys of `[worker]` whose environment values stay strings (`config` layers them verbatim).
pub const STRING_KEYS: &[&str] = &["default_callback_timeout"];

/// `[worker]`, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub concurrency: usize,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub deadline_margin: Duration,
    pub default_callback_timeout: Duration,
    pub lease: Duration,
    pub poll_interval: Duration,
}

impl Settings {
    /// Validates `[worker]`; `graph_timeout` (`graph.timeout_seconds`) bounds the lease.
    pub fn from_raw(raw: Raw, graph_timeout: Duration, p: &mut Problems) -> Settings {
        let concurrency =
            crate::settings::in_range(p, "worker.concurrency", raw.concurrency, 4, 1..=256);
        let retry_base = Duration::from_millis(raw.retry_base_ms.unwrap_or(1000));
        let retry_max = Duration::from_millis(raw.retry_max_ms.unwrap_or(300_000));
        if retry_base.is_zero() || retry_base > retry_max {
            p.push(
                "worker.retry_base_ms",
                "must be > 0 and <= worker.retry_max_ms",
            );
        }
        let deadline_margin = Duration::from_secs(raw.deadline_margin_seconds.unwrap_or(60));
        let default_callback_timeout = p
            .check(
                "worker.default_callback_timeout",
                crate::callout::parse_iso_duration(
                    raw.default_callback_timeout.as_deref().unwrap_or("PT1H"),
                )
                .ok_or_else(|| "not an ISO 8601 duration such as PT1H or P1D".to_string()),
            )
            .unwrap_or(Duration::from_secs(3600));
        let lease = Duration::from_secs(raw.lease_seconds.unwrap_or(120));
        // One attempt can take a token request, the resume and a status read: a shorter lease
        // would let a second worker take the job while the first still runs it.
        let min_lease = graph_timeout.saturating_mul(3) + Duration::from_secs(5);
        if lease < min_lease {
            p.push(
                "worker.lease_seconds",
                &format!(
                    "at least {} s (3 x graph.timeout_seconds + 5)",
                    min_lease.as_secs()
                ),
            );
        }
        let poll_interval = Duration::from_millis(raw.poll_interval_ms.unwrap_or(200));
        if poll_interval < Duration::from_millis(10) {
            p.push("worker.poll_interval_ms", "at least 10");
        }
        Settings {
            concurrency: concurrency as usize,
            retry_base,
            retry_max,
            deadline_margin,
            default_callback_timeout,
            lease,
            poll_interval,
        }
    }
}
