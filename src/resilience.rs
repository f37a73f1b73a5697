//! Keeping an outage from becoming a hot loop: a request-rate bound (GCRA token bucket), a
//! circuit breaker and a throttling pause, shared by every worker of one process that talks to
//! the same service.
//!
//! The breaker and the pause publish their changes on a `watch` channel, so that work waiting
//! for the service (the worker pool, calls waiting for a half-open probe) goes the moment the
//! service is usable again instead of on a timer.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

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
    /// One probe is out since `probe_since`; other calls wait for its verdict (or for it to
    /// be overdue).
    HalfOpen {
        probe_since: Instant,
    },
}

/// What [`CircuitBreaker::check`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Call now (`probe`: this call is the one half-open probe and must report its outcome).
    Go { probe: bool },
    /// Open: no call before this long.
    Refuse(Duration),
    /// A probe is in flight: its verdict comes within this long (or it counts as lost).
    AwaitProbe(Duration),
}

struct Inner {
    state: State,
    /// The open period the next opening uses: from `open_min`, doubled by every failed probe
    /// up to `open_max`, back to `open_min` once a call succeeds.
    open_for: Duration,
}

/// Opens after `threshold` consecutive failures, refuses calls while open, then lets one probe
/// through; calls that come while the probe is out wait for its verdict. The open period starts
/// short (a blip costs a second, not a whole period) and doubles with every failed probe up to
/// `open_max`, so a long outage costs one probe per `open_max`.
pub struct CircuitBreaker {
    threshold: u32,
    open_min: Duration,
    open_max: Duration,
    /// A probe that has not reported after this long is taken as lost (its task was cancelled).
    probe_timeout: Duration,
    inner: Mutex<Inner>,
    /// Bumped on every change of state.
    changed: watch::Sender<u64>,
}

/// The first open period when `open_max` allows it.
const OPEN_MIN: Duration = Duration::from_secs(1);

