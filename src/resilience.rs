//! Keeping an outage from becoming a hot loop: a request-rate bound (GCRA token bucket) and a
//! circuit breaker, shared by every worker of one process that talks to the same service.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most `rate` requests per second, with bursts of up to `rate`.
pub struct RateLimiter {
    interval: Duration,
    tolerance: Duration,
    /// Theoretical arrival time of the next request.
    tat: Mutex<Option<Instant>>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        let per_second = per_second.max(1);
        let interval = Duration::from_secs(1) / per_second;
        RateLimiter {
            interval,
            tolerance: interval * (per_second - 1),
            tat: Mutex::new(None),
        }
    }

    /// Reserves a slot and returns when it may be used, or `None` (nothing reserved) when
    /// that would be after `deadline`.
    pub fn reserve(&self, now: Instant, deadline: Instant) -> Option<Instant> {
        let mut tat = self
            .tat
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let t = tat.map_or(now, |t| t.max(now));
        let at = t.checked_sub(self.tolerance).map_or(now, |a| a.max(now));
        if at > deadline {
            return None;
        }
        *tat = Some(t + self.interval);
        Some(at)
    }

    /// Waits for a slot; `false` if none is free before `deadline`.
    pub async fn acquire(&self, deadline: Instant) -> bool {
        match self.reserve(Instant::now(), deadline) {
            Some(at) => {
                tokio::time::sleep_until(at.into()).await;
                true
            }
            None => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; others wait for its verdict (or for it to be overdue).
    HalfOpen {
        probe_since: Instant,
    },
}

/// Opens after `threshold` consecutive failures (or at once on throttling, for its
/// `Retry-After`), refuses calls while open, then lets one probe through.
pub struct CircuitBreaker {
    threshold: u32,
    open_for: Duration,
    state: Mutex<State>,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        CircuitBreaker {
            threshold: threshold.max(1),
            open_for,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Ok` to call now, or how long until a call may be tried.
    pub fn check(&self, now: Instant) -> Result<(), Duration> {
        let mut s = self.lock();
        match *s {
            State::Closed { .. } => Ok(()),
            State::Open { until } if now >= until => {
                *s = State::HalfOpen { probe_since: now };
                Ok(())
            }
            State::Open { until } => Err(until - now),
            // A probe that never reported (its task was cancelled) must not close the door.
            State::HalfOpen { probe_since } if now >= probe_since + self.open_for => {
                *s = State::HalfOpen { probe_since: now };
                Ok(())
            }
            State::HalfOpen { probe_since } => Err(probe_since + self.open_for - now),
        }
    }

    pub fn success(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    /// A transient failure (5xx, timeout, connection failure).
    pub fn failure(&self, now: Instant) {
        let mut s = self.lock();
        *s = match *s {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            State::Open { until } => State::Open { until },
            _ => State::Open {
                until: now + self.open_for,
            },
        };
    }

    /// Throttled: the service said when to come back; nobody calls before then.
    pub fn throttled(&self, now: Instant, retry_after: Option<Duration>) {
        let pause = retry_after
            .unwrap_or(self.open_for)
            .min(Duration::from_secs(3600));
        let mut s = self.lock();
        let until = now + pause;
        *s = match *s {
            State::Open { until: u } if u > until => State::Open { until: u },
            _ => State::Open { until },
        };
    }

    pub fn is_open(&self, now: Instant) -> bool {
        matches!(*self.lock(), State::Open { until } if now < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_allows_a_burst_then_spaces_requests() {
        let l = RateLimiter::new(10);
        let now = Instant::now();
        let far = now + Duration::from_secs(3600);
        let slots: Vec<Duration> = (0..30)
            .filter_map(|_| l.reserve(now, far))
            .map(|t| t - now)
            .collect();
        assert_eq!(slots.len(), 30);
        // The first 10 go at once, then one every 100 ms.
        assert!(slots[..10].iter().all(|d| d.is_zero()), "{slots:?}");
        assert_eq!(slots[10], Duration::from_millis(100));
        assert_eq!(slots[29], Duration::from_millis(2000));
        // In any 1 s window at most 10 + 10 (a burst plus a second's worth) start.
        for (i, a) in slots.iter().enumerate() {
            let within = slots[i..]
                .iter()
                .filter(|b| **b < *a + Duration::from_secs(1))
                .count();
            assert!(within <= 20, "{within} at {a:?}");
        }
    }

    #[test]
    fn rate_limiter_refuses_past_the_deadline_without_reserving() {
        let l = RateLimiter::new(1);
        let now = Instant::now();
        assert_eq!(l.reserve(now, now), Some(now));
        assert_eq!(l.reserve(now, now + Duration::from_millis(500)), None);
        assert_eq!(
            l.reserve(now, now + Duration::from_secs(5)),
            Some(now + Duration::from_secs(1))
        );
    }

    #[test]
    fn breaker_opens_after_the_threshold_and_probes_once() {
        let b = CircuitBreaker::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        b.failure(t0);
        b.failure(t0);
        assert!(b.check(t0).is_ok());
        b.failure(t0);
        assert_eq!(b.check(t0), Err(Duration::from_secs(10)));
        let t1 = t0 + Duration::from_secs(10);
        assert!(b.check(t1).is_ok(), "one probe after the pause");
        assert!(b.check(t1).is_err(), "only one probe");
        b.failure(t1);
        assert!(
            b.check(t1 + Duration::from_secs(5)).is_err(),
            "failed probe reopens"
        );
        let t2 = t1 + Duration::from_secs(10);
        assert!(b.check(t2).is_ok());
        b.success();
        assert!(b.check(t2).is_ok() && b.check(t2).is_ok(), "closed again");
    }

    #[test]
    fn a_success_resets_the_count_and_throttling_pauses_everyone() {
        let b = CircuitBreaker::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        b.failure(t0);
        b.success();
        b.failure(t0);
        assert!(b.check(t0).is_ok());
        b.throttled(t0, Some(Duration::from_secs(42)));
        assert_eq!(b.check(t0), Err(Duration::from_secs(42)));
        // A shorter Retry-After does not shorten an existing pause.
        b.throttled(t0, Some(Duration::from_secs(1)));
        assert_eq!(b.check(t0), Err(Duration::from_secs(42)));
    }

    #[test]
    fn a_lost_probe_does_not_block_forever() {
        let b = CircuitBreaker::new(1, Duration::from_secs(10));
        let t0 = Instant::now();
        b.failure(t0);
        let t1 = t0 + Duration::from_secs(10);
        assert!(b.check(t1).is_ok());
        assert!(b.check(t1 + Duration::from_secs(9)).is_err());
        assert!(b.check(t1 + Duration::from_secs(10)).is_ok());
    }
}