impl CircuitBreaker {
    pub fn new(threshold: u32, open_max: Duration, probe_timeout: Duration) -> Self {
        let open_min = OPEN_MIN.min(open_max);
        CircuitBreaker {
            threshold: threshold.max(1),
            open_min,
            open_max,
            probe_timeout,
            inner: Mutex::new(Inner {
                state: State::Closed { failures: 0 },
                open_for: open_min,
            }),
            changed: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, inner: &mut Inner, state: State) {
        if inner.state != state {
            inner.state = state;
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// A receiver that sees every later change of state.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether a call may go now (taking the probe slot when the open period is over).
    pub fn check(&self, now: Instant) -> Admit {
        let mut s = self.lock();
        match s.state {
            State::Closed { .. } => Admit::Go { probe: false },
            State::Open { until } if now >= until => {
                self.set(&mut s, State::HalfOpen { probe_since: now });
                tracing::info!("Graph circuit breaker half-open: one probe call goes");
                Admit::Go { probe: true }
            }
            State::Open { until } => Admit::Refuse(until - now),
            // A probe that never reported (its task was cancelled) must not close the door.
            State::HalfOpen { probe_since } if now >= probe_since + self.probe_timeout => {
                self.set(&mut s, State::HalfOpen { probe_since: now });
                Admit::Go { probe: true }
            }
            State::HalfOpen { probe_since } => {
                Admit::AwaitProbe(probe_since + self.probe_timeout - now)
            }
        }
    }

    /// Waits until a call may go: at once when closed; while a probe is out, for its verdict
    /// (at most until `limit`). `Err` is how long until a call may be tried again.
    pub async fn admit(&self, limit: Instant) -> Result<bool, Duration> {
        loop {
            // Subscribed before the check, so a verdict between the two is not missed.
            let mut rx = self.subscribe();
            let now = Instant::now();
            match self.check(now) {
                Admit::Go { probe } => return Ok(probe),
                Admit::Refuse(d) => return Err(d),
                Admit::AwaitProbe(d) => {
                    if now >= limit {
                        return Err(d);
                    }
                    let until = (now + d).min(limit);
                    // A change (the verdict) or the probe overdue or our own limit: look again.
                    let _ = tokio::time::timeout_at(until.into(), rx.changed()).await;
                }
            }
        }
    }

    /// A probe that could not be sent (no token, no rate slot): the next caller probes at once.
    pub fn probe_not_sent(&self, now: Instant) {
        let mut s = self.lock();
        if let State::HalfOpen { .. } = s.state {
            self.set(&mut s, State::Open { until: now });
        }
    }

    /// Graph answered (whatever the status): closed, and the open period starts short again.
    pub fn success(&self) {
        let mut s = self.lock();
        if !matches!(s.state, State::Closed { .. }) {
            tracing::info!("Graph circuit breaker closed: Graph answers again");
        }
        s.open_for = self.open_min;
        self.set(&mut s, State::Closed { failures: 0 });
    }

    /// A transient failure (5xx, timeout, connection failure).
    pub fn failure(&self, now: Instant) {
        let mut s = self.lock();
        let next = match s.state {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            State::Open { until } => State::Open { until },
            State::Closed { .. } => {
                tracing::warn!(
                    failures = self.threshold,
                    open_ms = s.open_for.as_millis() as u64,
                    "Graph circuit breaker opened after consecutive failures; one probe call goes when the open period ends"
                );
                State::Open {
                    until: now + s.open_for,
                }
            }
            State::HalfOpen { .. } => {
                s.open_for = (s.open_for * 2).min(self.open_max);
                tracing::warn!(
                    open_ms = s.open_for.as_millis() as u64,
                    "Graph circuit breaker probe failed; open again"
                );
                State::Open {
                    until: now + s.open_for,
                }
            }
        };
        self.set(&mut s, next);
    }

    /// Until when calls are refused, if they are.
    pub fn open_until(&self, now: Instant) -> Option<Instant> {
        match self.lock().state {
            State::Open { until } if now < until => Some(until),
            _ => None,
        }
    }

    pub fn is_open(&self, now: Instant) -> bool {
        self.open_until(now).is_some()
    }

    /// `closed`, `open` or `half_open`, for logs and health.
    pub fn state_name(&self, now: Instant) -> &'static str {
        match self.lock().state {
            State::Closed { .. } => "closed",
            State::Open { until } if now < until => "open",
            State::Open { .. } | State::HalfOpen { .. } => "half_open",
        }
    }
}

/// Throttling (429, or 503 with `Retry-After`): the service said when to come back, so every
/// call of the process waits until then. Not a failure: the breaker does not count it.
pub struct Pause {
    until: Mutex<Option<Instant>>,
    changed: watch::Sender<u64>,
}

impl Default for Pause {
    fn default() -> Self {
        Pause {
            until: Mutex::new(None),
            changed: watch::channel(0).0,
        }
    }
}

impl Pause {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Pauses calls for `d` from `now` (capped at an hour); a shorter pause never shortens a
    /// longer one. Returns the end of the pause when this call extended it.
    pub fn pause(&self, now: Instant, d: Duration) -> Option<Instant> {
        let until = now + d.min(Duration::from_secs(3600));
        let mut u = self.lock();
        match *u {
            Some(old) if old >= until => None,
            _ => {
                *u = Some(until);
                self.changed.send_modify(|n| *n = n.wrapping_add(1));
                Some(until)
            }
        }
    }

    /// Until when calls wait, if they do.
    pub fn until(&self, now: Instant) -> Option<Instant> {
        self.lock().filter(|u| *u > now)
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
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

    const GO: Admit = Admit::Go { probe: false };
    const PROBE: Admit = Admit::Go { probe: true };

    #[test]
    fn breaker_opens_after_the_threshold_and_probes_once() {
        let b = CircuitBreaker::new(3, Duration::from_secs(10), Duration::from_secs(5));
        let t0 = Instant::now();
        b.failure(t0);
        b.failure(t0);
        assert_eq!(b.check(t0), GO);
        b.failure(t0);
        // The first open period is short.
        assert_eq!(b.check(t0), Admit::Refuse(Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.check(t1), PROBE, "one probe after the open period");
        assert_eq!(
            b.check(t1),
            Admit::AwaitProbe(Duration::from_secs(5)),
            "others wait for its verdict"
        );
        b.failure(t1);
        assert_eq!(
            b.check(t1),
            Admit::Refuse(Duration::from_secs(2)),
            "failed probe reopens for twice as long"
        );
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(b.check(t2), PROBE);
        b.success();
        assert!(b.check(t2) == GO && b.check(t2) == GO, "closed again");
        // After a success the next opening is short again.
        for _ in 0..3 {
            b.failure(t2);
        }
        assert_eq!(b.check(t2), Admit::Refuse(Duration::from_secs(1)));
    }

    #[test]
    fn the_open_period_doubles_up_to_its_cap() {
        let b = CircuitBreaker::new(1, Duration::from_secs(5), Duration::from_secs(5));
        let mut t = Instant::now();
        b.failure(t);
        let mut periods = Vec::new();
        for _ in 0..6 {
            let Admit::Refuse(d) = b.check(t) else {
                panic!("open")
            };
            periods.push(d.as_secs());
            t += d;
            assert_eq!(b.check(t), PROBE);
            b.failure(t);
        }
        assert_eq!(periods, [1, 2, 4, 5, 5, 5]);
    }

    #[test]
    fn a_lost_probe_does_not_block_forever() {
        let b = CircuitBreaker::new(1, Duration::from_secs(10), Duration::from_secs(4));
        let t0 = Instant::now();
        b.failure(t0);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.check(t1), PROBE);
        assert!(matches!(
            b.check(t1 + Duration::from_secs(3)),
            Admit::AwaitProbe(_)
        ));
        assert_eq!(b.check(t1 + Duration::from_secs(4)), PROBE);
        // A probe that could not be sent hands the slot on at once.
        b.probe_not_sent(t1 + Duration::from_secs(4));
        assert_eq!(b.check(t1 + Duration::from_secs(4)), PROBE);
    }

    #[tokio::test]
    async fn calls_during_the_probe_wait_for_its_verdict() {
        let b = std::sync::Arc::new(CircuitBreaker::new(
            1,
            Duration::from_secs(30),
            Duration::from_secs(10),
        ));
        b.failure(Instant::now() - Duration::from_secs(1));
        assert_eq!(b.admit(Instant::now()).await, Ok(true), "the probe");
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.admit(Instant::now() + Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "waits for the probe");
        b.success();
        let got = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Ok(false), "goes as soon as the probe succeeded");
        // Open again: refused at once with the time left.
        b.failure(Instant::now());
        assert!(b.admit(Instant::now()).await.is_err());
    }

    #[test]
    fn a_pause_is_not_shortened() {
        let p = Pause::default();
        let t0 = Instant::now();
        assert!(p.pause(t0, Duration::from_secs(42)).is_some());
        assert_eq!(p.until(t0), Some(t0 + Duration::from_secs(42)));
        assert_eq!(p.pause(t0, Duration::from_secs(1)), None);
        assert_eq!(p.until(t0 + Duration::from_secs(42)), None);
    }
}
